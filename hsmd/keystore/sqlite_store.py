"""The metadata store on SQLite: WAL journal, synchronous=FULL, one connection behind a lock.

An acknowledged write must survive kill -9, so every transaction is committed with a full sync
before the caller goes on. Every key method takes the tenant first and every query filters on
it, so one tenant's rows are unreachable from another's calls. The schema is versioned with
PRAGMA user_version and migrated forward at open. sqlite3 errors become StoreError here and
go no further.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hsmd.domain import (
    Alias,
    ImportParameters,
    Key,
    KeyOrigin,
    KeyPolicy,
    KeySpec,
    KeyState,
    KeyUsage,
    KeyVersion,
    RotationType,
    Tenant,
    TenantState,
    VersionState,
    WrappingAlgorithm,
)
from hsmd.errors import AlreadyExists, NotFound, StoreError

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
]

_KEY_COLUMNS = (
    "tenant, key_id, description, spec, usage, origin, state, created_at, primary_version,"
    " policy, rotation_period_days, next_rotation_at, deletion_at, exportable, valid_to,"
    " material_fingerprint"
)
_IMPORT_COLUMNS = "token, tenant, key_id, object_id, algorithm, wrapping_spec, expires_at"
_VERSION_COLUMNS = "tenant, key_id, version, object_id, created_at, state, rotation_type"
_TENANT_COLUMNS = "name, token_label, token_serial, state, created_at, admin_principals"
_ALIAS_COLUMNS = "tenant, name, key_id, created_at, updated_at"


class SqliteKeyStore:
    def __init__(self, path: Path) -> None:
        if not path.exists():
            path.touch(mode=0o600)
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the metadata database {path}: {exc}") from exc
        self._lock = threading.Lock()

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
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: all or nothing, committed with a full sync."""
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

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """Reads under the lock, so several queries see one consistent state."""
        with self._lock:
            try:
                yield self._db
            except sqlite3.Error as exc:
                raise StoreError(f"metadata store failure: {exc}") from exc

    # Tenants

    def add_tenant(
        self, name: str, token_label: str, created_at: datetime, admin_principals: Iterable[str]
    ) -> None:
        """Records a tenant in state CREATING. Raises AlreadyExists if the name is taken."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO tenants (name, token_label, state, created_at, admin_principals)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    name,
                    token_label,
                    TenantState.CREATING,
                    _iso(created_at),
                    json.dumps(list(admin_principals)),
                ),
            )

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
        return [_tenant(row) for row in rows]

    # Keys

    def add_key(self, key: Key, version: KeyVersion | None) -> None:
        """Records a new key, its tags and its first version (none for a key whose material
        will be imported) in one transaction."""
        with self._transaction() as db:
            db.execute(
                f"INSERT INTO keys ({_KEY_COLUMNS})"  # noqa: S608
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                ),
            )
            _write_tags(db, key.tenant, key.key_id, dict(key.tags), ())
            if version is not None:
                _insert_version(db, version)

    def update_key(self, tenant: str, key_id: str, **changes: Any) -> Key:
        """Sets columns of a key (state, description, policy, rotation_period_days,
        next_rotation_at, deletion_at) in one transaction and returns the key as it is now.

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

    def remove_key(self, tenant: str, key_id: str) -> None:
        """Deletes a key and its versions (the roll-back of an unfinished creation)."""
        with self._transaction() as db:
            db.execute("DELETE FROM keys WHERE tenant = ? AND key_id = ?", (tenant, key_id))

    def get_key(self, tenant: str, key_id: str) -> Key:
        """Raises NotFound if the tenant has no such key."""
        with self._read() as db:
            return _load_key(db, tenant, key_id)

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
            keys = [_load_key(db, tenant, row[1]) for row in rows[:limit]]
        next_cursor = rows[limit - 1][0] if len(rows) > limit else None
        return keys, next_cursor

    def keys_in_state(self, tenant: str, state: KeyState) -> list[Key]:
        with self._read() as db:
            rows = db.execute(
                "SELECT key_id FROM keys WHERE tenant = ? AND state = ?", (tenant, state)
            ).fetchall()
            return [_load_key(db, tenant, row[0]) for row in rows]

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
            return [_load_key(db, row[0], row[1]) for row in rows]

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

    def remove_material(self, tenant: str, key_id: str) -> list[KeyVersion]:
        """Forgets a key's imported material (PENDING_IMPORT again) and returns the versions
        whose objects the caller must now destroy."""
        with self._transaction() as db:
            rows = db.execute(
                f"SELECT {_VERSION_COLUMNS} FROM key_versions"  # noqa: S608
                " WHERE tenant = ? AND key_id = ?",
                (tenant, key_id),
            ).fetchall()
            db.execute("DELETE FROM key_versions WHERE tenant = ? AND key_id = ?", (tenant, key_id))
            db.execute(
                "UPDATE keys SET state = ?, valid_to = NULL WHERE tenant = ? AND key_id = ?",
                (KeyState.PENDING_IMPORT, tenant, key_id),
            )
        return [_version(row) for row in rows]

    def keys_expired(self, now: datetime) -> list[Key]:
        """Keys of every tenant whose imported material's valid_to has passed."""
        with self._read() as db:
            rows = db.execute(
                "SELECT tenant, key_id FROM keys WHERE state IN (?, ?) AND valid_to <= ?",
                (KeyState.ENABLED, KeyState.DISABLED, _iso(now)),
            ).fetchall()
            return [_load_key(db, row[0], row[1]) for row in rows]

    # Import parameters

    def add_import_parameters(self, parameters: ImportParameters) -> None:
        with self._transaction() as db:
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
        return [_import_parameters(row) for row in rows]

    def remove_import_parameters(self, token: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM import_parameters WHERE token = ?", (token,))

    def remove_version(self, version: KeyVersion) -> None:
        with self._transaction() as db:
            db.execute(
                "DELETE FROM key_versions WHERE tenant = ? AND key_id = ? AND version = ?",
                (version.tenant, version.key_id, version.version),
            )

    def get_version(self, tenant: str, key_id: str, version: int) -> KeyVersion:
        """Raises NotFound if the key has no usable version of that number."""
        with self._read() as db:
            row = db.execute(
                f"SELECT {_VERSION_COLUMNS} FROM key_versions"  # noqa: S608
                " WHERE tenant = ? AND key_id = ? AND version = ? AND state = ?",
                (tenant, key_id, version, VersionState.ENABLED),
            ).fetchone()
        if row is None:
            raise NotFound(f"key {key_id!r} has no version {version}")
        return _version(row)

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

    def versions_in_state(self, tenant: str, state: VersionState) -> list[KeyVersion]:
        with self._read() as db:
            rows = db.execute(
                f"SELECT {_VERSION_COLUMNS} FROM key_versions"  # noqa: S608
                " WHERE tenant = ? AND state = ?",
                (tenant, state),
            ).fetchall()
        return [_version(row) for row in rows]

    def object_ids(self, tenant: str) -> set[bytes]:
        """The CKA_ID of every version whose object should be in the tenant's token."""
        with self._read() as db:
            rows = db.execute(
                "SELECT object_id FROM key_versions WHERE tenant = ? AND state != ?"
                " UNION SELECT object_id FROM import_parameters WHERE tenant = ?",
                (tenant, VersionState.DESTROYED, tenant),
            ).fetchall()
        return {bytes(row[0]) for row in rows}

    # Aliases

    def add_alias(self, alias: Alias) -> None:
        """Raises AlreadyExists if the tenant has an alias of that name."""
        with self._transaction() as db:
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
    )


def _import_parameters(row: tuple[Any, ...]) -> ImportParameters:
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
    return Tenant(
        row[0],
        row[1],
        row[2],
        TenantState(row[3]),
        _parse_time(row[4]),
        tuple(json.loads(row[5])),
    )


def _version(row: tuple[Any, ...]) -> KeyVersion:
    return KeyVersion(
        row[0],
        row[1],
        row[2],
        bytes(row[3]),
        _parse_time(row[4]),
        VersionState(row[5]),
        RotationType(row[6]) if row[6] else None,
    )


def _alias(row: tuple[str, ...]) -> Alias:
    return Alias(row[0], row[1], row[2], _parse_time(row[3]), _parse_time(row[4]))
