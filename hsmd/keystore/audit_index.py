"""The audit index (hsmd/audit/index.py) in a small SQLite file of its own beside the log.

Separate from the metadata database: it is derived data, rebuilt from the log whenever it does
not match, so it is written with synchronous=NORMAL (a kill -9 loses nothing committed; a power
cut may lose the last commits, which the catch-up from the log puts back) and a file that does
not open as this schema is deleted and made again. Key ids are stored as a 16-byte SHA-256
prefix: the key of an old, unbounded event costs no more than any other, and the log's reader
compares the real key id of every line it returns.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from hsmd.audit.errors import AuditIndexFailed
from hsmd.audit.index import IndexedLine, LineLocation

log = logging.getLogger(__name__)

_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE events (
    sequence INTEGER PRIMARY KEY,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    tenant TEXT NOT NULL,
    key_hash BLOB NOT NULL
);
CREATE INDEX events_by_tenant_key ON events (tenant, key_hash, sequence);
CREATE INDEX events_by_tenant ON events (tenant, sequence);
CREATE INDEX events_by_key ON events (key_hash, sequence);
CREATE TABLE last_line (
    only INTEGER PRIMARY KEY CHECK (only = 1),
    sequence INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    hash TEXT NOT NULL,
    tenant TEXT,
    key_id TEXT NOT NULL
);
"""
_SIDE_FILES = ("-wal", "-shm", "-journal")


class SqliteAuditIndex:
    """An AuditIndex in SQLite; thread-safe (one connection behind a lock).

    Raises (on construction):
        AuditIndexFailed: the file can be neither opened nor made again.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        try:
            self._db = _open(path)
        except sqlite3.DatabaseError as exc:
            log.warning("audit index %s is damaged (%s); building it again from the log", path, exc)
            self._remove_files()
            try:
                self._db = _open(path)
            except sqlite3.Error as again:
                raise AuditIndexFailed(f"cannot make the audit index {path}: {again}") from None
        except sqlite3.Error as exc:
            raise AuditIndexFailed(f"cannot open the audit index {path}: {exc}") from None

    @property
    def path(self) -> Path:
        return self._path

    def last(self) -> IndexedLine | None:
        with self._using() as db:
            row = db.execute(
                "SELECT sequence, offset, length, hash, tenant, key_id FROM last_line"
            ).fetchone()
        return IndexedLine(*row) if row else None

    def add(self, lines: Sequence[IndexedLine]) -> None:
        if not lines:
            return
        events = [
            (line.sequence, line.offset, line.length, line.tenant, _key_hash(line.key_id))
            for line in lines
            if line.tenant is not None
        ]
        last = lines[-1]
        with self._writing() as db:
            db.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?)", events)
            db.execute(
                "INSERT OR REPLACE INTO last_line VALUES (1, ?, ?, ?, ?, ?, ?)",
                (last.sequence, last.offset, last.length, last.hash, last.tenant, last.key_id),
            )

    def find(
        self, after_sequence: int, limit: int, tenant: str | None, key_id: str | None
    ) -> list[LineLocation]:
        conditions, parameters = ["sequence > ?"], [after_sequence]
        if tenant is not None:
            conditions.append("tenant = ?")
            parameters.append(tenant)  # type: ignore[arg-type]
        if key_id is not None:
            conditions.append("key_hash = ?")
            parameters.append(_key_hash(key_id))  # type: ignore[arg-type]
        query = (
            f"SELECT sequence, offset, length FROM events WHERE {' AND '.join(conditions)}"  # noqa: S608 - fixed fragments
            " ORDER BY sequence LIMIT ?"
        )
        with self._using() as db:
            rows = db.execute(query, [*parameters, limit]).fetchall()
        return [LineLocation(*row) for row in rows]

    def clear(self) -> None:
        with self._writing() as db:
            db.execute("DELETE FROM events")
            db.execute("DELETE FROM last_line")

    def close(self) -> None:
        """Idempotent."""
        with self._lock:
            self._db.close()

    @contextmanager
    def _using(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._db
            except sqlite3.Error as exc:
                raise AuditIndexFailed(f"audit index {self._path}: {exc}") from None

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """One transaction: all of it or none of it."""
        with self._using() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _remove_files(self) -> None:
        for name in ("", *_SIDE_FILES):
            self._path.with_name(self._path.name + name).unlink(missing_ok=True)


def _open(path: Path) -> sqlite3.Connection:
    """Opens the index, making its schema in a new file; DatabaseError if it is not ours."""
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            db.executescript(f"BEGIN; {_SCHEMA} PRAGMA user_version = {_SCHEMA_VERSION}; COMMIT;")
        elif version != _SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"schema version {version}, expected {_SCHEMA_VERSION}")
        path.chmod(0o600)
    except BaseException:
        db.close()
        raise
    return db


def _key_hash(key_id: str) -> bytes:
    return hashlib.sha256(key_id.encode("utf-8", "surrogatepass")).digest()[:16]
