"""Tenant admission and destruction (hsmd.ops.tenants) with an injected clock, a real SQLite
store and a backend that only records: who is let in, and that a destruction happens once,
not before its date, and is finished after a failure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest

from hsmd.backend.api import CryptoBackend
from hsmd.domain import TenantState
from hsmd.errors import FailedPrecondition, PermissionDenied
from hsmd.keystore.sqlite_store import SqliteKeyStore
from hsmd.keystore.store import KeyStore
from hsmd.ops.tenants import ONE_TENANT_ONLY, TenantOps

T = datetime(2026, 3, 1, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.time = T

    def now(self) -> datetime:
        return self.time


class Tokens:
    """Records token removals; fails the next one while `failing`."""

    def __init__(self) -> None:
        self.removed: list[tuple[str, str]] = []
        self.failing = False

    def remove_token(self, tenant: str, serial: str) -> None:
        if self.failing:
            raise OSError("the token directory is read-only")
        self.removed.append((tenant, serial))


@pytest.fixture
def store(tmp_path: Path) -> SqliteKeyStore:
    made = SqliteKeyStore(tmp_path / "hsmd.db")
    for name in ("alpha", "beta"):
        made.add_tenant(name, f"hsmd/{name}", T, ["admin"])
        made.activate_tenant(name, f"serial-{name}")
    return made


def _ops(store: KeyStore, clock: Clock, tokens: Tokens, dedicated: str | None = None) -> TenantOps:
    return TenantOps(store, cast(CryptoBackend, tokens), clock, dedicated)


def _counting_reads(store: SqliteKeyStore) -> list[str]:
    """The names the store's get_tenant is asked for, from now on."""
    reads: list[str] = []
    read = store.get_tenant

    def counted(name: str) -> Any:
        reads.append(name)
        return read(name)

    store.get_tenant = counted  # type: ignore[method-assign]
    return reads


def test_a_dedicated_instance_refuses_others_before_looking_anything_up() -> None:
    class Untouchable:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"the store was asked {name}")

    ops = _ops(cast(KeyStore, Untouchable()), Clock(), Tokens(), dedicated="solo")
    with pytest.raises(PermissionDenied) as refused:
        ops.admit("alpha")
    assert str(refused.value) == ONE_TENANT_ONLY
    with pytest.raises(FailedPrecondition, match="one tenant only"):
        ops.create_tenant("beta")


def test_admission_follows_the_tenant_state(store: SqliteKeyStore) -> None:
    ops = _ops(store, Clock(), Tokens())
    ops.admit("alpha")
    ops.disable("alpha")
    with pytest.raises(FailedPrecondition, match="disabled by an operator"):
        ops.admit("alpha")
    ops.schedule_deletion("alpha", 7)
    with pytest.raises(FailedPrecondition, match="scheduled for deletion"):
        ops.admit("alpha")
    with pytest.raises(PermissionDenied, match="not served"):
        ops.admit("nobody")
    ops.admit("beta")


def test_a_tenant_is_destroyed_once_its_date_has_come(store: SqliteKeyStore) -> None:
    clock, tokens = Clock(), Tokens()
    ops = _ops(store, clock, tokens)
    ops.schedule_deletion("alpha", 7)
    clock.time = T + timedelta(days=7) - timedelta(seconds=1)
    assert list(ops.destroy_due()) == []
    clock.time = T + timedelta(days=7)
    tokens.failing = True
    assert list(ops.destroy_due()) == []  # claimed, then the token removal failed
    tenant = store.get_tenant("alpha")
    assert tenant is not None and tenant.state is TenantState.DELETING
    with pytest.raises(FailedPrecondition, match="DELETING"):
        ops.cancel_deletion("alpha")  # too late once claimed
    tokens.failing = False
    assert [t.name for t in ops.destroy_due()] == ["alpha"]
    assert tokens.removed == [("alpha", "serial-alpha")]
    assert store.get_tenant("alpha") is None
    assert list(ops.destroy_due()) == []
    assert [t.name for t in ops.list_tenants()] == ["beta"]


def test_a_cancelled_deletion_is_not_carried_out(store: SqliteKeyStore) -> None:
    clock, tokens = Clock(), Tokens()
    ops = _ops(store, clock, tokens)
    ops.schedule_deletion("alpha", 0)
    assert ops.cancel_deletion("alpha").state is TenantState.DISABLED
    clock.time = T + timedelta(days=31)
    assert list(ops.destroy_due()) == []
    assert tokens.removed == []


def test_admission_reads_a_tenants_state_once_and_again_after_every_change(
    store: SqliteKeyStore,
) -> None:
    reads = _counting_reads(store)
    ops = _ops(store, Clock(), Tokens())
    for _ in range(3):
        ops.admit("alpha")
    assert reads == ["alpha"]
    ops.disable("alpha")
    with pytest.raises(FailedPrecondition, match="disabled"):
        ops.admit("alpha")
    ops.enable("alpha")
    ops.admit("alpha")
    with pytest.raises(PermissionDenied):
        ops.admit("nobody")
    with pytest.raises(PermissionDenied):
        ops.admit("nobody")
    assert reads.count("nobody") == 2  # an unknown name is never cached


def test_a_worker_admits_by_what_the_coordinator_last_committed(store: SqliteKeyStore) -> None:
    """A worker process's TenantOps reads a store another process writes (hsmd/workers.py):
    its cached tenants go once that process commits, and stay while it does not."""
    coordinator = _ops(store, Clock(), Tokens())
    reader = SqliteKeyStore(store.path, written_elsewhere=True)
    reads = _counting_reads(reader)
    worker = _ops(reader, Clock(), Tokens())
    try:
        for _ in range(3):
            worker.admit("alpha")
        assert reads == ["alpha"]
        coordinator.disable("alpha")
        with pytest.raises(FailedPrecondition, match="disabled by an operator"):
            worker.admit("alpha")
        coordinator.enable("alpha")
        worker.admit("alpha")
    finally:
        reader.close()
