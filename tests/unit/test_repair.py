"""hsmd.repair: start-up repair decided over every combination of row and object, and the
binding of a token directory to its database."""

from __future__ import annotations

import itertools

import pytest

from hsmd.domain import KeyState, VersionState
from hsmd.repair import (
    NO_ROW,
    TORN,
    Binding,
    Inventory,
    KeyRow,
    OtherDatabase,
    OwnerMark,
    Plan,
    VersionRow,
    decide_binding,
    plan,
)

KEY_STATES = [*KeyState, None]  # None: a damaged row
VERSION_STATES = [*VersionState, None]
OBJECT = b"\x01" * 16
STRANGER = b"\xee" * 16


def _one_key(
    key_state: KeyState | None, version_state: VersionState | None
) -> tuple[Inventory, VersionRow]:
    version = VersionRow("k", 1, OBJECT, version_state)
    return Inventory((KeyRow("k", key_state),), (version,)), version


@pytest.mark.parametrize(
    ("key_state", "version_state", "present"),
    list(itertools.product(KEY_STATES, VERSION_STATES, [True, False])),
)
def test_every_key_and_version_state_with_and_without_its_object(
    key_state: KeyState | None, version_state: VersionState | None, present: bool
) -> None:
    inventory, version = _one_key(key_state, version_state)
    decided = plan(inventory, {OBJECT} if present else set())
    creating_key = key_state is KeyState.CREATING
    proven = creating_key or version_state in (VersionState.CREATING, VersionState.DESTROYED)
    # An object goes only when a row of this database proves it must; it is never a stranger.
    assert decided.destroy == ((OBJECT,) if proven and present else ())
    assert decided.quarantine == ()
    assert decided.roll_back_keys == (("k",) if creating_key else ())
    assert decided.roll_back_versions == (
        (version,) if version_state is VersionState.CREATING and not creating_key else ()
    )
    forgotten = key_state is KeyState.PENDING_IMPORT and version_state is VersionState.DESTROYED
    assert decided.forget_versions == ((version,) if forgotten else ())
    lost = version_state is not VersionState.ENABLED or not present
    assert decided.unavailable == (("k",) if key_state is KeyState.ENABLED and lost else ())
    assert decided.restored == (("k",) if key_state is KeyState.UNAVAILABLE and not lost else ())


def test_an_object_no_row_names_is_quarantined_never_destroyed() -> None:
    inventory, _ = _one_key(KeyState.ENABLED, VersionState.ENABLED)
    assert plan(inventory, {OBJECT, STRANGER}) == Plan(quarantine=(STRANGER,))


def test_an_import_tokens_object_is_kept() -> None:
    inventory = Inventory((), (), frozenset({STRANGER}))
    assert plan(inventory, {STRANGER}) == Plan()


def test_a_flipped_object_id_in_a_row_quarantines_the_real_object_and_the_key_is_unavailable() -> (
    None
):
    """The attack of the issue: one bit of a version's object id flipped in the database."""
    flipped = bytes([OBJECT[0] ^ 1]) + OBJECT[1:]
    inventory = Inventory(
        (KeyRow("k", KeyState.ENABLED),), (VersionRow("k", 1, flipped, VersionState.ENABLED),)
    )
    assert plan(inventory, {OBJECT}) == Plan(quarantine=(OBJECT,), unavailable=("k",))


def test_a_deleted_version_row_quarantines_its_object() -> None:
    inventory = Inventory(
        (KeyRow("k", KeyState.ENABLED),), (VersionRow("k", 2, STRANGER, VersionState.ENABLED),)
    )
    assert plan(inventory, {OBJECT, STRANGER}) == Plan(quarantine=(OBJECT,))


def test_an_enabled_key_without_any_version_row_is_unavailable() -> None:
    inventory = Inventory((KeyRow("k", KeyState.ENABLED),), ())
    assert plan(inventory, {OBJECT}) == Plan(quarantine=(OBJECT,), unavailable=("k",))


def test_a_database_that_knows_nothing_destroys_nothing() -> None:
    """A copied state directory started against another's tokens: every object a stranger."""
    objects = {bytes([n]) * 16 for n in range(5)}
    decided = plan(Inventory((), ()), objects)
    assert decided.destroy == ()
    assert set(decided.quarantine) == objects


def test_a_creating_key_rolls_back_all_its_versions_objects() -> None:
    versions = (
        VersionRow("k", 1, OBJECT, VersionState.CREATING),
        VersionRow("k", 2, STRANGER, VersionState.ENABLED),
    )
    decided = plan(Inventory((KeyRow("k", KeyState.CREATING),), versions), {OBJECT, STRANGER})
    assert decided.roll_back_keys == ("k",)
    assert decided.roll_back_versions == ()
    assert decided.destroy == tuple(sorted((OBJECT, STRANGER)))


def test_a_key_is_unavailable_when_any_enabled_version_lacks_its_object() -> None:
    versions = (
        VersionRow("k", 1, OBJECT, VersionState.ENABLED),
        VersionRow("k", 2, STRANGER, VersionState.ENABLED),
    )
    inventory = Inventory((KeyRow("k", KeyState.ENABLED),), versions)
    assert plan(inventory, {OBJECT}).unavailable == ("k",)
    assert plan(inventory, {OBJECT, STRANGER}) == Plan()


def test_a_damaged_key_row_keeps_its_objects_and_changes_nothing() -> None:
    inventory = Inventory((KeyRow("k", None),), (VersionRow("k", 1, OBJECT, VersionState.ENABLED),))
    assert plan(inventory, {OBJECT}) == Plan()
    assert plan(inventory, set()) == Plan()


@pytest.mark.parametrize("version_state", [VersionState.ENABLED, VersionState.CREATING])
def test_an_object_without_an_id_goes_only_beside_an_unfinished_creation(
    version_state: VersionState,
) -> None:
    """SoftHSM2 writes a new object with default attributes (an empty CKA_ID) before the
    template's; kill -9 in between leaves one. It is the interrupted creation's remains only
    when there is an interrupted creation."""
    inventory, _ = _one_key(KeyState.ENABLED, version_state)
    decided = plan(inventory, {OBJECT, TORN})
    if version_state is VersionState.CREATING:
        assert decided.destroy == (TORN, OBJECT)
    else:
        assert decided.destroy == ()
        assert decided.quarantine == (TORN,)


def test_plans_are_sorted_so_they_compare() -> None:
    keys = tuple(KeyRow(f"k{n}", KeyState.CREATING) for n in (3, 1, 2))
    assert plan(Inventory(keys, ()), set()).roll_back_keys == ("k1", "k2", "k3")
    assert NO_ROW  # shown to operators; must say something


# Binding a token directory to its database

OURS = "/srv/hsmd/hsmd.db"
MARK = OwnerMark("db-1", OURS)


def test_a_directory_without_a_mark_is_bound() -> None:
    assert decide_binding(None, "db-1", OURS, None).action is Binding.BIND


def test_our_own_mark_is_kept() -> None:
    assert decide_binding(MARK, "db-1", OURS, None).action is Binding.KEEP


def test_a_mark_of_another_database_is_refused() -> None:
    decision = decide_binding(OwnerMark("db-2", "/elsewhere/hsmd.db"), "db-1", OURS, None)
    assert decision.action is Binding.REFUSE
    assert "another hsmd database" in decision.reason


def test_a_copy_whose_config_points_at_the_originals_tokens_is_refused() -> None:
    copy = "/srv/hsmd.copy/hsmd.db"
    decision = decide_binding(MARK, "db-1", copy, OtherDatabase.CLAIMS_THESE_TOKENS)
    assert decision.action is Binding.REFUSE
    assert OURS in decision.reason and "copy" in decision.reason


@pytest.mark.parametrize("other", [OtherDatabase.MISSING, OtherDatabase.USES_OTHER_TOKENS])
def test_a_state_moved_or_copied_with_its_tokens_is_rebound(other: OtherDatabase) -> None:
    decision = decide_binding(MARK, "db-1", "/srv/hsmd.copy/hsmd.db", other)
    assert decision.action is Binding.REBIND
