"""The metadata store on SQLite: WAL journal, synchronous=FULL, one connection behind a lock.

An acknowledged write must survive kill -9, so every transaction is committed with a full sync
before the caller goes on. Every key method takes the tenant first and every query filters on
it, so one tenant's rows are unreachable from another's calls. sqlite3 errors become StoreError
here and go no further.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from hsmd.domain import Key, KeyOrigin, KeySpec, KeyState, KeyUsage, KeyVersion, Tenant, TenantState
from hsmd.errors import AlreadyExists, NotFound, StoreError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tenants (
    name          TEXT PRIMARY KEY,
    token_label   TEXT NOT NULL UNIQUE,
    token_serial  TEXT NOT NULL DEFAULT '',
    state         TEXT NOT NULL,
    created_at    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS keys (
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
CREATE TABLE IF NOT EXISTS key_versions (
    tenant      TEXT NOT NULL,
    key_id      TEXT NOT NULL,
    version     INTEGER NOT NULL,
    object_id   BLOB NOT NULL UNIQUE,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (tenant, key_id, version),
    FOREIGN KEY (tenant, key_id) REFERENCES keys(tenant, key_id) ON DELETE CASCADE
);
"""

_KEY_COLUMNS = (
    "tenant, key_id, description, spec, usage, origin, state, created_at, primary_version"
)


class SqliteKeyStore:
    def __init__(self, path: Path) -> None:
        if not path.exists():
            path.touch(mode=0o600)
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the metadata database {path}: {exc}") from exc
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.IntegrityError as exc:
                raise AlreadyExists("the resource exists already") from exc
            except sqlite3.Error as exc:
                raise StoreError(f"metadata store failure: {exc}") from exc

    # Tenants

    def add_tenant(self, name: str, token_label: str, created_at: datetime) -> None:
        """Records a tenant in state CREATING. Raises AlreadyExists if the name is taken."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO tenants (name, token_label, state, created_at) VALUES (?, ?, ?, ?)",
                (name, token_label, TenantState.CREATING, _iso(created_at)),
            )

    def activate_tenant(self, name: str, token_serial: str) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE tenants SET state = ?, token_serial = ? WHERE name = ?",
                (TenantState.ACTIVE, token_serial, name),
            )

    def remove_tenant(self, name: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM tenants WHERE name = ?", (name,))

    def get_tenant(self, name: str) -> Tenant | None:
        with self._transaction() as db:
            row = db.execute(
                "SELECT name, token_label, token_serial, state, created_at FROM tenants"
                " WHERE name = ?",
                (name,),
            ).fetchone()
        return _tenant(row) if row else None

    def list_tenants(self) -> list[Tenant]:
        with self._transaction() as db:
            rows = db.execute(
                "SELECT name, token_label, token_serial, state, created_at FROM tenants"
                " ORDER BY name"
            ).fetchall()
        return [_tenant(row) for row in rows]

    # Keys

    def add_key(self, key: Key, version: KeyVersion) -> None:
        """Records a new key and its first version in one transaction."""
        with self._transaction() as db:
            db.execute(
                f"INSERT INTO keys ({_KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
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
                ),
            )
            db.execute(
                "INSERT INTO key_versions (tenant, key_id, version, object_id, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    version.tenant,
                    version.key_id,
                    version.version,
                    version.object_id,
                    _iso(version.created_at),
                ),
            )

    def set_key_state(self, tenant: str, key_id: str, state: KeyState) -> None:
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE keys SET state = ? WHERE tenant = ? AND key_id = ?", (state, tenant, key_id)
            )
            if cursor.rowcount != 1:
                raise NotFound(f"key {key_id!r} not found")

    def remove_key(self, tenant: str, key_id: str) -> None:
        """Deletes a key and its versions (the roll-back of an unfinished creation)."""
        with self._transaction() as db:
            db.execute("DELETE FROM keys WHERE tenant = ? AND key_id = ?", (tenant, key_id))

    def get_key(self, tenant: str, key_id: str) -> Key:
        """Raises NotFound if the tenant has no such key."""
        with self._transaction() as db:
            row = db.execute(
                f"SELECT {_KEY_COLUMNS} FROM keys WHERE tenant = ? AND key_id = ?",  # noqa: S608
                (tenant, key_id),
            ).fetchone()
        if row is None:
            raise NotFound(f"key {key_id!r} not found")
        return _key(row)

    def list_keys(self, tenant: str, after: int, limit: int) -> tuple[list[Key], int | None]:
        """One page of keys in creation order, and the cursor of the next page (None at the end)."""
        with self._transaction() as db:
            rows = db.execute(
                f"SELECT seq, {_KEY_COLUMNS} FROM keys WHERE tenant = ? AND seq > ?"  # noqa: S608
                " ORDER BY seq LIMIT ?",
                (tenant, after, limit + 1),
            ).fetchall()
        keys = [_key(row[1:]) for row in rows[:limit]]
        next_cursor = rows[limit - 1][0] if len(rows) > limit else None
        return keys, next_cursor

    def keys_in_state(self, tenant: str, state: KeyState) -> list[Key]:
        with self._transaction() as db:
            rows = db.execute(
                f"SELECT {_KEY_COLUMNS} FROM keys WHERE tenant = ? AND state = ?",  # noqa: S608
                (tenant, state),
            ).fetchall()
        return [_key(row) for row in rows]

    def get_version(self, tenant: str, key_id: str, version: int) -> KeyVersion:
        """Raises NotFound if the key has no such version."""
        with self._transaction() as db:
            row = db.execute(
                "SELECT tenant, key_id, version, object_id, created_at FROM key_versions"
                " WHERE tenant = ? AND key_id = ? AND version = ?",
                (tenant, key_id, version),
            ).fetchone()
        if row is None:
            raise NotFound(f"key {key_id!r} has no version {version}")
        return KeyVersion(row[0], row[1], row[2], bytes(row[3]), _parse_time(row[4]))

    def versions(self, tenant: str, key_id: str) -> list[KeyVersion]:
        with self._transaction() as db:
            rows = db.execute(
                "SELECT tenant, key_id, version, object_id, created_at FROM key_versions"
                " WHERE tenant = ? AND key_id = ? ORDER BY version",
                (tenant, key_id),
            ).fetchall()
        return [KeyVersion(r[0], r[1], r[2], bytes(r[3]), _parse_time(r[4])) for r in rows]

    def object_ids(self, tenant: str) -> set[bytes]:
        """The CKA_ID of every version the tenant's metadata knows."""
        with self._transaction() as db:
            rows = db.execute(
                "SELECT object_id FROM key_versions WHERE tenant = ?", (tenant,)
            ).fetchall()
        return {bytes(row[0]) for row in rows}


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _tenant(row: tuple[str, str, str, str, str]) -> Tenant:
    return Tenant(row[0], row[1], row[2], TenantState(row[3]), _parse_time(row[4]))


def _key(row: tuple[str, ...]) -> Key:
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
    )
