"""The metadata store on SQLite: WAL journal, synchronous=FULL, one connection behind a lock.

An acknowledged write must survive kill -9, so every transaction is committed with a full sync
before the caller goes on. Every key method takes the tenant first and every query filters on
it, so one tenant's rows are unreachable from another's calls. The schema is versioned with
PRAGMA user_version and migrated forward at open. sqlite3 errors become StoreError here and
go no further.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

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
    QuarantinedObject,
    Replica,
    RotationType,
    Tenant,
    TenantState,
    VersionState,
    WrappingAlgorithm,
)
from hsmd.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    StartupRefused,
    StorageFull,
    StorageUnavailable,
    StoreError,
)
from hsmd.keystore.store import DamagedRecord, TableRows, TenantRecords
from hsmd.quotas import ResourceCounts
from hsmd.repair import Inventory, KeyRow, VersionRow

log = logging.getLogger(__name__)

_SQLITE_FULL = 13
# SQLITE_PERM, SQLITE_BUSY, SQLITE_READONLY, SQLITE_IOERR, SQLITE_CANTOPEN
_SQLITE_UNWRITABLE = frozenset({3, 5, 8, 10, 14})
_SQLITE_DAMAGED = frozenset({11, 26})  # SQLITE_CORRUPT, SQLITE_NOTADB
_MAX_REPORTED = 10_000
_T = TypeVar("_T")
_E = TypeVar("_E", KeyState, VersionState)

# Each entry moves the schema from version i to i + 1.
_MIGRATIONS = [
    """
    CREATE TABLE tenants (
        name          TEXT PRIMARY KEY,
        token_label   TEXT NOT NULL UNIQUE,
        token_serial  TEXT NOT NULL DEFAULT '',
        state         TEXT NOT NULL,
        created_at    TEXT NOT NULL
    );
    CREATE TABLE keys (
        seq             INTEGER PRIMARY KEY AUTOINCREMENT,
        tenant          TEXT NOT NULL REFERENCES tenants(name),
        key_id          TEXT NOT NULL,
        description     TEXT NOT NULL,
        spec            TEXT NOT NULL,
        usage           TEXT NOT NULL,
        origin          TEXT NOT NULL,
        state           TEXT NOT NULL,
        created_at      TEXT NOT NULL,
        primary_version INTEGER NOT NULL,
        UNIQUE (tenant, key_id)
    );
    CREATE TABLE key_versions (
        tenant      TEXT NOT NULL,
        key_id      TEXT NOT NULL,
        version     INTEGER NOT NULL,
        object_id   BLOB NOT NULL UNIQUE,
        created_at  TEXT NOT NULL,
        PRIMARY KEY (tenant, key_id, version),
        FOREIGN KEY (tenant, key_id) REFERENCES keys(tenant, key_id) ON DELETE CASCADE
    );
    """,
    # Key lifecycle: policies, rotation, deletion, tags, aliases. Keys made before policies
    # existed get an open policy, so no key is locked away by the upgrade.
    """
    ALTER TABLE tenants ADD COLUMN admin_principals TEXT NOT NULL DEFAULT '["admin"]';
    ALTER TABLE keys ADD COLUMN policy TEXT NOT NULL
        DEFAULT '{"administrators": ["*"], "users": ["*"]}';
    ALTER TABLE keys ADD COLUMN rotation_period_days INTEGER;
    ALTER TABLE keys ADD COLUMN next_rotation_at TEXT;
    ALTER TABLE keys ADD COLUMN deletion_at TEXT;
    ALTER TABLE key_versions ADD COLUMN state TEXT NOT NULL DEFAULT 'ENABLED';
    ALTER TABLE key_versions ADD COLUMN rotation_type TEXT;
    CREATE INDEX keys_next_rotation ON keys(next_rotation_at);
    CREATE INDEX keys_deletion ON keys(deletion_at);
    CREATE TABLE key_tags (
        tenant     TEXT NOT NULL,
        key_id     TEXT NOT NULL,
        tag_key    TEXT NOT NULL,
        tag_value  TEXT NOT NULL,
        PRIMARY KEY (tenant, key_id, tag_key),
        FOREIGN KEY (tenant, key_id) REFERENCES keys(tenant, key_id) ON DELETE CASCADE
    );
    CREATE TABLE aliases (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        tenant      TEXT NOT NULL,
        name        TEXT NOT NULL,
        key_id      TEXT NOT NULL,
        created_at  TEXT NOT NULL,
        updated_at  TEXT NOT NULL,
        UNIQUE (tenant, name),
        FOREIGN KEY (tenant, key_id) REFERENCES keys(tenant, key_id) ON DELETE CASCADE
    );
    """,
    # Wrapping and import: exportable keys, imported material with an expiry and a
    # fingerprint (re-imports must bring the same material), and import tokens with their
    # RSA wrapping key objects.
    """
    ALTER TABLE keys ADD COLUMN exportable INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE keys ADD COLUMN valid_to TEXT;
    ALTER TABLE keys ADD COLUMN material_fingerprint TEXT NOT NULL DEFAULT '';
    CREATE INDEX keys_valid_to ON keys(valid_to);
    CREATE TABLE import_parameters (
        token          TEXT PRIMARY KEY,
        tenant         TEXT NOT NULL,
        key_id         TEXT NOT NULL,
        object_id      BLOB NOT NULL UNIQUE,
        algorithm      TEXT NOT NULL,
        wrapping_spec  TEXT NOT NULL,
        expires_at     TEXT NOT NULL,
        FOREIGN KEY (tenant, key_id) REFERENCES keys(tenant, key_id) ON DELETE CASCADE
    );
    """,
    # Repair and idempotency: the database's identity and what it is bound to (meta), objects
    # in quarantine, and the client request tokens that make a retried creation return the
    # first one's result.
    """
    CREATE TABLE meta (
        name   TEXT PRIMARY KEY,
        value  TEXT NOT NULL
    );
    CREATE TABLE quarantine (
        tenant     TEXT NOT NULL,
        object_id  BLOB NOT NULL,
        reason     TEXT NOT NULL,
        found_at   TEXT NOT NULL,
        PRIMARY KEY (tenant, object_id)
    );
    ALTER TABLE keys ADD COLUMN client_token TEXT;
    ALTER TABLE keys ADD COLUMN request_fingerprint TEXT;
    CREATE UNIQUE INDEX keys_client_token ON keys(tenant, client_token)
        WHERE client_token IS NOT NULL;
    ALTER TABLE tenants ADD COLUMN client_token TEXT;
    ALTER TABLE tenants ADD COLUMN request_fingerprint TEXT;
    """,
    # A client token names at most one tenant creation.
    """
    CREATE UNIQUE INDEX tenants_client_token ON tenants(client_token)
        WHERE client_token IS NOT NULL;
    """,
    # Tenant administration: a tenant DISABLED or PENDING_DELETION, and when it is destroyed.
    """
    ALTER TABLE tenants ADD COLUMN deletion_at TEXT;
    """,
    # Per-tenant quota overrides (SetTenantQuota): a JSON object of the QuotaLimits fields
    # set for the tenant; the config file's [quotas] give the rest.
    """
    CREATE TABLE tenant_quotas (
        tenant     TEXT PRIMARY KEY REFERENCES tenants(name) ON DELETE CASCADE,
        overrides  TEXT NOT NULL
    );
    """,
    # Multi-region keys: where the key lives (a JSON object of domain.MultiRegion), NULL for
    # a key of this region only.
    """
    ALTER TABLE keys ADD COLUMN multi_region TEXT;
    """,
]

_KEY_COLUMNS = (
    "tenant, key_id, description, spec, usage, origin, state, created_at, primary_version,"
    " policy, rotation_period_days, next_rotation_at, deletion_at, exportable, valid_to,"
    " material_fingerprint, multi_region"
)
_IMPORT_COLUMNS = "token, tenant, key_id, object_id, algorithm, wrapping_spec, expires_at"
_VERSION_COLUMNS = "tenant, key_id, version, object_id, created_at, state, rotation_type"
_TENANT_COLUMNS = (
    "name, token_label, token_serial, state, created_at, admin_principals, deletion_at"
)
_ALIAS_COLUMNS = "tenant, name, key_id, created_at, updated_at"

# What moves with a tenant (tenant_records), in the order rows are added at the destination
# (parents first), each with the column naming the tenant. A table with a tenant column must be
# here or in _STAYING_TABLES: tenant_records refuses a tenant that has rows in any other, so a
# new table is never left behind unnoticed.
_MOVING_TABLES = (
    ("tenants", "name"),
    ("keys", "tenant"),
    ("key_versions", "tenant"),
    ("key_tags", "tenant"),
    ("aliases", "tenant"),
    ("import_parameters", "tenant"),
    ("quarantine", "tenant"),
    ("tenant_quotas", "tenant"),
)
# Every table with a tenant column but tenants, children before parents, for removing a
# tenant's rows.
_TENANT_TABLES = tuple(table for table, _ in reversed(_MOVING_TABLES) if table != "tenants")
# Tables with a tenant column whose rows mean nothing at another instance.
_STAYING_TABLES: frozenset[str] = frozenset()
# Columns that stay: row sequence numbers (the destination numbers rows in its own order) and
# the source's CreateTenant request (its client token names a creation at the source only).
_STAYING_COLUMNS = {
    "tenants": frozenset({"client_token", "request_fingerprint"}),
    "keys": frozenset({"seq"}),
    "aliases": frozenset({"seq"}),
}


# Keys and versions kept between writes (hsmd/keystore/sqlite_store.py SqliteKeyStore._kept):
# about 1 KiB each.
_MAX_KEPT_ANSWERS = 10_000
_A = TypeVar("_A", Key, KeyVersion)


class SqliteKeyStore:
    def __init__(self, path: Path, *, written_elsewhere: bool = False) -> None:
        """written_elsewhere: another process writes this database while this one reads it (a
        worker process, hsmd/workers.py): refresh() then drops what is kept when it has."""
        if not path.exists():
            path.touch(mode=0o600)
        self._path = path
        self._closed = False
        self._lock = threading.Lock()
        self._reported: set[tuple[str, str, str]] = set()  # damaged records already logged
        # Every cryptographic call reads its key and version: the answers are kept until the
        # next write transaction, whatever it changes (writes are rare beside those reads).
        # Reads and writes take the same lock, so nothing stale is ever kept.
        self._answers: OrderedDict[tuple[str, str, str, int], Key | KeyVersion] = OrderedDict()
        self._written_elsewhere = written_elsewhere
        self._data_version: int | None = None
        self._generation = 0
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.Error as exc:
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF in _SQLITE_DAMAGED:
                raise StartupRefused(
                    f"the metadata database {path} is damaged ({exc}). Restore it from a"
                    " backup; hsmd changes nothing until then."
                ) from exc
            raise StoreError(f"cannot open the metadata database {path}: {exc}") from exc

    @property
    def path(self) -> Path:
        return self._path

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        has_tables = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'tenants'"
        ).fetchone()
        if version == 0 and has_tables:
            version = 1  # made before the schema was versioned
        if version > len(_MIGRATIONS):
            raise sqlite3.DatabaseError(
                f"schema version {version} is newer than this hsmd knows ({len(_MIGRATIONS)})"
            )
        for step in range(version, len(_MIGRATIONS)):
            self._db.executescript(
                f"BEGIN; {_MIGRATIONS[step]}; PRAGMA user_version = {step + 1}; COMMIT;"
            )

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: all or nothing, committed with a full sync."""
        with self._lock:
            self._check_open()
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._answers.clear()
                try:
                    yield self._db
                    self._db.execute("COMMIT")
                finally:
                    if self._db.in_transaction:  # the body or the COMMIT failed
                        self._db.execute("ROLLBACK")
            except sqlite3.IntegrityError as exc:
                raise AlreadyExists("the resource exists already") from exc
            except sqlite3.Error as exc:
                raise self._failure(exc) from exc
            except DamagedRecord as exc:
                self.report_damage(exc)
                raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """Reads under the lock, so several queries see one consistent state."""
        with self._lock:
            self._check_open()
            try:
                if self._written_elsewhere:
                    self._look_for_other_writers()
                yield self._db
            except sqlite3.Error as exc:
                raise self._failure(exc) from exc
            except DamagedRecord as exc:
                self.report_damage(exc)
                raise

    def refresh(self) -> int:
        """A number that grows each time this store finds that another process committed
        (only looked at when the store is written_elsewhere; always 0 otherwise): what a
        caller derived from the store at another number may be stale. Every read looks first
        (PRAGMA data_version, which changes exactly when another connection has committed),
        and drops the answers kept, so a read is as fresh as in a single process."""
        if not self._written_elsewhere:
            return 0  # every call asks: nothing to lock for in a single process
        with self._read():
            return self._generation

    def _look_for_other_writers(self) -> None:
        """Called under the lock, before a read (see refresh)."""
        version = int(self._db.execute("PRAGMA data_version").fetchone()[0])
        if version != self._data_version:
            self._data_version = version
            self._generation += 1
            self._answers.clear()

    def _check_open(self) -> None:
        if self._closed:  # a handler that outlived shutdown's grace period
            raise StorageUnavailable("the metadata store is closed: the daemon is stopping")

    def report_damage(self, damage: DamagedRecord) -> None:
        """One loud line per damaged record and process, naming tenant, record and file."""
        seen = (damage.tenant, damage.kind, damage.name)
        if seen in self._reported:
            return
        if len(self._reported) < _MAX_REPORTED:
            self._reported.add(seen)
        log.error(
            "tenant %s: %s %s has a damaged row in %s (%s); it answers DATA_LOSS and is left"
            " out of lists until an operator repairs or restores the row",
            damage.tenant,
            damage.kind,
            damage.name,
            self._path,
            damage.detail,
        )

    def _intact(self, rows: Iterable[tuple[Any, ...]], decode: Callable[[Any], _T]) -> list[_T]:
        """Decoded rows, leaving out (and reporting) damaged ones: one bad row must not stop
        a list, a start-up or a maintenance pass."""
        decoded = []
        for row in rows:
            try:
                decoded.append(decode(row))
            except DamagedRecord as exc:
                self.report_damage(exc)
        return decoded

    def _keys(self, db: sqlite3.Connection, rows: Iterable[tuple[str, str]]) -> list[Key]:
        """The keys of (tenant, key_id) rows, leaving out (and reporting) damaged ones."""
        keys = []
        for tenant, key_id in rows:
            try:
                keys.append(_load_key(db, tenant, key_id))
            except DamagedRecord as exc:
                self.report_damage(exc)
        return keys

    def _failure(self, exc: sqlite3.Error) -> Exception:
        """The hsmd error for a failed statement: a full disk and an unwritable file are
        the operator's to fix and the caller's to retry; anything else is internal."""
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code == _SQLITE_FULL:
            return StorageFull(f"the metadata database {self._path} is out of space: {exc}")
        if code in _SQLITE_UNWRITABLE or self._unreadable():
            # SQLite reports a disk that fails reads as a malformed image: the probe tells.
            return StorageUnavailable(f"the metadata database {self._path} cannot be used: {exc}")
        return StoreError(f"metadata store failure ({self._path}): {exc}")

    def _unreadable(self) -> bool:
        try:
            with self._path.open("rb") as database:
                database.read(100)  # the header
        except OSError:
            return True
        return False

    # The database itself

    def integrity_problems(self) -> list[str]:
        """What PRAGMA integrity_check finds (at most 20 lines); empty when the file is sound."""
        with self._lock:
            try:
                rows = self._db.execute("PRAGMA integrity_check(20)").fetchall()
            except sqlite3.DatabaseError as exc:  # too damaged to walk at all
                return [str(exc)]
        problems = [str(row[0]) for row in rows]
        return [] if problems == ["ok"] else problems

    def database_id(self) -> str:
        """A random id made when the database is first opened; copies of the file share it."""
        with self._transaction() as db:
            row = db.execute("SELECT value FROM meta WHERE name = 'database_id'").fetchone()
            if row is not None:
                return str(row[0])
            database_id = str(uuid.uuid4())
            db.execute("INSERT INTO meta (name, value) VALUES ('database_id', ?)", (database_id,))
            return database_id

    def token_dir(self) -> str | None:
        """The token directory this database was last bound to (hsmd.repair), if any."""
        return self._meta("token_dir")

    def bind_token_dir(self, token_dir: str) -> None:
        self._set_meta("token_dir", token_dir)

    @staticmethod
    def read_binding(path: Path) -> tuple[str, str] | None:
        """(database id, token directory) of another hsmd database file, read-only; None if
        there is no such database or it names no token directory."""
        if not path.is_file():
            return None
        try:
            other = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                rows = dict(other.execute("SELECT name, value FROM meta").fetchall())
            finally:
                other.close()
        except sqlite3.Error:
            return None
        if "database_id" not in rows or "token_dir" not in rows:
            return None
        return str(rows["database_id"]), str(rows["token_dir"])

    @staticmethod
    def read_quarantine_count(path: Path) -> int:
        """How many token objects the database at path keeps in quarantine, read-only (hsmd
        doctor, beside a running daemon); 0 if there is no database yet."""
        if not path.is_file():
            return 0
        database = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            count: int = database.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0]
        finally:
            database.close()
        return count

    def clock_high_water(self) -> datetime | None:
        """The latest time the daemon is known to have acted at (hsmd.clock)."""
        value = self._meta("clock_high_water")
        return _parse_time(value) if value else None

    def record_clock(self, high_water: datetime, reading: datetime) -> None:
        """Raises the remembered high-water time to `high_water` (never lowers it), and notes
        what the clock read when it was recorded (the last maintenance pass, for operators)."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO meta (name, value) VALUES ('clock_high_water', ?) ON CONFLICT (name)"
                " DO UPDATE SET value = MAX(value, excluded.value)",
                (_iso(high_water),),
            )
            db.execute(
                "INSERT INTO meta (name, value) VALUES ('clock_recorded_at', ?)"
                " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (_iso(reading),),
            )

    def _meta(self, name: str) -> str | None:
        with self._read() as db:
            row = db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return str(row[0]) if row else None

    def _set_meta(self, name: str, value: str) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO meta (name, value) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, value),
            )

    # Tenants

    def add_tenant(
        self,
        name: str,
        token_label: str,
        created_at: datetime,
        admin_principals: Iterable[str],
        request: ClientRequest | None = None,
    ) -> None:
        """Records a tenant in state CREATING. Raises AlreadyExists if the name is taken."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO tenants (name, token_label, state, created_at, admin_principals,"
                " client_token, request_fingerprint) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    name,
                    token_label,
                    TenantState.CREATING,
                    _iso(created_at),
                    json.dumps(list(admin_principals)),
                    *_request_columns(request),
                ),
            )

    def tenant_for_request(self, token: str) -> tuple[str, ClientRequest] | None:
        """The tenant a request with this client token created, and that request."""
        with self._read() as db:
            row = db.execute(
                "SELECT name, request_fingerprint FROM tenants WHERE client_token = ?",
                (token,),
            ).fetchone()
        return (row[0], ClientRequest(token, row[1])) if row else None

    def activate_tenant(self, name: str, token_serial: str) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE tenants SET state = ?, token_serial = ? WHERE name = ?",
                (TenantState.ACTIVE, token_serial, name),
            )

    def get_tenant(self, name: str) -> Tenant | None:
        with self._read() as db:
            row = db.execute(
                f"SELECT {_TENANT_COLUMNS} FROM tenants WHERE name = ?",  # noqa: S608
                (name,),
            ).fetchone()
        return _tenant(row) if row else None

    def list_tenants(self) -> list[Tenant]:
        with self._read() as db:
            rows = db.execute(
                f"SELECT {_TENANT_COLUMNS} FROM tenants ORDER BY name"  # noqa: S608
            ).fetchall()
        return self._intact(rows, _tenant)

    def move_tenant(
        self,
        name: str,
        allowed: Iterable[TenantState],
        state: TenantState,
        deletion_at: datetime | None = None,
    ) -> tuple[Tenant | None, bool]:
        """Sets the tenant's state (and deletion_at) if its state is one of `allowed`, in one
        transaction. Returns the tenant as it is now (None if it has no row) and whether it
        was moved: a tenant in any other state is left alone (the caller says why)."""
        allowed = tuple(allowed)
        marks = ", ".join("?" * len(allowed))
        with self._transaction() as db:
            moved = db.execute(
                f"UPDATE tenants SET state = ?, deletion_at = ?"  # noqa: S608
                f" WHERE name = ? AND state IN ({marks})",
                (state, _iso(deletion_at) if deletion_at else None, name, *allowed),
            ).rowcount
            row = db.execute(
                f"SELECT {_TENANT_COLUMNS} FROM tenants WHERE name = ?",  # noqa: S608
                (name,),
            ).fetchone()
        return (_tenant(row) if row else None), moved == 1

    def tenants_due(self, now: datetime) -> list[Tenant]:
        """Tenants PENDING_DELETION whose deletion date has come, and tenants DELETING (a
        destruction that has begun and not finished)."""
        with self._read() as db:
            rows = db.execute(
                f"SELECT {_TENANT_COLUMNS} FROM tenants"  # noqa: S608
                " WHERE (state = ? AND deletion_at <= ?) OR state = ? ORDER BY name",
                (TenantState.PENDING_DELETION, _iso(now), TenantState.DELETING),
            ).fetchall()
        return self._intact(rows, _tenant)

    def claim_tenant_deletion(self, name: str, now: datetime) -> bool:
        """PENDING_DELETION -> DELETING, only if its deletion date has come by `now`: a
        CancelTenantDeletion (or a new, later deletion date) that won the race keeps it."""
        with self._transaction() as db:
            claimed = db.execute(
                "UPDATE tenants SET state = ? WHERE name = ? AND state = ? AND deletion_at <= ?",
                (TenantState.DELETING, name, TenantState.PENDING_DELETION, _iso(now)),
            ).rowcount
        return claimed == 1

    def remove_tenant(self, name: str) -> None:
        """Removes every row of a DELETING tenant (keys, versions, tags, aliases, import
        tokens, quarantine, the tenant) in one transaction; no-op for any other state."""
        with self._transaction() as db:
            row = db.execute("SELECT state FROM tenants WHERE name = ?", (name,)).fetchone()
            if row is None or row[0] != TenantState.DELETING:
                return
            for table in _TENANT_TABLES:
                db.execute(f"DELETE FROM {table} WHERE tenant = ?", (name,))  # noqa: S608
            db.execute("DELETE FROM tenants WHERE name = ?", (name,))

    # Quotas

    def get_tenant_quota(self, tenant: str) -> dict[str, float]:
        """The quota fields SetTenantQuota set for the tenant (empty: the defaults)."""
        with self._read() as db:
            row = db.execute(
                "SELECT overrides FROM tenant_quotas WHERE tenant = ?", (tenant,)
            ).fetchone()
        overrides: dict[str, float] = json.loads(row[0]) if row else {}
        return overrides

    def set_tenant_quota(self, tenant: str, overrides: Mapping[str, float]) -> None:
        """Replaces the tenant's overrides. Raises NotFound if there is no such tenant."""
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM tenants WHERE name = ?", (tenant,)).fetchone() is None:
                raise NotFound(f"tenant {tenant!r} not found")
            db.execute(
                "INSERT INTO tenant_quotas (tenant, overrides) VALUES (?, ?)"
                " ON CONFLICT (tenant) DO UPDATE SET overrides = excluded.overrides",
                (tenant, json.dumps(dict(sorted(overrides.items())))),
            )

    def resource_counts(self, tenant: str) -> ResourceCounts:
        """What the tenant's resource limits count, read in one consistent state."""
        with self._read() as db:
            keys, aliases, imports = (
                db.execute(query, (tenant,)).fetchone()[0]
                for query in (_COUNT_KEYS, _COUNT_ALIASES, _COUNT_IMPORTS)
            )
        return ResourceCounts(keys=keys, aliases=aliases, pending_imports=imports)

    def copy_to(self, target: Path) -> None:
        """A consistent copy of the database in target (a new file), made with SQLite's backup
        API while the daemon serves, and made durable."""
        with self._read() as db:
            copy = sqlite3.connect(target)
            try:
                db.backup(copy)
            finally:
                copy.close()
        descriptor = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    def key_counts(self) -> dict[str, int]:
        """Every tenant's keys that are not destroyed (the hsmd_keys metric)."""
        with self._read() as db:
            return dict(db.execute(_COUNT_KEYS_BY_TENANT).fetchall())

    # Keys

    def add_key(
        self,
        key: Key,
        version: KeyVersion | None,
        request: ClientRequest | None = None,
        max_keys: int | None = None,
    ) -> None:
        """Records a new key, its tags and its first version (none for a key whose material
        will be imported) in one transaction.

        Raises:
            AlreadyExists: the tenant has a key made by a request with the same client token.
            ResourceExhausted: the tenant has max_keys keys (not destroyed) already.
        """
        with self._transaction() as db:
            _check_limit(db, _COUNT_KEYS, key.tenant, max_keys, "keys")
            db.execute(
                f"INSERT INTO keys ({_KEY_COLUMNS}, client_token, request_fingerprint)"  # noqa: S608
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key.tenant,
                    key.key_id,
                    key.description,
                    key.spec,
                    key.usage,
                    key.origin,
                    key.state,
                    _iso(key.created_at),
                    key.primary_version,
                    _policy_json(key.policy),
                    key.rotation_period_days,
                    _iso_or_none(key.next_rotation_at),
                    _iso_or_none(key.deletion_at),
                    int(key.exportable),
                    _iso_or_none(key.valid_to),
                    key.material_fingerprint,
                    _column_value(key.multi_region),
                    *_request_columns(request),
                ),
            )
            _write_tags(db, key.tenant, key.key_id, dict(key.tags), ())
            if version is not None:
                _insert_version(db, version)

    def update_key(self, tenant: str, key_id: str, **changes: Any) -> Key:
        """Sets columns of a key (state, description, policy, rotation_period_days,
        next_rotation_at, deletion_at, multi_region, ...) in one transaction and returns the
        key as it is now.

        Raises:
            NotFound: the tenant has no such key.
        """
        columns = {name: _column_value(value) for name, value in changes.items()}
        unknown = set(columns) - {
            "state",
            "description",
            "policy",
            "rotation_period_days",
            "next_rotation_at",
            "deletion_at",
            "valid_to",
            "material_fingerprint",
            "multi_region",
        }
        if unknown:
            raise AssertionError(f"not key columns: {unknown}")
        assignments = ", ".join(f"{name} = ?" for name in columns)
        with self._transaction() as db:
            cursor = db.execute(
                f"UPDATE keys SET {assignments} WHERE tenant = ? AND key_id = ?",  # noqa: S608
                (*columns.values(), tenant, key_id),
            )
            if cursor.rowcount != 1:
                raise NotFound(f"key {key_id!r} not found")
            return _load_key(db, tenant, key_id)

    def set_key_state(self, tenant: str, key_id: str, state: KeyState) -> None:
        self.update_key(tenant, key_id, state=state)

    def tag_key(
        self, tenant: str, key_id: str, add: Mapping[str, str], remove: Iterable[str]
    ) -> Key:
        with self._transaction() as db:
            _load_key(db, tenant, key_id)
            _write_tags(db, tenant, key_id, add, remove)
            return _load_key(db, tenant, key_id)

    def key_for_request(self, tenant: str, token: str) -> tuple[Key, ClientRequest] | None:
        """The key a request with this client token made in the tenant, and that request."""
        with self._read() as db:
            row = db.execute(
                "SELECT key_id, request_fingerprint FROM keys"
                " WHERE tenant = ? AND client_token = ?",
                (tenant, token),
            ).fetchone()
            if row is None:
                return None
            return _load_key(db, tenant, row[0]), ClientRequest(token, row[1])

    def remove_key(self, tenant: str, key_id: str) -> None:
        """Deletes a key and its versions (the roll-back of an unfinished creation)."""
        with self._transaction() as db:
            db.execute("DELETE FROM keys WHERE tenant = ? AND key_id = ?", (tenant, key_id))

    def get_key(self, tenant: str, key_id: str) -> Key:
        """Raises NotFound if the tenant has no such key."""
        with self._read() as db:
            return self._kept(
                (tenant, key_id, "key", 0), Key, lambda: _load_key(db, tenant, key_id)
            )

    def list_keys(
        self, tenant: str, after: int, limit: int, tag_filter: Mapping[str, str] | None = None
    ) -> tuple[list[Key], int | None]:
        """One page of keys in creation order, and the cursor of the next page (None at the end)."""
        conditions = ["k.tenant = ?", "k.seq > ?"]
        arguments: list[Any] = [tenant, after]
        for tag_key, tag_value in (tag_filter or {}).items():
            conditions.append(
                "EXISTS (SELECT 1 FROM key_tags t WHERE t.tenant = k.tenant"
                " AND t.key_id = k.key_id AND t.tag_key = ? AND t.tag_value = ?)"
            )
            arguments += [tag_key, tag_value]
        with self._read() as db:
            rows = db.execute(
                f"SELECT k.seq, k.key_id FROM keys k WHERE {' AND '.join(conditions)}"  # noqa: S608
                " ORDER BY k.seq LIMIT ?",
                (*arguments, limit + 1),
            ).fetchall()
            keys = self._keys(db, [(tenant, row[1]) for row in rows[:limit]])
        next_cursor = rows[limit - 1][0] if len(rows) > limit else None
        return keys, next_cursor

    def keys_due(self, column: str, state: KeyState, now: datetime) -> list[Key]:
        """Keys of every tenant in `state` whose `column` (next_rotation_at or deletion_at) has
        come."""
        if column not in ("next_rotation_at", "deletion_at"):
            raise AssertionError(f"not a schedule column: {column}")
        with self._read() as db:
            rows = db.execute(
                f"SELECT tenant, key_id FROM keys WHERE state = ? AND {column} <= ?"  # noqa: S608
                f" ORDER BY {column}",
                (state, _iso(now)),
            ).fetchall()
            return self._keys(db, rows)

    def multi_region_keys(self) -> list[Key]:
        """Every tenant's keys that name regions (replication's sync pass): multi-region keys,
        and destroyed replicas whose primary has not been told yet."""
        with self._read() as db:
            rows = db.execute(
                "SELECT tenant, key_id FROM keys WHERE multi_region IS NOT NULL ORDER BY seq"
            ).fetchall()
            return self._keys(db, rows)

    def mark_destroyed(self, tenant: str, key_id: str) -> bool:
        """A PENDING_DELETION key becomes DESTROYED (the row stays, its aliases go). False if
        the key is no longer PENDING_DELETION (its deletion was cancelled meanwhile)."""
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE keys SET state = ?, deletion_at = NULL, next_rotation_at = NULL,"
                " rotation_period_days = NULL WHERE tenant = ? AND key_id = ? AND state = ?",
                (KeyState.DESTROYED, tenant, key_id, KeyState.PENDING_DELETION),
            )
            if cursor.rowcount != 1:
                return False
            db.execute(
                "UPDATE key_versions SET state = ? WHERE tenant = ? AND key_id = ?",
                (VersionState.DESTROYED, tenant, key_id),
            )
            db.execute("DELETE FROM aliases WHERE tenant = ? AND key_id = ?", (tenant, key_id))
            return True

    # Versions

    def add_version(
        self,
        tenant: str,
        key_id: str,
        object_id: bytes,
        created_at: datetime,
        how: RotationType | None,
    ) -> KeyVersion:
        """Records the next version of a key in state CREATING."""
        with self._transaction() as db:
            (latest,) = db.execute(
                "SELECT MAX(version) FROM key_versions WHERE tenant = ? AND key_id = ?",
                (tenant, key_id),
            ).fetchone()
            _load_key(db, tenant, key_id)
            version = KeyVersion(
                tenant, key_id, (latest or 0) + 1, object_id, created_at, VersionState.CREATING, how
            )
            _insert_version(db, version)
            return version

    def activate_version(self, version: KeyVersion, next_rotation_at: datetime | None) -> Key:
        """Makes a new version primary; for an automatic rotation, also sets the next one."""
        with self._transaction() as db:
            db.execute(
                "UPDATE key_versions SET state = ? WHERE tenant = ? AND key_id = ? AND version = ?",
                (VersionState.ENABLED, version.tenant, version.key_id, version.version),
            )
            db.execute(
                "UPDATE keys SET primary_version = ? WHERE tenant = ? AND key_id = ?",
                (version.version, version.tenant, version.key_id),
            )
            if next_rotation_at is not None:
                db.execute(
                    "UPDATE keys SET next_rotation_at = ? WHERE tenant = ? AND key_id = ?",
                    (_iso(next_rotation_at), version.tenant, version.key_id),
                )
            return _load_key(db, version.tenant, version.key_id)

    def complete_import(
        self, version: KeyVersion, fingerprint: str, valid_to: datetime | None
    ) -> Key:
        """Imported material is in the token: the version, and the key, become ENABLED."""
        with self._transaction() as db:
            db.execute(
                "UPDATE key_versions SET state = ? WHERE tenant = ? AND key_id = ? AND version = ?",
                (VersionState.ENABLED, version.tenant, version.key_id, version.version),
            )
            db.execute(
                "UPDATE keys SET state = ?, primary_version = ?, material_fingerprint = ?,"
                " valid_to = ? WHERE tenant = ? AND key_id = ?",
                (
                    KeyState.ENABLED,
                    version.version,
                    fingerprint,
                    _iso_or_none(valid_to),
                    version.tenant,
                    version.key_id,
                ),
            )
            return _load_key(db, version.tenant, version.key_id)

    def forget_material(self, tenant: str, key_id: str) -> list[KeyVersion]:
        """Forgets a key's imported material (PENDING_IMPORT again): its versions become
        DESTROYED, so repair can finish their destruction if a crash interrupts it. Returns
        the versions whose objects the caller must now destroy."""
        with self._transaction() as db:
            rows = db.execute(
                f"SELECT {_VERSION_COLUMNS} FROM key_versions"  # noqa: S608
                " WHERE tenant = ? AND key_id = ? AND state = ?",
                (tenant, key_id, VersionState.ENABLED),
            ).fetchall()
            db.execute(
                "UPDATE key_versions SET state = ? WHERE tenant = ? AND key_id = ?",
                (VersionState.DESTROYED, tenant, key_id),
            )
            db.execute(
                "UPDATE keys SET state = ?, valid_to = NULL WHERE tenant = ? AND key_id = ?",
                (KeyState.PENDING_IMPORT, tenant, key_id),
            )
        return [_version(row) for row in rows]

    def drop_forgotten_versions(self, tenant: str, key_id: str) -> None:
        """Deletes the DESTROYED versions of a PENDING_IMPORT key once their objects are gone,
        so a re-import of the same material takes the same version numbers (and old
        ciphertexts decrypt again, as in AWS KMS)."""
        with self._transaction() as db:
            db.execute(
                "DELETE FROM key_versions WHERE tenant = ? AND key_id = ? AND state = ?"
                " AND EXISTS (SELECT 1 FROM keys WHERE tenant = ? AND key_id = ? AND state = ?)",
                (tenant, key_id, VersionState.DESTROYED, tenant, key_id, KeyState.PENDING_IMPORT),
            )

    def keys_expired(self, now: datetime) -> list[Key]:
        """Keys of every tenant whose imported material's valid_to has passed."""
        with self._read() as db:
            rows = db.execute(
                "SELECT tenant, key_id FROM keys WHERE state IN (?, ?) AND valid_to <= ?",
                (KeyState.ENABLED, KeyState.DISABLED, _iso(now)),
            ).fetchall()
            return self._keys(db, rows)

    # Import parameters

    def add_import_parameters(
        self, parameters: ImportParameters, max_pending: int | None = None
    ) -> None:
        """Raises ResourceExhausted if the tenant has max_pending import tokens already."""
        with self._transaction() as db:
            _check_limit(
                db, _COUNT_IMPORTS, parameters.tenant, max_pending, "pending import parameters"
            )
            db.execute(
                f"INSERT INTO import_parameters ({_IMPORT_COLUMNS})"  # noqa: S608
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    parameters.token,
                    parameters.tenant,
                    parameters.key_id,
                    parameters.object_id,
                    parameters.algorithm,
                    parameters.wrapping_spec,
                    _iso(parameters.expires_at),
                ),
            )

    def get_import_parameters(self, tenant: str, token: str) -> ImportParameters:
        """Raises NotFound if the tenant has no such import token."""
        with self._read() as db:
            row = db.execute(
                f"SELECT {_IMPORT_COLUMNS} FROM import_parameters"  # noqa: S608
                " WHERE tenant = ? AND token = ?",
                (tenant, token),
            ).fetchone()
        if row is None:
            raise NotFound("import token not found")
        return _import_parameters(row)

    def expired_import_parameters(self, now: datetime) -> list[ImportParameters]:
        with self._read() as db:
            rows = db.execute(
                f"SELECT {_IMPORT_COLUMNS} FROM import_parameters"  # noqa: S608
                " WHERE expires_at <= ?",
                (_iso(now),),
            ).fetchall()
        return self._intact(rows, _import_parameters)

    def remove_import_parameters(self, token: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM import_parameters WHERE token = ?", (token,))

    def remove_version(self, tenant: str, key_id: str, version: int) -> None:
        """Deletes an unfinished version's row (the roll-back of a rotation or import)."""
        with self._transaction() as db:
            db.execute(
                "DELETE FROM key_versions WHERE tenant = ? AND key_id = ? AND version = ?",
                (tenant, key_id, version),
            )

    def get_version(self, tenant: str, key_id: str, version: int) -> KeyVersion:
        """Raises NotFound if the key has no usable version of that number."""

        def load() -> KeyVersion:
            row = db.execute(
                f"SELECT {_VERSION_COLUMNS} FROM key_versions"  # noqa: S608
                " WHERE tenant = ? AND key_id = ? AND version = ? AND state = ?",
                (tenant, key_id, version, VersionState.ENABLED),
            ).fetchone()
            if row is None:
                raise NotFound(f"key {key_id!r} has no version {version}")
            return _version(row)

        with self._read() as db:
            return self._kept((tenant, key_id, "version", version), KeyVersion, load)

    def _kept(self, name: tuple[str, str, str, int], kind: type[_A], load: Callable[[], _A]) -> _A:
        """The answer kept under `name` since the last write, or load()'s (kept; a NotFound is
        not). Called under the lock."""
        kept = self._answers.get(name)
        if isinstance(kept, kind):
            self._answers.move_to_end(name)
            return kept
        answer = load()
        self._answers[name] = answer
        if len(self._answers) > _MAX_KEPT_ANSWERS:
            self._answers.popitem(last=False)
        return answer

    def versions(
        self, tenant: str, key_id: str, after: int = 0, limit: int = -1
    ) -> list[KeyVersion]:
        with self._read() as db:
            rows = db.execute(
                f"SELECT {_VERSION_COLUMNS} FROM key_versions"  # noqa: S608
                " WHERE tenant = ? AND key_id = ? AND version > ? ORDER BY version LIMIT ?",
                (tenant, key_id, after, limit),
            ).fetchall()
        return [_version(row) for row in rows]

    # Repair

    def inventory(self, tenant: str) -> Inventory:
        """Every key and version row of the tenant as repair sees them: damaged rows too, with
        their state unknown, so their objects are never taken for strangers."""
        with self._read() as db:
            keys = db.execute("SELECT key_id, state FROM keys WHERE tenant = ?", (tenant,))
            key_rows = tuple(KeyRow(row[0], _state(KeyState, row[1])) for row in keys)
            versions = db.execute(
                "SELECT key_id, version, object_id, state FROM key_versions WHERE tenant = ?",
                (tenant,),
            )
            version_rows = tuple(
                VersionRow(row[0], row[1], _blob(row[2]), _state(VersionState, row[3]))
                for row in versions
            )
            imports = db.execute(
                "SELECT object_id FROM import_parameters WHERE tenant = ?", (tenant,)
            ).fetchall()
        return Inventory(key_rows, version_rows, frozenset(_blob(row[0]) for row in imports))

    def record_quarantine(
        self, tenant: str, object_ids: Iterable[bytes], reason: str, now: datetime
    ) -> None:
        """Makes the tenant's quarantine list exactly these objects (keeping when each was
        first found)."""
        keep = set(object_ids)
        with self._transaction() as db:
            rows = db.execute("SELECT object_id FROM quarantine WHERE tenant = ?", (tenant,))
            listed = {bytes(row[0]) for row in rows}
            db.executemany(
                "DELETE FROM quarantine WHERE tenant = ? AND object_id = ?",
                [(tenant, object_id) for object_id in listed - keep],
            )
            db.executemany(
                "INSERT INTO quarantine (tenant, object_id, reason, found_at) VALUES (?, ?, ?, ?)",
                [(tenant, object_id, reason, _iso(now)) for object_id in sorted(keep - listed)],
            )

    def quarantined(
        self, tenant: str | None, after: int, limit: int
    ) -> tuple[list[QuarantinedObject], int | None]:
        """One page of objects in quarantine, of one tenant or (None) of all, oldest first,
        and the cursor of the next page (None at the end)."""
        condition = " AND tenant = ?" if tenant else ""
        arguments = (after, *([tenant] if tenant else []), limit + 1)
        with self._read() as db:
            rows = db.execute(
                "SELECT rowid, tenant, object_id, reason, found_at FROM quarantine"  # noqa: S608
                f" WHERE rowid > ?{condition} ORDER BY rowid LIMIT ?",
                arguments,
            ).fetchall()
        objects = [
            QuarantinedObject(row[1], bytes(row[2]), row[3], _parse_time(row[4]))
            for row in rows[:limit]
        ]
        return objects, rows[limit - 1][0] if len(rows) > limit else None

    def is_quarantined(self, tenant: str, object_id: bytes) -> bool:
        with self._read() as db:
            row = db.execute(
                "SELECT 1 FROM quarantine WHERE tenant = ? AND object_id = ?", (tenant, object_id)
            ).fetchone()
        return row is not None

    def release_quarantined(self, tenant: str, object_id: bytes) -> None:
        """Takes an object out of quarantine (it was destroyed).

        Raises:
            NotFound: the object is not in the tenant's quarantine.
        """
        with self._transaction() as db:
            cursor = db.execute(
                "DELETE FROM quarantine WHERE tenant = ? AND object_id = ?", (tenant, object_id)
            )
            if cursor.rowcount != 1:
                raise NotFound(f"object {object_id.hex()} is not in quarantine")

    def adopt_object(self, tenant: str, key_id: str, version: int, object_id: bytes) -> None:
        """Makes a quarantined object the object of a key version, in one transaction.

        Raises:
            NotFound: the object is not in the tenant's quarantine, or the key has no such
                enabled version.
        """
        with self._transaction() as db:
            cursor = db.execute(
                "DELETE FROM quarantine WHERE tenant = ? AND object_id = ?", (tenant, object_id)
            )
            if cursor.rowcount != 1:
                raise NotFound(f"object {object_id.hex()} is not in quarantine")
            cursor = db.execute(
                "UPDATE key_versions SET object_id = ?"
                " WHERE tenant = ? AND key_id = ? AND version = ? AND state = ?",
                (object_id, tenant, key_id, version, VersionState.ENABLED),
            )
            if cursor.rowcount != 1:
                raise NotFound(f"key {key_id!r} has no enabled version {version}")

    # Aliases

    def add_alias(self, alias: Alias, max_aliases: int | None = None) -> None:
        """Raises AlreadyExists if the tenant has an alias of that name, ResourceExhausted if
        it has max_aliases aliases."""
        with self._transaction() as db:
            _check_limit(db, _COUNT_ALIASES, alias.tenant, max_aliases, "aliases")
            db.execute(
                f"INSERT INTO aliases ({_ALIAS_COLUMNS}) VALUES (?, ?, ?, ?, ?)",  # noqa: S608
                (
                    alias.tenant,
                    alias.name,
                    alias.key_id,
                    _iso(alias.created_at),
                    _iso(alias.updated_at),
                ),
            )

    def update_alias(self, tenant: str, name: str, key_id: str, updated_at: datetime) -> Alias:
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE aliases SET key_id = ?, updated_at = ? WHERE tenant = ? AND name = ?",
                (key_id, _iso(updated_at), tenant, name),
            )
            if cursor.rowcount != 1:
                raise NotFound(f"alias {name!r} not found")
        return self.get_alias(tenant, name)

    def delete_alias(self, tenant: str, name: str) -> None:
        with self._transaction() as db:
            cursor = db.execute("DELETE FROM aliases WHERE tenant = ? AND name = ?", (tenant, name))
            if cursor.rowcount != 1:
                raise NotFound(f"alias {name!r} not found")

    def get_alias(self, tenant: str, name: str) -> Alias:
        """Raises NotFound if the tenant has no alias of that name."""
        with self._read() as db:
            row = db.execute(
                f"SELECT {_ALIAS_COLUMNS} FROM aliases WHERE tenant = ? AND name = ?",  # noqa: S608
                (tenant, name),
            ).fetchone()
        if row is None:
            raise NotFound(f"alias {name!r} not found")
        return _alias(row)

    def list_aliases(
        self, tenant: str, key_id: str | None, after: int, limit: int
    ) -> tuple[list[Alias], int | None]:
        key_condition = " AND key_id = ?" if key_id else ""
        arguments = (tenant, after, *([key_id] if key_id else []), limit + 1)
        with self._read() as db:
            rows = db.execute(
                f"SELECT seq, {_ALIAS_COLUMNS} FROM aliases"  # noqa: S608
                f" WHERE tenant = ? AND seq > ?{key_condition} ORDER BY seq LIMIT ?",
                arguments,
            ).fetchall()
        aliases = [_alias(row[1:]) for row in rows[:limit]]
        next_cursor = rows[limit - 1][0] if len(rows) > limit else None
        return aliases, next_cursor

    # Moving a tenant to another instance (hsmd.ops.tenant_move)

    def tenant_records(self, tenant: str) -> TenantRecords:
        """Every row of the tenant, as stored, read in one consistent view.

        Raises:
            NotFound: there is no such tenant.
            FailedPrecondition: the tenant has rows in a table this hsmd does not know how to
                move.
        """
        with self._read() as db:
            if db.execute("SELECT 1 FROM tenants WHERE name = ?", (tenant,)).fetchone() is None:
                raise NotFound(f"tenant {tenant!r} not found")
            moving = {table for table, _ in _MOVING_TABLES} | _STAYING_TABLES
            for table in _tables_with_column(db, "tenant") - moving:
                if db.execute(
                    f"SELECT 1 FROM {table} WHERE tenant = ? LIMIT 1",  # noqa: S608
                    (tenant,),
                ).fetchone():
                    raise FailedPrecondition(
                        f"tenant {tenant!r} has rows in table {table}, which this hsmd does not"
                        " know how to move"
                    )
            tables = {}
            for table, tenant_column in _MOVING_TABLES:
                columns = tuple(
                    column
                    for column in _columns(db, table)
                    if column not in _STAYING_COLUMNS.get(table, ())
                )
                rows = db.execute(
                    f"SELECT {', '.join(columns)} FROM {table}"  # noqa: S608
                    f" WHERE {tenant_column} = ? ORDER BY rowid",
                    (tenant,),
                ).fetchall()
                tables[table] = TableRows(columns, tuple(tuple(row) for row in rows))
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
        return TenantRecords(tenant, version, tables)

    def add_tenant_records(self, records: TenantRecords) -> None:
        """Adds a tenant moved from another instance, all its rows in one transaction.

        Raises:
            AlreadyExists: a tenant of that name, or with that token serial, exists here.
            FailedPrecondition: the records name a table or column this database does not
                have (they come from a newer hsmd).
            InvalidArgument: a row belongs to another tenant, or the tenant row is missing.
        """
        known = dict(_MOVING_TABLES)
        unknown = set(records.tables) - set(known)
        if unknown:
            raise FailedPrecondition(
                f"the records hold tables this hsmd does not know: {', '.join(sorted(unknown))}"
            )
        tenant_rows = records.tables.get("tenants")
        if tenant_rows is None or len(tenant_rows.rows) != 1:
            raise InvalidArgument("the records must hold exactly one tenant row")
        tenant_row = dict(zip(tenant_rows.columns, tenant_rows.rows[0], strict=True))
        with self._transaction() as db:
            name, serial = tenant_row.get("name"), tenant_row.get("token_serial")
            if db.execute("SELECT 1 FROM tenants WHERE name = ?", (name,)).fetchone():
                raise AlreadyExists(f"tenant {name!r} exists already")
            holder = db.execute(
                "SELECT name FROM tenants WHERE token_serial = ? AND token_serial != ''",
                (serial,),
            ).fetchone()
            if holder is not None:
                raise AlreadyExists(f"token serial {serial} is tenant {holder[0]!r}'s already")
            for table, tenant_column in _MOVING_TABLES:
                moved = records.tables.get(table)
                if moved is None:  # from an hsmd before the table existed
                    continue
                extra = set(moved.columns) - set(_columns(db, table))
                if extra:
                    raise FailedPrecondition(
                        f"table {table} of the records has columns this hsmd does not know:"
                        f" {', '.join(sorted(extra))}"
                    )
                owner = moved.columns.index(tenant_column)
                if any(row[owner] != records.tenant for row in moved.rows):
                    raise InvalidArgument(f"table {table} holds a row of another tenant")
                db.executemany(
                    f"INSERT INTO {table} ({', '.join(moved.columns)})"  # noqa: S608
                    f" VALUES ({', '.join('?' * len(moved.columns))})",
                    moved.rows,
                )


def _tables_with_column(db: sqlite3.Connection, column: str) -> set[str]:
    tables = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {table for (table,) in tables if column in _columns(db, table)}


def _columns(db: sqlite3.Connection, table: str) -> list[str]:
    return [str(row[1]) for row in db.execute(f"PRAGMA table_info({table})")]


_COUNT_KEYS = f"SELECT COUNT(*) FROM keys WHERE tenant = ? AND state != '{KeyState.DESTROYED}'"  # noqa: S608
_COUNT_KEYS_BY_TENANT = (
    f"SELECT tenant, COUNT(*) FROM keys WHERE state != '{KeyState.DESTROYED}' GROUP BY tenant"  # noqa: S608
)
_COUNT_ALIASES = "SELECT COUNT(*) FROM aliases WHERE tenant = ?"
_COUNT_IMPORTS = "SELECT COUNT(*) FROM import_parameters WHERE tenant = ?"


def _check_limit(
    db: sqlite3.Connection, count_query: str, tenant: str, limit: int | None, what: str
) -> None:
    """Inside the transaction that adds one more: exact however many calls add at once."""
    if limit is not None and db.execute(count_query, (tenant,)).fetchone()[0] >= limit:
        raise ResourceExhausted(
            f"limit exceeded: tenant {tenant!r} may have at most {limit} {what}"
        )


def _insert_version(db: sqlite3.Connection, version: KeyVersion) -> None:
    db.execute(
        f"INSERT INTO key_versions ({_VERSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
        (
            version.tenant,
            version.key_id,
            version.version,
            version.object_id,
            _iso(version.created_at),
            version.state,
            version.rotation_type,
        ),
    )


def _write_tags(
    db: sqlite3.Connection,
    tenant: str,
    key_id: str,
    add: Mapping[str, str],
    remove: Iterable[str],
) -> None:
    db.executemany(
        "INSERT INTO key_tags (tenant, key_id, tag_key, tag_value) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (tenant, key_id, tag_key) DO UPDATE SET tag_value = excluded.tag_value",
        [(tenant, key_id, name, value) for name, value in add.items()],
    )
    db.executemany(
        "DELETE FROM key_tags WHERE tenant = ? AND key_id = ? AND tag_key = ?",
        [(tenant, key_id, name) for name in remove],
    )


def _load_key(db: sqlite3.Connection, tenant: str, key_id: str) -> Key:
    row = db.execute(
        f"SELECT {_KEY_COLUMNS} FROM keys WHERE tenant = ? AND key_id = ?",  # noqa: S608
        (tenant, key_id),
    ).fetchone()
    if row is None:
        raise NotFound(f"key {key_id!r} not found")
    tags = db.execute(
        "SELECT tag_key, tag_value FROM key_tags WHERE tenant = ? AND key_id = ? ORDER BY tag_key",
        (tenant, key_id),
    ).fetchall()
    with _decoding("key", tenant, key_id):
        return _key(row, tags)


def _key(row: tuple[Any, ...], tags: list[tuple[str, str]]) -> Key:
    policy = json.loads(row[9])
    return Key(
        tenant=row[0],
        key_id=row[1],
        description=row[2],
        spec=KeySpec(row[3]),
        usage=KeyUsage(row[4]),
        origin=KeyOrigin(row[5]),
        state=KeyState(row[6]),
        created_at=_parse_time(row[7]),
        primary_version=int(row[8]),
        policy=KeyPolicy(tuple(policy["administrators"]), tuple(policy["users"])),
        tags=tuple((name, value) for name, value in tags),
        rotation_period_days=row[10],
        next_rotation_at=_parse_time(row[11]) if row[11] else None,
        deletion_at=_parse_time(row[12]) if row[12] else None,
        exportable=bool(row[13]),
        valid_to=_parse_time(row[14]) if row[14] else None,
        material_fingerprint=row[15],
        multi_region=_multi_region(row[16]) if row[16] else None,
    )


def _multi_region_json(regions: MultiRegion) -> str:
    return json.dumps(
        {
            "region": regions.region,
            "primary_region": regions.primary_region,
            "replicas": [[r.region, r.versions] for r in regions.replicas],
            "moving": regions.moving,
        },
        sort_keys=True,
    )


def _multi_region(text: str) -> MultiRegion:
    value = json.loads(text)
    return MultiRegion(
        value["region"],
        value["primary_region"],
        tuple(Replica(region, int(versions)) for region, versions in value["replicas"]),
        bool(value.get("moving", False)),
    )


def _import_parameters(row: tuple[Any, ...]) -> ImportParameters:
    with _decoding("import token of key", row[1], row[2]):
        return ImportParameters(
            row[0],
            row[1],
            row[2],
            bytes(row[3]),
            WrappingAlgorithm(row[4]),
            KeySpec(row[5]),
            _parse_time(row[6]),
        )


def _column_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, MultiRegion):
        return _multi_region_json(value)
    if isinstance(value, KeyPolicy):
        return _policy_json(value)
    return value


def _policy_json(policy: KeyPolicy) -> str:
    return json.dumps({"administrators": list(policy.administrators), "users": list(policy.users)})


def _iso(moment: datetime) -> str:
    """Fixed-width UTC text, so that SQL compares times by comparing strings."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _iso_or_none(moment: datetime | None) -> str | None:
    return _iso(moment) if moment is not None else None


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _tenant(row: tuple[str, ...]) -> Tenant:
    with _decoding("tenant", row[0], row[0]):
        return Tenant(
            row[0],
            row[1],
            row[2],
            TenantState(row[3]),
            _parse_time(row[4]),
            tuple(json.loads(row[5])),
            _parse_time(row[6]) if row[6] else None,
        )


def _version(row: tuple[Any, ...]) -> KeyVersion:
    with _decoding("version of key", row[0], row[1]):
        return KeyVersion(
            row[0],
            row[1],
            row[2],
            bytes(row[3]),
            _parse_time(row[4]),
            VersionState(row[5]),
            RotationType(row[6]) if row[6] else None,
        )


def _request_columns(request: ClientRequest | None) -> tuple[str | None, str | None]:
    return (request.token, request.fingerprint) if request else (None, None)


def _state(kind: type[_E], value: Any) -> _E | None:
    """A state column's value, or None when it holds something this hsmd does not know."""
    try:
        return kind(value)
    except ValueError:
        return None


def _blob(value: Any) -> bytes:
    """An object id column as bytes (a damaged row may hold text)."""
    return bytes(value) if isinstance(value, bytes | memoryview) else str(value).encode()


def _alias(row: tuple[str, ...]) -> Alias:
    with _decoding("alias", row[0], row[1]):
        return Alias(row[0], row[1], row[2], _parse_time(row[3]), _parse_time(row[4]))


@contextmanager
def _decoding(kind: str, tenant: str, name: str) -> Iterator[None]:
    """Turns a row that does not decode (a value this hsmd does not know, a broken time or
    policy) into DamagedRecord, naming what it belongs to."""
    try:
        yield
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise DamagedRecord(kind, tenant, str(name), f"{type(exc).__name__}: {exc}") from None
