"""The rules of hsmd.ops.regions that decide which region acts as a key's primary and what a
replica holds: moving the role never leaves two primaries, a move cut short is finished by
calling again, a replica takes versions only from its primary (or one that primary vouches
for) and only the material it already holds, and one refusing replica holds up no other.
Over a real store, with the token and the peer regions replaced by fakes
(tests/integration/test_regions.py proves the real thing through daemons)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hsmd.backend.api import UnwrapTarget
from hsmd.domain import (
    Key,
    KeyOrigin,
    KeyPolicy,
    KeySpec,
    KeyState,
    KeyUsage,
    KeyVersion,
    MultiRegion,
    Principal,
    PrincipalKind,
    Replica,
    RequestContext,
)
from hsmd.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RegionUnavailable,
    UnwrapFailed,
)
from hsmd.keystore.sqlite_store import SqliteKeyStore
from hsmd.ops import regions
from hsmd.ops.regions import ReplicaPackage, ReplicationOps, ReplicaVersion

T = datetime(2026, 3, 1, tzinfo=UTC)
TENANT = "acme"
KEY_ID = "mrk-" + "ab" * 16
CTX = RequestContext("r", Principal(PrincipalKind.TENANT, "admin", TENANT))
HELD = b"o" * 16  # the object of the version a test's key holds


def _check_value(material: bytes) -> str:
    return hashlib.sha256(material).hexdigest()


class FakeToken:
    """What replication asks of the token, answered without one: an object's material is
    what was unwrapped into it (its own id for one made otherwise)."""

    def __init__(self) -> None:
        self.materials: dict[bytes, bytes] = {}

    def unwrap_from_peer(self, tenant: str, wrapped: bytes, target: UnwrapTarget) -> str:
        if wrapped == b"garbage":
            raise UnwrapFailed()
        self.materials[target.object_id] = wrapped
        return ""

    def check_value(self, tenant: str, object_id: bytes, spec: KeySpec) -> str:
        return _check_value(self.materials.get(object_id, object_id))

    def destroy(self, tenant: str, object_id: bytes) -> None:
        self.materials.pop(object_id, None)

    def trust_peer(self, tenant: str, region: str, public_key: bytes) -> None:
        pass

    def wrap_for_peer(self, tenant: str, region: str, object_id: bytes, spec: KeySpec) -> bytes:
        return b"wrapped " + object_id

    def public_key(self, tenant: str, object_id: bytes, spec: KeySpec) -> bytes:
        return b""


class FakePeer:
    """Regions b and c as region a sees them. `answers` is what a region's PutReplica
    raises (None: it takes the package); `promotion`, what b's PromoteReplica raises;
    `primaries`, which primary each region's copy names."""

    def __init__(self, store: SqliteKeyStore) -> None:
        self.store = store
        self.answers: dict[str, Exception | None] = {}
        self.pushes: list[str] = []
        self.promotion: Exception | None = None
        self.promoted: list[Key] = []
        self.primaries: dict[str, str] = {}

    def trusts(self, region: str) -> bool:
        return region in ("b", "c")

    def primary_region(self, region: str, tenant: str, key_id: str) -> str:
        return self.primaries[region]

    def transport_key(self, region: str, tenant: str) -> bytes:
        return b"spki"

    def put_replica(self, region: str, package: ReplicaPackage) -> Key:
        self.pushes.append(region)
        answer = self.answers.get(region)
        if answer is not None:
            raise answer
        return replace(package.key, primary_version=len(package.versions))

    def promote(self, region: str, key: Key) -> Key:
        here = self.store.get_key(key.tenant, key.key_id).multi_region
        assert here is not None and not here.is_primary, "told before it stepped down"
        if self.promotion is not None:
            raise self.promotion
        self.promoted.append(key)
        return key

    def forget_replica(self, region: str, tenant: str, key_id: str) -> None:
        pass


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteKeyStore]:
    made = SqliteKeyStore(tmp_path / "hsmd.db")
    made.add_tenant(TENANT, f"hsmd/{TENANT}", T, ["admin"])
    made.activate_tenant(TENANT, "serial")
    yield made
    made.close()


@pytest.fixture
def peer(store: SqliteKeyStore) -> FakePeer:
    return FakePeer(store)


@pytest.fixture
def token() -> FakeToken:
    return FakeToken()


@pytest.fixture
def ops(store: SqliteKeyStore, peer: FakePeer, token: FakeToken) -> ReplicationOps:
    class Clock:
        def now(self) -> datetime:
            return T

    made = ReplicationOps(store, token, Clock(), "a", peer, lambda tenant: None)  # type: ignore[arg-type]
    return made


def _aes_key(regions: MultiRegion, primary_version: int = 1) -> Key:
    return Key(
        TENANT,
        KEY_ID,
        "",
        KeySpec.AES_256,
        KeyUsage.ENCRYPT_DECRYPT,
        KeyOrigin.GENERATED,
        KeyState.ENABLED,
        T,
        primary_version,
        KeyPolicy(("admin",), ("app",)),
        multi_region=regions,
    )


def _key(store: SqliteKeyStore, regions: MultiRegion, versions: int = 1) -> Key:
    """Key KEY_ID here with these regions and `versions` versions (the first's object HELD)."""
    store.add_key(_aes_key(regions), KeyVersion(TENANT, KEY_ID, 1, HELD, T))
    for n in range(2, versions + 1):
        store.activate_version(store.add_version(TENANT, KEY_ID, bytes([n]) * 16, T, None), None)
    return store.get_key(TENANT, KEY_ID)


PRIMARY = MultiRegion("a", "a", (Replica("b", 1),))


# Moving the primary role


def test_the_primary_steps_down_before_the_new_one_is_told(
    store: SqliteKeyStore, peer: FakePeer, ops: ReplicationOps
) -> None:
    _key(store, PRIMARY)
    moved = ops.update_primary_region(CTX, KEY_ID, "b")  # FakePeer.promote checks the order
    assert moved.multi_region == MultiRegion("a", "b", (Replica("a", 1),))
    assert [k.multi_region for k in peer.promoted] == [MultiRegion("b", "b", (Replica("a", 1),))]


def test_a_move_cut_short_is_a_replica_and_finishes_when_called_again(
    store: SqliteKeyStore, peer: FakePeer, ops: ReplicationOps
) -> None:
    peer.promotion = RegionUnavailable("region b cannot be reached now")
    _key(store, PRIMARY)
    with pytest.raises(RegionUnavailable, match="call UpdatePrimaryRegion again"):
        ops.update_primary_region(CTX, KEY_ID, "b")
    halfway = store.get_key(TENANT, KEY_ID).multi_region
    assert halfway is not None and not halfway.is_primary and halfway.moving  # never two
    peer.promotion = None
    finished = ops.update_primary_region(CTX, KEY_ID, "b")
    assert finished.multi_region == MultiRegion("a", "b", (Replica("a", 1),))
    assert len(peer.promoted) == 1


def test_a_move_refused_outright_leaves_the_primary_here(
    store: SqliteKeyStore, peer: FakePeer, ops: ReplicationOps
) -> None:
    peer.promotion = FailedPrecondition("region b refused: not a peer")
    _key(store, PRIMARY)
    with pytest.raises(FailedPrecondition, match="refused"):
        ops.update_primary_region(CTX, KEY_ID, "b")
    assert store.get_key(TENANT, KEY_ID).multi_region == PRIMARY


def test_a_replica_moves_no_role_unless_it_handed_it_over(
    store: SqliteKeyStore, ops: ReplicationOps
) -> None:
    _key(store, MultiRegion("a", "b", (Replica("a", 1), Replica("c", 1))))
    for target in ("b", "c"):
        with pytest.raises(FailedPrecondition, match="call UpdatePrimaryRegion there"):
            ops.update_primary_region(CTX, KEY_ID, target)


# The receiving side: region a holds a replica whose primary is b.

REPLICA = MultiRegion("a", "b", (Replica("a", 1),))
FROM_B = Principal(PrincipalKind.REGION, "b")
FROM_C = Principal(PrincipalKind.REGION, "c")


def _package(primary: str, versions: int = 2, *, held: bytes = HELD) -> ReplicaPackage:
    """What `primary` sends: `versions` versions, the first of material `held`."""
    sent = _aes_key(MultiRegion(primary, primary, (Replica("a", 1),)), versions)
    materials = [held] + [f"material {n}".encode() for n in range(2, versions + 1)]
    return ReplicaPackage(
        sent,
        tuple(
            ReplicaVersion(n, T, None, material, b"", _check_value(material))
            for n, material in enumerate(materials[:versions], start=1)
        ),
    )


def test_a_replica_takes_versions_from_its_primary(
    store: SqliteKeyStore, ops: ReplicationOps, token: FakeToken
) -> None:
    _key(store, REPLICA)
    received = ops.receive(FROM_B, _package("b", 3))
    assert received.primary_version == 3
    assert sorted(token.materials.values()) == [b"material 2", b"material 3"]


def test_a_replica_refuses_a_region_its_primary_does_not_vouch_for(
    store: SqliteKeyStore, peer: FakePeer, ops: ReplicationOps
) -> None:
    _key(store, REPLICA)
    peer.primaries["b"] = "b"  # b is still the primary: c claims the role falsely
    with pytest.raises(FailedPrecondition, match="region c is not the primary"):
        ops.receive(FROM_C, _package("c"))
    del peer.primaries["b"]  # b cannot answer: refused all the same, never NOT_FOUND
    with pytest.raises(FailedPrecondition, match="could not confirm it"):
        ops.receive(FROM_C, _package("c"))
    assert store.get_key(TENANT, KEY_ID).primary_version == 1


def test_a_replica_follows_the_role_to_the_region_its_primary_names(
    store: SqliteKeyStore, peer: FakePeer, ops: ReplicationOps
) -> None:
    _key(store, REPLICA)
    peer.primaries["b"] = "c"  # b moved the role to c
    received = ops.receive(FROM_C, _package("c"))
    assert received.multi_region == MultiRegion("a", "c", (Replica("a", 1),))


def test_a_replica_refuses_other_material_for_a_version_it_holds(
    store: SqliteKeyStore, ops: ReplicationOps
) -> None:
    """A region that made the replica first (with material of its own) cannot pass it off
    as the real primary's: the versions held must be the sender's material."""
    _key(store, REPLICA)
    with pytest.raises(FailedPrecondition, match="other material"):
        ops.receive(FROM_B, _package("b", held=b"someone else's"))
    assert store.get_key(TENANT, KEY_ID).primary_version == 1


def test_packages_come_only_from_peers_and_name_their_sender_as_primary(
    store: SqliteKeyStore, ops: ReplicationOps
) -> None:
    _key(store, REPLICA)
    with pytest.raises(PermissionDenied):
        ops.receive(Principal(PrincipalKind.REGION, "d"), _package("d"))
    with pytest.raises(PermissionDenied):
        ops.receive(Principal(PrincipalKind.TENANT, "app", TENANT), _package("b"))
    with pytest.raises(FailedPrecondition, match="not the primary of"):
        ops.receive(FROM_C, _package("b"))
    with pytest.raises(InvalidArgument, match="at least one version"):
        ops.receive(FROM_B, _package("b", versions=0))


def test_a_replica_that_fails_to_be_made_is_not_left_half_made(
    store: SqliteKeyStore, ops: ReplicationOps
) -> None:
    package = _package("b", 2)
    broken = replace(package.versions[1], wrapped=b"garbage")
    with pytest.raises(UnwrapFailed):
        ops.receive(FROM_B, replace(package, versions=(package.versions[0], broken)))
    with pytest.raises(NotFound):
        store.get_key(TENANT, KEY_ID)  # the next push makes it anew
    assert ops.receive(FROM_B, package).state is KeyState.ENABLED


def test_a_replica_pending_deletion_takes_no_versions_and_a_destroyed_one_is_made_anew(
    store: SqliteKeyStore, ops: ReplicationOps
) -> None:
    _key(store, REPLICA)
    store.update_key(TENANT, KEY_ID, state=KeyState.PENDING_DELETION)
    with pytest.raises(FailedPrecondition, match="PENDING_DELETION"):
        ops.receive(FROM_B, _package("b"))
    assert store.mark_destroyed(TENANT, KEY_ID)
    with pytest.raises(NotFound, match="destroyed"):
        ops.receive(FROM_B, _package("b"))  # a push catching up a replica that is gone
    anew = replace(_package("b"), new=True)
    assert ops.receive(FROM_B, anew).state is KeyState.ENABLED  # ReplicateKey again


def test_a_primary_is_not_told_it_is_one_by_a_region_that_is_not(
    store: SqliteKeyStore, ops: ReplicationOps
) -> None:
    key = _key(store, REPLICA)
    promotion = replace(key, multi_region=MultiRegion("a", "a", (Replica("c", 4),)))
    with pytest.raises(FailedPrecondition, match="region c is not the primary"):
        ops.promote(FROM_C, promotion)
    with pytest.raises(FailedPrecondition, match="has 1 versions of 3"):
        ops.promote(FROM_B, replace(promotion, primary_version=3))
    # Every other replica is pushed to next: it still names b until it is.
    promoted = MultiRegion("a", "a", (Replica("c", 0),))
    assert ops.promote(FROM_B, promotion).multi_region == promoted
    assert ops.promote(FROM_B, promotion).multi_region == promoted  # told again


# Maintenance


def test_a_refusing_replica_holds_up_no_other_and_an_unreachable_region_is_left_for_the_pass(
    store: SqliteKeyStore, peer: FakePeer, ops: ReplicationOps
) -> None:
    _key(store, MultiRegion("a", "a", (Replica("b", 1), Replica("c", 1))), versions=2)
    peer.answers = {"b": FailedPrecondition("region b refused: pending deletion")}
    assert [done.regions for done in ops.sync_due()] == [("a", "c")]
    assert peer.pushes == ["b", "c"]
    peer.answers = {"c": RegionUnavailable("region c cannot be reached now")}
    store.activate_version(store.add_version(TENANT, KEY_ID, b"3" * 16, T, None), None)
    assert list(ops.sync_due()) == []
    assert peer.pushes == ["b", "c", "c"]  # b rests after refusing; c is tried each pass


def test_a_replica_is_not_made_for_a_primary_whose_deletion_was_scheduled_meanwhile(
    store: SqliteKeyStore, peer: FakePeer, ops: ReplicationOps, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ReplicateKey looks at the key again under its lock, as ScheduleKeyDeletion does."""
    key = _key(store, MultiRegion("a", "a"))
    monkeypatch.setattr(regions, "usable_key", lambda *args: key)  # as it was read, before:
    store.update_key(TENANT, KEY_ID, state=KeyState.PENDING_DELETION)
    with pytest.raises(FailedPrecondition, match="PENDING_DELETION"):
        ops.replicate(CTX, key.key_id, "b", None, None, {})
    assert peer.pushes == []
