"""What hsmd knows about SoftHSM2's file object store, and does to it from outside the library.

SoftHSM2 keeps each token in a directory under its token directory (named by a UUID that ends
with the token's serial) holding token.object and one <uuid>.object file per object. Facts this
module acts on (DESIGN §9):

- It never fsyncs: an acknowledged key could vanish in a power cut. TokenSync makes every
  change durable before it is acknowledged, with syncfs(2) on the token directory's file system
  (one call covers new and rewritten object files, token.object and the directory entries),
  shared by the callers waiting at the same moment, as the audit log shares its fsync.
- Two token directories with the same serial (a copied token) make C_Initialize abort the
  process inside SoftHSM2 (an assertion), so serials are checked here before the library loads.
- token.object starts with an 8-byte generation, then attributes as (type, kind, value): type
  and kind 8-byte big-endian integers; kind 1 a 1-byte boolean, 2 an 8-byte integer, 3 an 8-byte
  length and that many bytes. The label and serial are byte strings (CKA_OS_TOKENLABEL,
  CKA_OS_TOKENSERIAL); they are never encrypted, unlike the attributes of private objects.
- The owner mark (hsmd.repair) is a small JSON file at the top of the token directory, which
  SoftHSM2 ignores.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from hsmd.errors import StartupRefused, StorageFull, StorageUnavailable
from hsmd.repair import OwnerMark

log = logging.getLogger(__name__)

OWNER_MARK = "hsmd-owner.json"
GENERATED_CONF = "hsmd-softhsm2.conf"
DEFAULT_CONF = Path("/etc/softhsm/softhsm2.conf")
MIN_FREE_BYTES = 1 << 20

_TOKEN_LABEL = 0x80005349
_TOKEN_SERIAL = 0x8000534A
_BOOLEAN, _INTEGER, _BYTES = 1, 2, 3
_WORD = 8


@dataclass(frozen=True)
class TokenFiles:
    """One token's directory, with the label and serial its token.object holds."""

    directory: Path
    label: str
    serial: str


def token_dir_of(token_dir: Path | None, softhsm2_conf: Path | None) -> Path | None:
    """The token directory SoftHSM2 will use: the configured one, or the one its configuration
    file names (the settings' file, else $SOFTHSM2_CONF, else SoftHSM2's default)."""
    if token_dir is not None:
        return token_dir
    conf = softhsm2_conf or Path(os.environ.get("SOFTHSM2_CONF", DEFAULT_CONF))
    try:
        lines = conf.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        name, _, value = line.partition("=")
        if name.strip() == "directories.tokendir" and value.strip():
            return Path(value.strip())
    return None


def write_softhsm2_conf(token_dir: Path) -> Path:
    """A SoftHSM2 configuration naming token_dir by its absolute path, made at every start so
    a state directory that is moved or copied uses its own tokens."""
    path = token_dir / GENERATED_CONF
    path.write_text(
        f"directories.tokendir = {token_dir.resolve()}\n"
        "objectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n"
    )
    return path


def scan_tokens(token_dir: Path) -> list[TokenFiles]:
    """Every token directory with a readable label and serial; unreadable ones are logged
    (the library reports them as it can; their tenants answer UNAVAILABLE).

    Raises:
        StartupRefused: two directories hold the same serial (SoftHSM2 would abort).
    """
    found = []
    for entry in sorted(token_dir.iterdir()):
        token_object = entry / "token.object"
        if not token_object.is_file():
            continue
        try:
            attributes = _read_attributes(token_object.read_bytes())
            label = attributes[_TOKEN_LABEL].decode().rstrip()
            serial = attributes[_TOKEN_SERIAL].decode()
        except (OSError, ValueError, KeyError, UnicodeDecodeError) as exc:
            log.error("token directory %s: cannot read its label and serial (%s)", entry, exc)
            continue
        found.append(TokenFiles(entry, label, serial))
    by_serial: dict[str, list[TokenFiles]] = {}
    for token in found:
        by_serial.setdefault(token.serial, []).append(token)
    duplicates = [tokens for tokens in by_serial.values() if len(tokens) > 1]
    if duplicates:
        described = "; ".join(
            f"serial {tokens[0].serial} (label {tokens[0].label!r}) in "
            + " and ".join(str(token.directory) for token in tokens)
            for tokens in duplicates
        )
        raise StartupRefused(
            f"two token directories hold the same token ({described}). SoftHSM2 aborts on"
            f" duplicate serials; one is a copy. Move the copy out of {token_dir} and start again."
        )
    return found


def _read_attributes(data: bytes) -> dict[int, bytes]:
    """The byte-string attributes of a SoftHSM2 object file (others are skipped)."""
    attributes: dict[int, bytes] = {}
    offset = _WORD  # the generation
    while offset < len(data):
        kind_type, kind = _word(data, offset), _word(data, offset + _WORD)
        offset += 2 * _WORD
        if kind == _BOOLEAN:
            offset += 1
        elif kind == _INTEGER:
            offset += _WORD
        elif kind == _BYTES:
            size = _word(data, offset)
            offset += _WORD
            if offset + size > len(data):
                raise ValueError("an attribute runs past the end of the file")
            attributes[kind_type] = data[offset : offset + size]
            offset += size
        else:
            raise ValueError(f"attribute kind {kind} is unknown")
    return attributes


def _word(data: bytes, offset: int) -> int:
    if offset + _WORD > len(data):
        raise ValueError("the file ends inside an attribute")
    return int.from_bytes(data[offset : offset + _WORD], "big")


def read_owner_mark(token_dir: Path) -> OwnerMark | None:
    """The owner mark, None if there is none.

    Raises:
        StartupRefused: there is a mark but it cannot be read.
    """
    path = token_dir / OWNER_MARK
    try:
        fields = json.loads(path.read_text())
        return OwnerMark(str(fields["database_id"]), str(fields["database"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StartupRefused(
            f"the owner mark {path} cannot be read ({exc}); restore it, or remove it if this"
            " token directory belongs to this database"
        ) from None


def write_owner_mark(token_dir: Path, mark: OwnerMark) -> None:
    """Writes the mark durably: a temporary file, fsync, rename, fsync of the directory."""
    path = token_dir / OWNER_MARK
    temporary = path.with_suffix(".tmp")
    text = json.dumps({"database_id": mark.database_id, "database": mark.database_path})
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(descriptor, text.encode() + b"\n")
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    os.replace(temporary, path)
    directory = os.open(token_dir, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def storage_problem(path: Path, min_free_bytes: int = MIN_FREE_BYTES) -> Exception | None:
    """Why the file system under path cannot take a token change now, or None."""
    try:
        space = os.statvfs(path)
    except OSError as exc:
        return StorageUnavailable(f"token directory {path}: {exc.strerror}")
    if space.f_flag & os.ST_RDONLY:
        return StorageUnavailable(f"token directory {path} is on a read-only file system")
    if space.f_bavail * space.f_frsize < min_free_bytes:
        return StorageFull(f"token directory {path} has less than {min_free_bytes} bytes free")
    if not os.access(path, os.W_OK):
        return StorageUnavailable(f"token directory {path} is not writable")
    return None


class TokenSync:
    """Makes everything written under a directory durable before a caller goes on.

    sync() returns once a syncfs(2) that started after the call was made has completed. Callers
    arriving while one runs wait for the next, which one of them starts for all: under load
    that is one syncfs per group of changes, not per change.
    """

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._changed = threading.Condition(threading.Lock())
        self._started = 0  # syncs begun
        self._finished = 0  # syncs completed, in order
        self._syncing = False
        self._failure: Exception | None = None

    def sync(self) -> None:
        """Raises StorageUnavailable if the file system reports an error (EIO, ...)."""
        with self._changed:
            wanted = self._started + 1  # one that starts after this call
            while self._finished < wanted:
                if self._syncing:
                    self._changed.wait()
                    continue
                self._syncing = True
                self._started += 1
                number = self._started
                self._changed.release()
                try:
                    failure = self._syncfs()
                finally:
                    self._changed.acquire()
                    self._syncing = False
                    self._finished = number
                    self._failure = failure
                    self._changed.notify_all()
            # The latest sync covers this caller's changes; it alone tells whether they are
            # durable.
            if self._failure is not None:
                raise self._failure

    def _syncfs(self) -> Exception | None:
        if self._libc.syncfs(self._fd) == 0:
            return None
        code = ctypes.get_errno()
        log.error("syncfs of token directory %s failed: %s", self._directory, os.strerror(code))
        return StorageUnavailable(f"token directory {self._directory}: {os.strerror(code)}")

    def close(self) -> None:
        os.close(self._fd)


def copy_token(source: Path, target: Path) -> None:
    """Copies a token's directory (its regular files: token.object, the object and lock files)
    to target, which must not exist, and makes the copy durable."""
    target.mkdir(mode=0o700)
    for entry in sorted(source.iterdir()):
        if entry.is_file() and not entry.is_symlink():
            shutil.copyfile(entry, target / entry.name, follow_symlinks=False)
    sync_token(target)
    sync_directory(target.parent)


def sync_token(directory: Path) -> None:
    """fsyncs every file of a token's directory, then the directory: SoftHSM2 itself never
    does, and a moved token must survive a power cut before it is acknowledged."""
    for entry in directory.iterdir():
        if entry.is_file() and not entry.is_symlink():
            descriptor = os.open(entry, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
    sync_directory(directory)


def sync_directory(directory: Path) -> None:
    """fsyncs a directory, so the entries made or renamed in it survive a power cut."""
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
