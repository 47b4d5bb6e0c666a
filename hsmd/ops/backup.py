"""Online backup: a consistent snapshot of the daemon's state while it serves, and the check
that a snapshot is whole before it is restored (docs/operations.md#backup-and-restore).

At one point, with no token change in progress (Pkcs11Backend.frozen; calls that change no
token go on), the audit log is cut, the database is copied with SQLite's backup API, and every
token's directory is copied. The audit log's lines before the cut are copied after, with the
checkpoint file of that moment and the public key file. The master secret is not copied: it is
kept apart, and the manifest names it by a fingerprint only. The snapshot is made under a
`.partial` name and renamed once its manifest, with every file's size and SHA-256, is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from hsmd.audit.log import AuditLog
from hsmd.backend.softhsm_files import sync_directory
from hsmd.domain import Clock
from hsmd.errors import DataLoss, FailedPrecondition

FORMAT = "hsmd-backup-1"
# A token directory's name, as SoftHSM2 makes them: one path component, no dot first.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MANIFEST = "manifest.json"
DATABASE = "hsmd.db"
TOKENS = "tokens"
AUDIT_LOG = "audit.jsonl"
CHECKPOINT = "audit.jsonl.checkpoint"
PUBLIC_KEY = "audit.jsonl.pub.pem"


class _Database(Protocol):
    def copy_to(self, target: Path) -> None: ...
    def database_id(self) -> str: ...


class _Tokens(Protocol):
    """What a backup asks of the token backend (Pkcs11Backend)."""

    def frozen(self) -> AbstractContextManager[None]: ...
    def copy_tokens(self, target: Path) -> list[str]: ...
    def master_secret_fingerprint(self) -> str: ...


@dataclass(frozen=True)
class BackupReport:
    directory: Path
    created: datetime
    files: int
    bytes: int
    audit_sequence: int
    tokens: int


class BackupOps:
    def __init__(
        self,
        database: _Database,
        backend: _Tokens,
        audit: AuditLog,
        public_key_file: Path | None,
        directory: Path,
        clock: Clock,
    ) -> None:
        self._database = database
        self._backend = backend
        self._audit = audit
        self._public_key_file = public_key_file
        self._directory = directory
        self._clock = clock

    def take(self) -> BackupReport:
        """A new snapshot in the backup directory.

        Raises:
            FailedPrecondition: a snapshot of this second exists already.
        """
        created = self._clock.now()
        self._directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        name = f"hsmd-backup-{created.strftime('%Y%m%dT%H%M%SZ')}"
        target, staging = self._directory / name, self._directory / f"{name}.partial"
        if target.exists() or staging.exists():
            raise FailedPrecondition(f"backup {name} exists already; try again in a second")
        staging.mkdir(mode=0o700)
        try:
            with self._backend.frozen():
                # The cut first: a call's event follows its commit, so a change the copy
                # holds may lack its event (as after a crash), never the other way round.
                cut = self._audit.cut()
                self._database.copy_to(staging / DATABASE)
                tokens = self._backend.copy_tokens(staging / TOKENS)
            self._audit.copy_until(cut, staging / AUDIT_LOG)
            if cut.checkpoint is not None:
                _write(staging / CHECKPOINT, cut.checkpoint)
            if self._public_key_file is not None and self._public_key_file.exists():
                _write(staging / PUBLIC_KEY, self._public_key_file.read_bytes())
            files = _digests(staging)
            manifest = {
                "format": FORMAT,
                "created": created.isoformat(),
                "database_id": self._database.database_id(),
                "master_secret_fingerprint": self._backend.master_secret_fingerprint(),
                "audit": {"sequence": cut.sequence, "hash": cut.hash, "bytes": cut.end},
                "tokens": tokens,
                "files": _as_json(files),
            }
            _write(staging / MANIFEST, json.dumps(manifest, indent=2).encode() + b"\n")
            sync_directory(staging)
            staging.rename(target)
            sync_directory(self._directory)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return BackupReport(
            target,
            created,
            len(files),
            sum(entry.size for entry in files.values()),
            cut.sequence,
            len(tokens),
        )


def check_snapshot(directory: Path) -> dict[str, Any]:
    """The manifest of a snapshot whose files are all there, of the sizes and digests it
    records, and nothing else.

    Raises:
        DataLoss: the manifest is missing or not one of ours; a file is missing, changed or
            extra; the snapshot holds a symbolic link; or its token names are not the plain
            names of its token directories.
    """
    links = [path for path in directory.rglob("*") if path.is_symlink()]
    if links:
        raise DataLoss(f"{directory}: {links[0]} is a symbolic link; a snapshot holds none")
    try:
        manifest: dict[str, Any] = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise DataLoss(f"{directory / MANIFEST}: not a backup manifest ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise DataLoss(f"{directory}: not an {FORMAT} snapshot")
    found = _as_json(_digests(directory))
    recorded = manifest.get("files", {})
    for name in sorted(set(found) | set(recorded)):
        if name not in found:
            raise DataLoss(f"{directory}: {name} is missing")
        if name not in recorded:
            raise DataLoss(f"{directory}: {name} is not in the manifest")
        if found[name] != recorded[name]:
            raise DataLoss(f"{directory}: {name} does not match the manifest (changed or cut)")
    tokens = manifest.get("tokens", [])
    present = {entry.name for entry in (directory / TOKENS).iterdir() if entry.is_dir()}
    if not all(_PLAIN_NAME.fullmatch(str(name)) for name in tokens) or set(tokens) != present:
        raise DataLoss(f"{directory}: its manifest's tokens are not its token directories")
    return manifest


@dataclass(frozen=True)
class _Digest:
    size: int
    sha256: str


def _digests(directory: Path) -> dict[str, _Digest]:
    """Every regular file under directory but the manifest: its size and SHA-256."""
    digests: dict[str, _Digest] = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and not path.is_symlink() and path.name != MANIFEST:
            hasher = hashlib.sha256()
            with path.open("rb") as source:
                for chunk in iter(lambda: source.read(1 << 20), b""):
                    hasher.update(chunk)
            digests[path.relative_to(directory).as_posix()] = _Digest(
                path.stat().st_size, hasher.hexdigest()
            )
    return digests


def _as_json(digests: dict[str, _Digest]) -> dict[str, dict[str, object]]:
    return {name: {"bytes": d.size, "sha256": d.sha256} for name, d in digests.items()}


def _write(path: Path, data: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
