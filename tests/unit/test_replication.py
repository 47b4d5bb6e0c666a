"""Moving a multi-region key's primary role never leaves two primaries, and a move cut short
is finished by calling again: hsmd.ops.regions over a real store, with the token and the peer
region replaced by fakes (tests/integration/test_regions.py proves the real thing)."""

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
from hsmd.errors import FailedPrecondition, RegionUnavailable
from hsmd.keystore.sqlite_store import SqliteKeyStore
from hsmd.ops.regions import ReplicaPackage, ReplicationOps

T = datetime(2026, 3, 1, tzinfo=UTC)
TENANT = "acme"
CTX = RequestContext("r", Principal(PrincipalKind.TENANT, "admin", TENANT))


class FakeToken:
    """What replication asks of the token, answered without one."""

    def trust_peer(self, tenant: str, region: str, public_key: bytes) -> None:
        pass

    def wrap_for_peer(self, tenant: str, region: str, object_id: bytes, spec: KeySpec) -> bytes:
        return b"wrapped " + object_id

    def public_key(self, tenant: str, object_id: bytes, spec: KeySpec) -> bytes:
        return b""


class FakePeer:
    """Region b: takes packages; its answer to a promotion is `promotion` (None: it agrees)."""

    def __init__(self) -> None:
        self.promotion: Exception | None = None
        self.promoted: list[Key] = []

    def trusts(self, region: str) -> bool:
        return region == "b"

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
