"""The KeyStore contract: what every metadata store must do, run against each implementation.

A second store (PostgreSQL, for several nodes) adds its factory to STORES and must pass all of
it. The last section holds what is particular to SQLite: damaged rows, a full database, the
integrity check.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hsmd.domain import (
    Alias,
    ClientRequest,
    ImportParameters,
    Key,
    KeyOrigin,
    KeyPolicy,
    KeySpec,
    KeyState,
    KeyUsage,
    KeyVersion,
    MultiRegion,
    Replica,
    RotationType,
    TenantState,
    VersionState,
    WrappingAlgorithm,
)
from hsmd.errors import (
    AlreadyExists,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    StorageFull,
    StorageUnavailable,
)
from hsmd.keystore import sqlite_store as sqlite_module
from hsmd.keystore.sqlite_store import SqliteKeyStore
from hsmd.keystore.store import KeyStore, TableRows, TenantRecords
from hsmd.repair import KeyRow, VersionRow

T = datetime(2026, 3, 1, tzinfo=UTC)
A, B = "alpha", "beta"

STORES: dict[str, Callable[[Path], KeyStore]] = {
    "sqlite": lambda directory: SqliteKeyStore(directory / "hsmd.db"),
}


@pytest.fixture(params=sorted(STORES))
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(kind: str, tmp_path: Path) -> Iterator[KeyStore]:
    made = STORES[kind](tmp_path)
    for tenant in (A, B):
        made.add_tenant(tenant, f"hsmd/{tenant}", T, ["admin"])
        made.activate_tenant(tenant, f"serial-{tenant}")
    yield made
    made.close()


def _key(tenant: str = A, state: KeyState = KeyState.ENABLED, **fields: object) -> Key:
    values: dict[str, object] = {
        "tenant": tenant,
        "key_id": str(uuid.uuid4()),
        "description": "",
        "spec": KeySpec.AES_256,
        "usage": KeyUsage.ENCRYPT_DECRYPT,
        "origin": KeyOrigin.GENERATED,
        "state": state,
        "created_at": T,
        "primary_version": 1,
        "policy": KeyPolicy(("admin",), ("app",)),
    }
    values.update(fields)
    return Key(**values)  # type: ignore[arg-type]


def _add(store: KeyStore, key: Key, request: ClientRequest | None = None) -> KeyVersion:
    version = KeyVersion(key.tenant, key.key_id, 1, uuid.uuid4().bytes, T)
    store.add_key(key, version, request)
    return version


# --- tenants ------------------------------------------------------------------------------------


def test_tenants_are_added_activated_and_listed(store: KeyStore) -> None:
    assert [t.name for t in store.list_tenants()] == [A, B]
    tenant = store.get_tenant(A)
    assert tenant is not None and tenant.token_serial == f"serial-{A}"
    assert store.get_tenant("nobody") is None
    with pytest.raises(AlreadyExists):
        store.add_tenant(A, "hsmd/again", T, [])


def test_a_tenants_client_request_is_kept(store: KeyStore) -> None:
    request = ClientRequest("token-1", "digest")
    store.add_tenant("gamma", "hsmd/gamma", T, [], request)
    assert store.tenant_for_request("token-1") == ("gamma", request)
    assert store.tenant_for_request("token-2") is None


def test_a_tenant_moves_only_from_the_states_allowed(store: KeyStore) -> None:
    changeable = (TenantState.ACTIVE, TenantState.DISABLED)
    tenant, moved = store.move_tenant(A, changeable, TenantState.PENDING_DELETION, T)
    assert moved and tenant is not None
    assert (tenant.state, tenant.deletion_at) == (TenantState.PENDING_DELETION, T)
    tenant, moved = store.move_tenant(A, changeable, TenantState.DISABLED)
    assert not moved and tenant is not None and tenant.state is TenantState.PENDING_DELETION
    tenant, moved = store.move_tenant(A, [TenantState.PENDING_DELETION], TenantState.DISABLED)
    assert moved and tenant == store.get_tenant(A)
    assert tenant is not None and (tenant.state, tenant.deletion_at) == (TenantState.DISABLED, None)
    assert store.move_tenant("nobody", changeable, TenantState.DISABLED) == (None, False)
    other = store.get_tenant(B)
    assert other is not None and other.state is TenantState.ACTIVE


def test_a_tenant_is_claimed_for_deletion_only_once_due(store: KeyStore) -> None:
    store.move_tenant(A, [TenantState.ACTIVE], TenantState.PENDING_DELETION, T + timedelta(days=7))
    assert store.tenants_due(T + timedelta(days=6)) == []
    assert not store.claim_tenant_deletion(A, T + timedelta(days=6))
    (due,) = store.tenants_due(T + timedelta(days=7))
    assert due.name == A
    assert store.claim_tenant_deletion(A, T + timedelta(days=7))
    assert not store.claim_tenant_deletion(A, T + timedelta(days=7))
    # A claimed (DELETING) tenant stays due until it is removed, whatever the time.
    assert [t.state for t in store.tenants_due(T)] == [TenantState.DELETING]


def test_removing_a_tenant_takes_every_row_of_it_and_nothing_else(store: KeyStore) -> None:
    kept = _key(B)
    _add(store, kept)
    for tenant in (A, B):
        key = _key(tenant, tags=(("env", "prod"),))
        _add(store, key)
        store.add_alias(Alias(tenant, "alias/x", key.key_id, T, T))
        store.record_quarantine(tenant, [b"orphan"], "unknown", T)
    store.remove_tenant(A)  # not DELETING: nothing happens
    assert store.get_tenant(A) is not None and store.list_keys(A, 0, 10)[0]
    store.move_tenant(A, [TenantState.ACTIVE], TenantState.PENDING_DELETION, T)
    store.claim_tenant_deletion(A, T)
    store.remove_tenant(A)
    assert store.get_tenant(A) is None
    assert store.list_keys(A, 0, 10)[0] == []
    assert store.quarantined(A, 0, 10)[0] == []
    assert len(store.list_keys(B, 0, 10)[0]) == 2
    assert store.get_alias(B, "alias/x").tenant == B
    assert len(store.quarantined(B, 0, 10)[0]) == 1
    store.add_tenant(A, f"hsmd/{A}", T, ["admin"])  # the name is free again


# --- keys ---------------------------------------------------------------------------------------


def test_a_key_is_reachable_only_through_its_tenant(store: KeyStore) -> None:
    key = _key()
    _add(store, key)
    assert store.get_key(A, key.key_id) == key
    with pytest.raises(NotFound):
        store.get_key(B, key.key_id)
    with pytest.raises(NotFound):
        store.update_key(B, key.key_id, description="stolen")
    assert store.list_keys(B, 0, 100) == ([], None)


def test_update_key_sets_columns_and_returns_the_key(store: KeyStore) -> None:
    key = _key()
    _add(store, key)
    deletion = T + timedelta(days=7)
    updated = store.update_key(
        A, key.key_id, state=KeyState.PENDING_DELETION, deletion_at=deletion, description="d"
    )
    assert (updated.state, updated.deletion_at, updated.description) == (
        KeyState.PENDING_DELETION,
        deletion,
        "d",
    )
    store.set_key_state(A, key.key_id, KeyState.DISABLED)
    assert store.get_key(A, key.key_id).state is KeyState.DISABLED


def test_tags_are_added_replaced_and_removed(store: KeyStore) -> None:
    key = _key(tags=(("team", "a"),))
    _add(store, key)
    tagged = store.tag_key(A, key.key_id, {"team": "b", "env": "prod"}, ())
    assert tagged.tags == (("env", "prod"), ("team", "b"))
    assert store.tag_key(A, key.key_id, {}, ["team"]).tags == (("env", "prod"),)


def test_keys_are_listed_in_pages_and_filtered_by_tags(store: KeyStore) -> None:
    keys = [_key(tags=(("n", str(n % 2)),)) for n in range(5)]
    for key in keys:
        _add(store, key)
    first, cursor = store.list_keys(A, 0, 2)
    assert [k.key_id for k in first] == [k.key_id for k in keys[:2]] and cursor is not None
    rest, end = store.list_keys(A, cursor, 10)
    assert [k.key_id for k in rest] == [k.key_id for k in keys[2:]] and end is None
    odd, _ = store.list_keys(A, 0, 10, {"n": "1"})
    assert [k.key_id for k in odd] == [keys[1].key_id, keys[3].key_id]


def test_keys_due_come_in_order_of_their_date(store: KeyStore) -> None:
    later = _key(state=KeyState.PENDING_DELETION, deletion_at=T + timedelta(days=2))
    sooner = _key(tenant=B, state=KeyState.PENDING_DELETION, deletion_at=T + timedelta(days=1))
    future = _key(state=KeyState.PENDING_DELETION, deletion_at=T + timedelta(days=9))
    for key in (later, sooner, future):
        _add(store, key)
    due = store.keys_due("deletion_at", KeyState.PENDING_DELETION, T + timedelta(days=3))
    assert [k.key_id for k in due] == [sooner.key_id, later.key_id]


def test_only_a_pending_deletion_key_is_marked_destroyed(store: KeyStore) -> None:
    pending = _key(state=KeyState.PENDING_DELETION, deletion_at=T)
    enabled = _key()
    _add(store, pending)
    _add(store, enabled)
    store.add_alias(Alias(A, "alias/doomed", pending.key_id, T, T))
    assert store.mark_destroyed(A, pending.key_id)
    assert not store.mark_destroyed(A, enabled.key_id)
    assert store.get_key(A, pending.key_id).state is KeyState.DESTROYED
    assert store.versions(A, pending.key_id)[0].state is VersionState.DESTROYED
    with pytest.raises(NotFound):
        store.get_alias(A, "alias/doomed")


def test_remove_key_takes_its_versions(store: KeyStore) -> None:
    key = _key(state=KeyState.CREATING)
    _add(store, key)
    store.remove_key(A, key.key_id)
    with pytest.raises(NotFound):
        store.get_key(A, key.key_id)
    assert store.versions(A, key.key_id) == []


def test_a_key_or_version_read_before_a_write_is_read_anew_after_it(store: KeyStore) -> None:
    key = _key()
    version = _add(store, key)
    assert store.get_key(A, key.key_id).state is KeyState.ENABLED  # read, and kept
    assert store.get_version(A, key.key_id, 1) == version
    store.set_key_state(A, key.key_id, KeyState.DISABLED)
    assert store.get_key(A, key.key_id).state is KeyState.DISABLED
    store.update_key(A, key.key_id, description="changed")
    assert store.get_key(A, key.key_id).description == "changed"
    store.remove_key(A, key.key_id)
    with pytest.raises(NotFound):
        store.get_key(A, key.key_id)
    with pytest.raises(NotFound):
        store.get_version(A, key.key_id, 1)


def test_a_client_token_names_one_key_per_tenant(store: KeyStore) -> None:
    request = ClientRequest("retry-me", "digest")
    key = _key()
    _add(store, key, request)
    assert store.key_for_request(A, "retry-me") == (store.get_key(A, key.key_id), request)
    assert store.key_for_request(B, "retry-me") is None
    with pytest.raises(AlreadyExists):
        _add(store, _key(), request)
    _add(store, _key(tenant=B), request)  # another tenant's tokens are its own


# --- versions and import ------------------------------------------------------------------------


def test_versions_are_numbered_and_activated(store: KeyStore) -> None:
    key = _key()
    _add(store, key)
    second = store.add_version(A, key.key_id, b"\x02" * 16, T, RotationType.ON_DEMAND)
    assert (second.version, second.state) == (2, VersionState.CREATING)
    with pytest.raises(NotFound):
        store.get_version(A, key.key_id, 2)  # not usable while CREATING
    nxt = T + timedelta(days=90)
    activated = store.activate_version(second, nxt)
    assert (activated.primary_version, activated.next_rotation_at) == (2, nxt)
    assert store.get_version(A, key.key_id, 2).object_id == b"\x02" * 16
    assert [v.version for v in store.versions(A, key.key_id, after=1)] == [2]
    store.remove_version(A, key.key_id, 2)
    assert [v.version for v in store.versions(A, key.key_id)] == [1]


def test_forgotten_material_is_destroyed_then_dropped_so_a_reimport_takes_version_one(
    store: KeyStore,
) -> None:
    key = _key(origin=KeyOrigin.EXTERNAL)
    version = _add(store, key)
    forgotten = store.forget_material(A, key.key_id)
    assert [v.object_id for v in forgotten] == [version.object_id]
    assert store.get_key(A, key.key_id).state is KeyState.PENDING_IMPORT
    assert store.versions(A, key.key_id)[0].state is VersionState.DESTROYED
    store.drop_forgotten_versions(A, key.key_id)
    again = store.add_version(A, key.key_id, b"\x03" * 16, T, None)
    assert again.version == 1


def test_import_parameters_belong_to_their_tenant_and_expire(store: KeyStore) -> None:
    key = _key(origin=KeyOrigin.EXTERNAL, state=KeyState.PENDING_IMPORT)
    store.add_key(key, None)
    parameters = ImportParameters(
        "tok", A, key.key_id, b"\x09" * 16, WrappingAlgorithm.RSAES_OAEP_SHA_1, KeySpec.RSA_2048, T
    )
    store.add_import_parameters(parameters)
    assert store.get_import_parameters(A, "tok") == parameters
    with pytest.raises(NotFound):
        store.get_import_parameters(B, "tok")
    assert store.expired_import_parameters(T) == [parameters]
    store.remove_import_parameters("tok")
    assert store.expired_import_parameters(T) == []


# --- aliases ------------------------------------------------------------------------------------


def test_aliases_are_per_tenant(store: KeyStore) -> None:
    first, second = _key(), _key()
    _add(store, first)
    _add(store, second)
    store.add_alias(Alias(A, "alias/app", first.key_id, T, T))
    with pytest.raises(AlreadyExists):
        store.add_alias(Alias(A, "alias/app", second.key_id, T, T))
    with pytest.raises(NotFound):
        store.get_alias(B, "alias/app")
    moved = store.update_alias(A, "alias/app", second.key_id, T + timedelta(hours=1))
    assert moved.key_id == second.key_id
    assert store.list_aliases(A, second.key_id, 0, 10)[0] == [moved]
    store.delete_alias(A, "alias/app")
    with pytest.raises(NotFound):
        store.delete_alias(A, "alias/app")


# --- quotas -------------------------------------------------------------------------------------


def test_quota_overrides_are_kept_per_tenant_and_replaced(store: KeyStore) -> None:
    assert store.get_tenant_quota(A) == {}
    store.set_tenant_quota(A, {"max_keys": 3, "symmetric_requests_per_second": 2.5})
    assert store.get_tenant_quota(A) == {"max_keys": 3, "symmetric_requests_per_second": 2.5}
    assert store.get_tenant_quota(B) == {}
    store.set_tenant_quota(A, {})
    assert store.get_tenant_quota(A) == {}
    with pytest.raises(NotFound):
        store.set_tenant_quota("nobody", {"max_keys": 1})


def test_resource_limits_are_checked_in_the_adding_transaction(store: KeyStore) -> None:
    first = _key()
    store.add_key(first, KeyVersion(A, first.key_id, 1, uuid.uuid4().bytes, T), None, 1)
    with pytest.raises(ResourceExhausted, match="at most 1 keys"):
        store.add_key(_key(), None, None, 1)
    store.add_key(_key(B), None, None, 1)  # another tenant's count
    store.add_alias(Alias(A, "alias/one", first.key_id, T, T), 1)
    with pytest.raises(ResourceExhausted, match="at most 1 aliases"):
        store.add_alias(Alias(A, "alias/two", first.key_id, T, T), 1)
    parameters = ImportParameters(
        "t1", A, first.key_id, b"\x01" * 16, WrappingAlgorithm.RSAES_OAEP_SHA_1, KeySpec.RSA_2048, T
    )
    store.add_import_parameters(parameters, 1)
    with pytest.raises(ResourceExhausted, match="at most 1 pending import"):
        store.add_import_parameters(
            dataclasses.replace(parameters, token="t2", object_id=b"\x02" * 16), 1
        )
    counts = store.resource_counts(A)
    assert (counts.keys, counts.aliases, counts.pending_imports) == (1, 1, 1)
    assert store.resource_counts(B).keys == 1


def test_a_destroyed_key_does_not_count(store: KeyStore) -> None:
    key = _key(state=KeyState.DESTROYED)
    store.add_key(key, None)
    assert store.resource_counts(A).keys == 0
    store.add_key(_key(), None, None, 1)


# --- repair -------------------------------------------------------------------------------------


def test_the_inventory_holds_every_row_of_the_tenant_only(store: KeyStore) -> None:
    key = _key(state=KeyState.CREATING)
    version = _add(store, key)
    _add(store, _key(tenant=B))
    inventory = store.inventory(A)
    assert inventory.keys == (KeyRow(key.key_id, KeyState.CREATING),)
    assert inventory.versions == (
        VersionRow(key.key_id, 1, version.object_id, VersionState.ENABLED),
    )


def test_quarantine_is_replaced_by_each_repair_and_pages(store: KeyStore) -> None:
    ids = [bytes([n]) * 16 for n in range(3)]
    store.record_quarantine(A, ids, "no row", T)
    store.record_quarantine(A, ids[1:], "no row", T + timedelta(days=1))
    page, cursor = store.quarantined(A, 0, 1)
    assert [(o.object_id, o.found_at) for o in page] == [(ids[1], T)] and cursor is not None
    assert [o.object_id for o in store.quarantined(None, cursor, 10)[0]] == [ids[2]]
    assert store.quarantined(B, 0, 10) == ([], None)
    assert store.is_quarantined(A, ids[2]) and not store.is_quarantined(B, ids[2])
    store.release_quarantined(A, ids[2])
    with pytest.raises(NotFound):
        store.release_quarantined(A, ids[2])


def test_adopting_an_object_gives_it_to_an_enabled_version(store: KeyStore) -> None:
    key = _key()
    _add(store, key)
    found = b"\x07" * 16
    store.record_quarantine(A, [found], "no row", T)
    with pytest.raises(NotFound):
        store.adopt_object(A, key.key_id, 2, found)  # no version 2: nothing changes
    assert store.is_quarantined(A, found)
    store.adopt_object(A, key.key_id, 1, found)
    assert store.get_version(A, key.key_id, 1).object_id == found
    assert not store.is_quarantined(A, found)


def test_the_database_knows_itself_and_its_clock(store: KeyStore) -> None:
    assert store.database_id() == store.database_id()
    assert store.token_dir() is None
    store.bind_token_dir("/srv/tokens")
    assert store.token_dir() == "/srv/tokens"
    assert store.clock_high_water() is None
    store.record_clock(T, T)
    store.record_clock(T - timedelta(days=1), T)  # never lowered
    assert store.clock_high_water() == T
    assert store.integrity_problems() == []


# --- moving a tenant to another instance --------------------------------------------------------


@pytest.fixture
def other(kind: str, tmp_path: Path) -> Iterator[KeyStore]:
    """Another instance's store, with a tenant of its own."""
    (tmp_path / "other").mkdir()
    made = STORES[kind](tmp_path / "other")
    made.add_tenant("gamma", "hsmd/gamma", T, ["admin"])
    made.activate_tenant("gamma", "serial-gamma")
    yield made
    made.close()


def _snapshot(store: KeyStore, tenant: str) -> tuple[object, ...]:
    keys = store.list_keys(tenant, 0, 100)[0]
    return (
        store.get_tenant(tenant),
        keys,
        [store.versions(tenant, key.key_id) for key in keys],
        store.list_aliases(tenant, None, 0, 100)[0],
        store.quarantined(tenant, 0, 100)[0],
        store.inventory(tenant),
    )


def test_a_tenants_rows_move_to_another_store_and_only_its_rows(
    store: KeyStore, other: KeyStore
) -> None:
    key = _key(tags=(("team", "payments"),), description="moving")
    _add(store, key, ClientRequest("key-token", "digest"))
    store.add_version(A, key.key_id, b"\x02" * 16, T, RotationType.ON_DEMAND)
    pending = _key(origin=KeyOrigin.EXTERNAL, state=KeyState.PENDING_IMPORT)
    store.add_key(pending, None)
    parameters = ImportParameters(
        "tok", A, pending.key_id, b"\x09" * 16, WrappingAlgorithm.RSAES_OAEP_SHA_1,
        KeySpec.RSA_2048, T,
    )  # fmt: skip
    store.add_import_parameters(parameters)
    store.add_alias(Alias(A, "alias/app", key.key_id, T, T))
    store.record_quarantine(A, [b"\x07" * 16], "no row", T)
    store.set_tenant_quota(A, {"max_keys": 5})
    _add(store, _key(tenant=B))
    records = store.tenant_records(A)
    assert records.tenant == A
    for table, rows in records.tables.items():
        owner = rows.columns.index("name" if table == "tenants" else "tenant")
        assert {row[owner] for row in rows.rows} == {A}, table
    other.add_tenant_records(records)
    assert _snapshot(other, A) == _snapshot(store, A)
    assert other.get_import_parameters(A, "tok") == parameters
    assert other.get_tenant_quota(A) == {"max_keys": 5}
    assert other.key_for_request(A, "key-token") is not None
    assert other.get_tenant("gamma") is not None
    with pytest.raises(AlreadyExists, match="exists already"):
        other.add_tenant_records(records)


def test_moved_rows_are_refused_whole_when_anything_clashes_or_is_foreign(
    store: KeyStore, other: KeyStore
) -> None:
    _add(store, _key())
    records = store.tenant_records(A)
    tenants = records.tables["tenants"]
    serial = tenants.columns.index("token_serial")
    same_serial = _with_table(
        records,
        "tenants",
        TableRows(
            tenants.columns,
            ((*tenants.rows[0][:serial], "serial-gamma", *tenants.rows[0][serial + 1 :]),),
        ),
    )
    keys = records.tables["keys"]
    foreign_key = _with_table(
        records, "keys", TableRows(keys.columns, (*keys.rows, (B, *keys.rows[0][1:])))
    )
    newer = _with_table(
        records, "keys", TableRows((*keys.columns, "future"), tuple((*r, 1) for r in keys.rows))
    )
    unknown_table = _with_table(records, "future", TableRows(("tenant",), ((A,),)))
    for bad, error in (
        (same_serial, AlreadyExists),
        (foreign_key, InvalidArgument),
        (newer, FailedPrecondition),
        (unknown_table, FailedPrecondition),
    ):
        with pytest.raises(error):
            other.add_tenant_records(bad)
        assert other.get_tenant(A) is None
        assert other.list_keys(A, 0, 10) == ([], None)
    with pytest.raises(NotFound):
        store.tenant_records("nobody")


def _with_table(records: TenantRecords, table: str, rows: TableRows) -> TenantRecords:
    return TenantRecords(records.tenant, records.schema_version, {**records.tables, table: rows})


# --- SQLite in particular -----------------------------------------------------------------------


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SqliteKeyStore]:
    made = SqliteKeyStore(tmp_path / "hsmd.db")
    made.add_tenant(A, f"hsmd/{A}", T, ["admin"])
    yield made
    made.close()


def test_a_damaged_row_is_data_loss_for_its_key_and_left_out_of_lists(
    sqlite_store: SqliteKeyStore, caplog: pytest.LogCaptureFixture
) -> None:
    damaged, healthy = _key(), _key()
    _add(sqlite_store, damaged)
    _add(sqlite_store, healthy)
    with closing(sqlite3.connect(sqlite_store.path)) as db, db:
        db.execute("UPDATE keys SET spec = 'AES_999' WHERE key_id = ?", (damaged.key_id,))
    with pytest.raises(DataLoss, match=damaged.key_id):
        sqlite_store.get_key(A, damaged.key_id)
    assert [k.key_id for k in sqlite_store.list_keys(A, 0, 10)[0]] == [healthy.key_id]
    assert sqlite_store.inventory(A).keys  # repair still sees its row and its objects
    reports = [r for r in caplog.records if "damaged row" in r.getMessage()]
    assert len(reports) == 1  # once per record, not per call
    assert str(sqlite_store.path) in reports[0].getMessage()


def test_a_reader_of_a_database_another_process_writes_sees_each_commit(
    sqlite_store: SqliteKeyStore,
) -> None:
    """A worker process's store (hsmd/workers.py): what it keeps is dropped once another
    connection commits, and refresh() says so with a number that grows."""
    key = _key()
    _add(sqlite_store, key)
    reader = SqliteKeyStore(sqlite_store.path, written_elsewhere=True)
    try:
        assert reader.get_key(A, key.key_id).state is KeyState.ENABLED  # read, and kept
        seen = reader.refresh()
        assert reader.refresh() == seen  # nothing committed since
        sqlite_store.set_key_state(A, key.key_id, KeyState.DISABLED)
        assert reader.get_key(A, key.key_id).state is KeyState.DISABLED
        assert reader.refresh() > seen
        alone = SqliteKeyStore(sqlite_store.path)  # a single process's store never looks
        try:
            alone.get_key(A, key.key_id)
            sqlite_store.set_key_state(A, key.key_id, KeyState.ENABLED)
            # Kept: a single process's store is the only writer of its database.
            assert alone.get_key(A, key.key_id).state is KeyState.DISABLED
        finally:
            alone.close()
    finally:
        reader.close()


def test_a_full_database_is_storage_full(sqlite_store: SqliteKeyStore) -> None:
    with closing(sqlite3.connect(sqlite_store.path)) as db, db:
        pages = db.execute("PRAGMA page_count").fetchone()[0]
    sqlite_store._db.execute(f"PRAGMA max_page_count = {pages}")  # no room to grow
    with pytest.raises(StorageFull):
        for _ in range(200):
            _add(sqlite_store, _key(description="x" * 4000))


def test_a_closed_store_is_unavailable(sqlite_store: SqliteKeyStore) -> None:
    sqlite_store.close()
    with pytest.raises(StorageUnavailable):
        sqlite_store.get_tenant(A)


def test_every_table_with_a_tenant_column_moves_with_it_or_stays_by_decision(
    sqlite_store: SqliteKeyStore,
) -> None:
    """A table added with a tenant column must be sorted here, so a move never silently
    leaves a tenant's rows behind (tenant_records also refuses at run time)."""
    with closing(sqlite3.connect(sqlite_store.path)) as db, db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        with_tenant = {
            table
            for table in tables
            if "tenant" in [column[1] for column in db.execute(f"PRAGMA table_info({table})")]
        }
    moving = {table for table, _ in sqlite_module._MOVING_TABLES}
    assert with_tenant <= moving | sqlite_module._STAYING_TABLES


def test_a_tenant_with_rows_in_an_unknown_table_is_not_moved(sqlite_store: SqliteKeyStore) -> None:
    with closing(sqlite3.connect(sqlite_store.path)) as db, db:
        db.execute("CREATE TABLE future (tenant TEXT NOT NULL)")
        db.execute("INSERT INTO future VALUES (?)", (A,))
    with pytest.raises(FailedPrecondition, match="future"):
        sqlite_store.tenant_records(A)


def test_a_keys_regions_are_kept_and_listed_until_cleared(store: KeyStore) -> None:
    regions = MultiRegion("eu-1", "eu-1", (Replica("us-1", 2), Replica("ap-1", 0)))
    key = _key(key_id="mrk-" + "0f" * 16, multi_region=regions)
    _add(store, key)
    _add(store, _key())  # a key of one region
    assert store.get_key(A, key.key_id).multi_region == regions
    moved = MultiRegion("eu-1", "us-1", (Replica("eu-1", 2),))
    assert store.update_key(A, key.key_id, multi_region=moved).multi_region == moved
    assert [k.key_id for k in store.multi_region_keys()] == [key.key_id]
    store.update_key(A, key.key_id, multi_region=None)
    assert store.multi_region_keys() == []
