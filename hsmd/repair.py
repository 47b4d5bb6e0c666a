"""Start-up repair, decided without touching anything: what to keep, roll back, destroy,
quarantine or mark UNAVAILABLE, and whether a token directory belongs to this database.

No transaction spans a metadata row and a token object (DESIGN §7), so a crash, a copied state
directory or a damaged record can leave the two disagreeing. The rule is that repair never
destroys what it cannot prove it made: an object goes only when a row of *this* database says
so, because a creation it recorded (a CREATING row) was interrupted or a destruction it
committed (a DESTROYED row) did not finish. Every other object that no row names is put in
quarantine: left in the token, reported, and destroyed or adopted by an operator. A row that
cannot be read names its object all the same, so a damaged record never makes its object look
like a stranger.

The decisions are pure functions of plain values, so they are tested exhaustively without a
token or a database; hsmd.ops.reconcile carries them out.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from hsmd.domain import KeyState, VersionState
from hsmd.names import REGION_OBJECT_PREFIX

# Why an object is in quarantine (shown to operators).
NO_ROW = "no key version or import token of this database names it"
# The CKA_ID of an object whose creation was cut short (SoftHSM2 writes the defaults first).
TORN = b""


@dataclass(frozen=True)
class KeyRow:
    """A key as the store holds it; state None when the row cannot be read (damaged)."""

    key_id: str
    state: KeyState | None


@dataclass(frozen=True)
class VersionRow:
    """A version as the store holds it; state None when the row cannot be read (damaged)."""

    key_id: str
    version: int
    object_id: bytes
    state: VersionState | None


@dataclass(frozen=True)
class Inventory:
    """What the metadata store says one tenant's token should hold."""

    keys: tuple[KeyRow, ...]
    versions: tuple[VersionRow, ...]
    import_objects: frozenset[bytes] = frozenset()


@dataclass(frozen=True)
class Plan:
    """What start-up repair does to one tenant; every field is sorted, so plans compare."""

    roll_back_keys: tuple[str, ...] = ()  # CREATING keys: their rows go
    roll_back_versions: tuple[VersionRow, ...] = ()  # CREATING versions of other keys
    forget_versions: tuple[VersionRow, ...] = ()  # destroyed material of PENDING_IMPORT keys
    destroy: tuple[bytes, ...] = ()  # objects a row of this database proves must go
    quarantine: tuple[bytes, ...] = ()  # objects no row names: kept, reported
    unavailable: tuple[str, ...] = ()  # ENABLED keys with an object (or a version row) missing
    restored: tuple[str, ...] = ()  # UNAVAILABLE keys whose objects are all back


def plan(inventory: Inventory, present: Iterable[bytes]) -> Plan:
    """Decides the repair of one tenant from its rows and the object ids in its token."""
    present = frozenset(present)
    states = {key.key_id: key.state for key in inventory.keys}
    creating_keys = {key_id for key_id, state in states.items() if state is KeyState.CREATING}
    roll_back = [
        version
        for version in inventory.versions
        if version.key_id not in creating_keys and version.state is VersionState.CREATING
    ]
    # DeleteImportedKeyMaterial marks versions DESTROYED, destroys their objects, then drops
    # the rows so a re-import of the same material takes the same version numbers.
    forget = [
        version
        for version in inventory.versions
        if states.get(version.key_id) is KeyState.PENDING_IMPORT
        and version.state is VersionState.DESTROYED
    ]
    proven = {
        version.object_id
        for version in inventory.versions
        if version.key_id in creating_keys
        or version.state in (VersionState.CREATING, VersionState.DESTROYED)
    }
    if creating_keys or roll_back:
        # hsmd creates every object with its CKA_ID in the same call, and only hsmd holds the
        # token's PIN: an object without one is what an interrupted creation left behind.
        proven.add(TORN)
    named = {version.object_id for version in inventory.versions} | inventory.import_objects
    # The token's region transport objects (its transport key pair, its peers' trusted keys)
    # are named by their CKA_ID's prefix; hsmd makes them, and they are no key's.
    named |= {object_id for object_id in present if object_id.startswith(REGION_OBJECT_PREFIX)}
    live: dict[str, list[bytes]] = {}
    for version in inventory.versions:
        if version.state is VersionState.ENABLED:
            live.setdefault(version.key_id, []).append(version.object_id)

    def complete(key_id: str) -> bool:
        """Has enabled versions (a key that is ENABLED always does) and all their objects."""
        objects = live.get(key_id, ())
        return bool(objects) and all(object_id in present for object_id in objects)

    return Plan(
        roll_back_keys=tuple(sorted(creating_keys)),
        roll_back_versions=_by_version(roll_back),
        forget_versions=_by_version(forget),
        destroy=tuple(sorted(proven & present)),
        quarantine=tuple(sorted(present - named)),
        unavailable=tuple(
            sorted(k for k, s in states.items() if s is KeyState.ENABLED and not complete(k))
        ),
        restored=tuple(
            sorted(k for k, s in states.items() if s is KeyState.UNAVAILABLE and complete(k))
        ),
    )


def _by_version(versions: list[VersionRow]) -> tuple[VersionRow, ...]:
    return tuple(sorted(versions, key=lambda v: (v.key_id, v.version)))


@dataclass(frozen=True)
class OwnerMark:
    """What a token directory says about the database it belongs to."""

    database_id: str
    database_path: str


class OtherDatabase(enum.Enum):
    """What is found at the database path an owner mark names, when that is not ours."""

    MISSING = "missing"  # nothing there: the state directory was moved
    CLAIMS_THESE_TOKENS = "claims"  # a database that names this token directory as its own
    USES_OTHER_TOKENS = "elsewhere"  # a database bound to some other token directory


class Binding(enum.Enum):
    BIND = "bind"  # no mark yet: write one naming this database
    KEEP = "keep"  # the mark names this database
    REBIND = "rebind"  # moved or copied together with its database: rewrite the mark
    REFUSE = "refuse"  # the tokens belong to another database: do not touch them


@dataclass(frozen=True)
class BindingDecision:
    action: Binding
    reason: str


def decide_binding(
    mark: OwnerMark | None,
    database_id: str,
    database_path: str,
    other: OtherDatabase | None,
) -> BindingDecision:
    """Whether this database may use a token directory that carries `mark`.

    `other` says what is at mark.database_path when that is not this database (None when it
    is). A copy of a state directory has the same database id as the original: it may use the
    tokens that were copied with it, never the original's, which the original still claims.
    """
    if mark is None:
        return BindingDecision(Binding.BIND, "the token directory has no owner mark yet")
    if mark.database_id != database_id:
        return BindingDecision(
            Binding.REFUSE,
            f"the token directory belongs to another hsmd database (id {mark.database_id}, at "
            f"{mark.database_path}); this database is {database_id}",
        )
    if mark.database_path == database_path or other is None:
        return BindingDecision(Binding.KEEP, "the token directory belongs to this database")
    if other is OtherDatabase.CLAIMS_THESE_TOKENS:
        return BindingDecision(
            Binding.REFUSE,
            f"the token directory is in use by the database at {mark.database_path}, of which "
            f"this database is a copy; give the copy its own token directory (a copy of the "
            f"tokens, with token_dir relative to its config file)",
        )
    return BindingDecision(
        Binding.REBIND,
        f"the state was moved or copied with its tokens (the mark named {mark.database_path})",
    )
