"""The rules of hsmd.ops.regions that decide which region acts as a key's primary: moving the
role never leaves two primaries, a move cut short is finished by calling again, and a replica
takes versions only from its primary (or one that primary vouches for). Over a real store,
with the token and the peer regions replaced by fakes (tests/integration/test_regions.py
proves the real thing through daemons)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

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
)
from hsmd.keystore.sqlite_store import SqliteKeyStore
from hsmd.ops.regions import ReplicaPackage, ReplicationOps, ReplicaVersion

T = datetime(2026, 3, 1, tzinfo=UTC)
TENANT = "acme"
CTX = RequestContext("r", Principal(PrincipalKind.TENANT, "admin", TENANT))


class FakeToken:
    """What replication asks of the token, answered without one."""

    def unwrap_from_peer(self, tenant: str, wrapped: bytes, target: object) -> str:
        return ""

    def destroy(self, tenant: str, object_id: bytes) -> None:
        pass

    def trust_peer(self, tenant: str, region: str, public_key: bytes) -> None:
        pass

    def wrap_for_peer(self, tenant: str, region: str, object_id: bytes, spec: KeySpec) -> bytes:
        return b"wrapped " + object_id

    def public_key(self, tenant: str, object_id: bytes, spec: KeySpec) -> bytes:
        return b""


class FakePeer:
    """Regions b and c as region a sees them: b takes packages, and its answer to a promotion
    is `promotion` (None: it agrees); `primaries` is which primary each names."""

    def __init__(self) -> None:
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
        return replace(package.key, primary_version=len(package.versions))

    def promote(self, region: str, key: Key) -> Key:
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


def _ops(store: SqliteKeyStore, peer: FakePeer) -> ReplicationOps:
    class Clock:
        def now(self) -> datetime:
            return T

    return ReplicationOps(
        store,
        FakeToken(),  # type: ignore[arg-type]
        Clock(),
        "a",
        peer,
        lambda tenant: None,
    )


def _primary(store: SqliteKeyStore, regions: MultiRegion) -> Key:
    key = Key(
        TENANT,
        "mrk-" + "ab" * 16,
        "",
        KeySpec.AES_256,
        KeyUsage.ENCRYPT_DECRYPT,
        KeyOrigin.GENERATED,
        KeyState.ENABLED,
        T,
        1,
        KeyPolicy(("admin",), ("app",)),
        multi_region=regions,
    )
    store.add_key(key, KeyVersion(TENANT, key.key_id, 1, b"o" * 16, T))
    return key


PRIMARY = MultiRegion("a", "a", (Replica("b", 1),))


def test_the_primary_steps_down_before_the_new_one_is_told(store: SqliteKeyStore) -> None:
    peer = FakePeer()
    key = _primary(store, PRIMARY)
    moved = _ops(store, peer).update_primary_region(CTX, key.key_id, "b")
    assert moved.multi_region == MultiRegion("a", "b", (Replica("a", 1),))
    assert [k.multi_region for k in peer.promoted] == [MultiRegion("b", "b", (Replica("a", 1),))]


def test_a_move_cut_short_is_a_replica_and_finishes_when_called_again(
    store: SqliteKeyStore,
) -> None:
    peer = FakePeer()
    peer.promotion = RegionUnavailable("region b cannot be reached now")
    key = _primary(store, PRIMARY)
    ops = _ops(store, peer)
    with pytest.raises(RegionUnavailable, match="call UpdatePrimaryRegion again"):
        ops.update_primary_region(CTX, key.key_id, "b")
    halfway = store.get_key(TENANT, key.key_id).multi_region
    assert halfway is not None and not halfway.is_primary  # never two primaries
    peer.promotion = None
    ops.update_primary_region(CTX, key.key_id, "b")
    assert [k.multi_region for k in peer.promoted] == [MultiRegion("b", "b", (Replica("a", 1),))]


def test_a_move_refused_outright_leaves_the_primary_here(store: SqliteKeyStore) -> None:
    peer = FakePeer()
    peer.promotion = FailedPrecondition("region b refused: not a peer")
    key = _primary(store, PRIMARY)
    with pytest.raises(FailedPrecondition, match="refused"):
        _ops(store, peer).update_primary_region(CTX, key.key_id, "b")
    assert store.get_key(TENANT, key.key_id).multi_region == PRIMARY


def test_a_replica_of_another_region_cannot_move_the_role(store: SqliteKeyStore) -> None:
    key = _primary(store, MultiRegion("a", "c", (Replica("a", 1), Replica("b", 1))))
    with pytest.raises(FailedPrecondition, match="call UpdatePrimaryRegion there"):
        _ops(store, FakePeer()).update_primary_region(CTX, key.key_id, "b")


# The receiving side: region a holds a replica whose primary is b.
REPLICA = MultiRegion("a", "b", (Replica("a", 1),))
FROM_B = Principal(PrincipalKind.REGION, "b")
FROM_C = Principal(PrincipalKind.REGION, "c")


def _package(key: Key, primary: str, versions: int = 2) -> ReplicaPackage:
    sent = replace(key, multi_region=MultiRegion(primary, primary, (Replica("a", 1),)))
    return ReplicaPackage(
        sent,
        tuple(ReplicaVersion(n, T, None, b"wrapped") for n in range(1, versions + 1)),
    )


def test_a_replica_takes_versions_from_its_primary(store: SqliteKeyStore) -> None:
    key = _primary(store, REPLICA)
    received = _ops(store, FakePeer()).receive(FROM_B, _package(key, "b"))
    assert received.primary_version == 2


def test_a_replica_refuses_a_region_its_primary_does_not_vouch_for(
    store: SqliteKeyStore,
) -> None:
    key = _primary(store, REPLICA)
    peer = FakePeer()
    peer.primaries["b"] = "b"  # b is still the primary: c claims the role falsely
    with pytest.raises(FailedPrecondition, match="region c is not the primary"):
        _ops(store, peer).receive(FROM_C, _package(key, "c"))
    assert store.get_key(TENANT, key.key_id).primary_version == 1


def test_a_replica_follows_the_role_to_the_region_its_primary_names(
    store: SqliteKeyStore,
) -> None:
    key = _primary(store, REPLICA)
    peer = FakePeer()
    peer.primaries["b"] = "c"  # b moved the role to c
    received = _ops(store, peer).receive(FROM_C, _package(key, "c"))
    assert received.multi_region == MultiRegion("a", "c", (Replica("a", 1),))


def test_packages_come_only_from_peers_and_name_their_sender_as_primary(
    store: SqliteKeyStore,
) -> None:
    key = _primary(store, REPLICA)
    ops = _ops(store, FakePeer())
    with pytest.raises(PermissionDenied):
        ops.receive(Principal(PrincipalKind.REGION, "d"), _package(key, "d"))
    with pytest.raises(PermissionDenied):
        ops.receive(Principal(PrincipalKind.TENANT, "app", TENANT), _package(key, "b"))
    with pytest.raises(FailedPrecondition, match="not the primary of"):
        ops.receive(FROM_C, _package(key, "b"))
    with pytest.raises(InvalidArgument, match="at least one version"):
        ops.receive(FROM_B, _package(key, "b", versions=0))


def test_a_replica_pending_deletion_or_destroyed_takes_no_versions(store: SqliteKeyStore) -> None:
    key = _primary(store, REPLICA)
    ops = _ops(store, FakePeer())
    store.update_key(TENANT, key.key_id, state=KeyState.PENDING_DELETION)
    with pytest.raises(FailedPrecondition, match="PENDING_DELETION"):
        ops.receive(FROM_B, _package(key, "b"))
    assert store.mark_destroyed(TENANT, key.key_id)
    with pytest.raises(NotFound, match="destroyed"):
        ops.receive(FROM_B, _package(key, "b"))  # b believes the replica holds a version


def test_a_primary_is_not_told_it_is_one_by_a_region_that_is_not(store: SqliteKeyStore) -> None:
    key = _primary(store, REPLICA)
    ops = _ops(store, FakePeer())
    promotion = replace(key, multi_region=MultiRegion("a", "a", ()))
    with pytest.raises(FailedPrecondition, match="region c is not the primary"):
        ops.promote(FROM_C, promotion)
    with pytest.raises(FailedPrecondition, match="has 1 versions of 3"):
        ops.promote(FROM_B, replace(promotion, primary_version=3))
    assert ops.promote(FROM_B, promotion).multi_region == MultiRegion("a", "a", ())
    assert ops.promote(FROM_B, promotion).multi_region == MultiRegion("a", "a", ())  # again
