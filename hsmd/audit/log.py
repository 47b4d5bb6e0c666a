"""The audit log file: append-only, hash-chained (events.py), durable before the reply.

Writing. One O_APPEND descriptor, opened once and locked with flock so a second daemon cannot
fork the chain. append() assigns the next sequence, writes the whole line with one write() and
returns only after an fsync that covers it. fsync is the cost (0.1-10 ms by disk), so it is
shared: callers write under one lock, then whoever finds no fsync running starts one for
everything written so far, and callers whose line an fsync already covered return without
their own. Under load that is one fsync per group of requests, not per event.

Fail closed. Any OSError (ENOSPC, EIO, EBADF, ...) raises AuditUnavailable (UNAVAILABLE at
the transport) and marks the log failed: every later append and pre-flight is refused until
the daemon restarts. After a failed write or fsync the daemon cannot know what reached the
disk (Linux may drop unsynced pages after an fsync error, and a later fsync then succeeds), so
chaining on would build on a line that may not be there; a restart reads the file's real tail.
A short write (disk full mid-line) is cut off again with ftruncate when possible.

The guard calls ensure_writable() before an operation, so an unwritable log stops the request
before anything changes. A window remains: the log can fail between the pre-flight and the
append, and then the operation has taken effect but the caller gets UNAVAILABLE and the event
is missing from the file. The event is then written to the process log instead (events hold
no secrets, so that is safe), for the operator to reconcile.

Starting. The head (sequence, hash) comes from the last line, read backwards from the end so
start-up does not depend on the log's size. A last line without its LF means a write was torn
(power loss, or a disk full before the cut-off above could run). Its event was never
acknowledged, since append returns only after the whole line is synced, but a deleted final
LF looks the same, and silently cutting an audit log would destroy evidence in that case. So
the daemon refuses to start and says which file, at which byte, and how to cut it after a look.

Reading. read() and verify() scan the file from the start through their own read-only
descriptor (after checking it is the same file as the one being written); only complete lines
count, so an append in flight is never half-seen. That is O(size) per page; an index of
sequence to offset is the next step when logs grow. verify() also compares the file with the
head this process wrote, so a tail cut off while the daemon runs is reported; one cut while it
is stopped is not (the file's own last line becomes the head), nor is a rewrite of the whole
chain from some line on: that needs the head anchored outside the file (future work).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, NoReturn

from hsmd.audit.events import (
    GENESIS_HASH,
    AuditEvent,
    MalformedEvent,
    RecordedEvent,
    chain,
    compute_hash,
    decode_line,
    encode_line,
)
from hsmd.errors import BackendUnavailable, InternalError, InvalidArgument

log = logging.getLogger(__name__)

_TAIL_CHUNK = 4096
DEFAULT_MIN_FREE_BYTES = 1 << 20


class AuditUnavailable(BackendUnavailable):
    """The audit log cannot take an event now; the request fails closed (UNAVAILABLE)."""


class AuditCorrupt(InternalError):
    """The log file does not hold what the daemon wrote; an operator has to look at it."""


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of walking the chain; first_broken_position is a 1-based line, 0 if valid."""

    valid: bool
    events_checked: int
    first_broken_position: int
    problem: str


class AuditLog:
    """One audit log file, written by one process; thread-safe.

    Raises (on construction):
        AuditUnavailable: the file cannot be opened or created, or another process holds it.
        AuditCorrupt: its last line is incomplete or not a valid event.
    """

    def __init__(self, path: Path, *, min_free_bytes: int = DEFAULT_MIN_FREE_BYTES) -> None:
        self._path = path
        self._min_free_bytes = min_free_bytes
        self._fd = _open_for_append(path)
        try:
            self._head_sequence, self._head_hash = _recover_head(path, self._fd)
        except BaseException:
            os.close(self._fd)
            raise
        # Lock order: _write_lock, then _synced. _write_lock guards the head and the write;
        # _synced guards everything below it and is where callers wait for an fsync.
        self._write_lock = threading.Lock()
        self._synced = threading.Condition(threading.Lock())
        self._written = self._head_sequence  # last sequence written to the file
        self._durable = self._head_sequence  # last sequence covered by a completed fsync
        self._syncing = False
        self._failure: str | None = None
        self._closed = False

    @property
    def path(self) -> Path:
        return self._path

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def ensure_writable(self) -> None:
        """Cheap pre-flight before an operation runs: a few syscalls, no write.

        Raises:
            AuditUnavailable: the log is failed or closed, its descriptor is unusable, the path
                no longer names the open file (moved, deleted, replaced), or the disk has less
                than min_free_bytes left. Moving the same file back makes it pass again.
        """
        reason = self._unusable_reason()
        if reason is not None:
            raise AuditUnavailable(f"audit log unavailable: {self._path}: {reason}")

    def append(self, event: AuditEvent) -> RecordedEvent:
        """Chains the event after the head and returns once it is on disk.

        Raises:
            AuditUnavailable: it could not be written or synced, or the log failed or was closed
                before; the log then refuses every further event until restart.
        """
        with self._write_lock:
            if self._closed or self._failure is not None:
                self._lost(encode_line(chain(event, 0, GENESIS_HASH)))
                raise AuditUnavailable(
                    f"audit log unavailable: {self._path}: {self._failure or 'closed'}"
                )
            record = chain(event, self._head_sequence + 1, self._head_hash)
            line = encode_line(record)
            self._write(line)
            self._head_sequence, self._head_hash = record.sequence, record.hash
            with self._synced:
                self._written = record.sequence
        self._wait_durable(record.sequence, line)
        return record

    def read(
        self,
        after_sequence: int = 0,
        limit: int = 100,
        tenant: str | None = None,
        key_id: str | None = None,
    ) -> tuple[list[RecordedEvent], int | None]:
        """Events with sequence > after_sequence, in order, filtered, at most limit of them.

        tenant=None means every tenant (operators); key_id=None means any key. Returns the
        events and the after_sequence of the next page, or None when no matching event
        follows.

        Raises:
            InvalidArgument: after_sequence < 0 or limit < 1.
            AuditUnavailable: the log is closed or the path no longer names it.
            AuditCorrupt: a line is not a valid event or sits at the wrong position.
        """
        if after_sequence < 0:
            raise InvalidArgument("after_sequence must not be negative")
        if limit < 1:
            raise InvalidArgument("limit must be at least 1")
        found: list[RecordedEvent] = []
        with self._reader() as reader:
            for position, raw in enumerate(_complete_lines(reader), start=1):
                # A valid log has sequence = line number (verify checks it), so earlier pages
                # are skipped without parsing.
                if position <= after_sequence:
                    continue
                try:
                    record = decode_line(raw)
                except MalformedEvent as exc:
                    raise AuditCorrupt(
                        f"audit log {self._path} line {position} is not a valid event: {exc}"
                    ) from None
                if record.sequence != position:
                    raise AuditCorrupt(
                        f"audit log {self._path} line {position} holds sequence {record.sequence}"
                    )
                if tenant is not None and record.event.tenant != tenant:
                    continue
                if key_id is not None and record.event.key_id != key_id:
                    continue
                if len(found) == limit:
                    return found, found[-1].sequence
                found.append(record)
        return found, None

    def verify(self) -> VerifyResult:
        """Walks the whole chain and reports the first line that breaks it.

        Raises:
            AuditUnavailable: the log is closed or the path no longer names it.
        """
        with self._write_lock:
            head_sequence, head_hash = self._head_sequence, self._head_hash
        running = GENESIS_HASH
        checked = 0
        with self._reader() as reader:
            for position, raw in enumerate(reader, start=1):
                if not raw.endswith(b"\n"):
                    # Past the head and with the log healthy this is an append in flight.
                    if position <= head_sequence or self._failure is not None:
                        return _broken(position, "the line is incomplete (a torn write)")
                    break
                try:
                    record = _check_line(raw, position, running)
                except _Broken as exc:
                    return _broken(position, str(exc))
                if position == head_sequence and record.hash != head_hash:
                    return _broken(
                        position, "differs from the event this process wrote there (rewritten)"
                    )
                running = record.hash
                checked = position
        if checked < head_sequence:
            return _broken(
                checked + 1,
                f"log truncated: it ends after event {checked}, "
                f"but this process wrote up to event {head_sequence}",
            )
        return VerifyResult(True, checked, 0, "")

    def close(self) -> None:
        """Syncs what was written and releases the file (and its lock). Idempotent."""
        with self._write_lock, self._synced:
            while self._syncing:
                self._synced.wait()
            if self._closed:
                return
            self._closed = True
            try:
                os.fsync(self._fd)
                self._durable = self._written
            except OSError as exc:
                self._failure = f"fsync at close failed: {exc.strerror}"
                log.error("audit log %s: %s", self._path, self._failure)
            self._synced.notify_all()
            try:
                os.close(self._fd)
            except OSError as exc:
                log.error("audit log %s: close failed: %s", self._path, exc.strerror)

    def _write(self, line: bytes) -> None:
        try:
            written = os.write(self._fd, line)
        except OSError as exc:
            self._fail(f"write failed: {exc.strerror}", line)
        if written != len(line):
            self._cut_fragment(written)
            self._fail(f"short write, {written} of {len(line)} bytes", line)

    def _cut_fragment(self, written: int) -> None:
        # We hold the write lock and the flock, so the last `written` bytes are this line's.
        try:
            size = os.fstat(self._fd).st_size
            os.ftruncate(self._fd, size - written)
            os.fsync(self._fd)
        except OSError as exc:
            log.error(
                "audit log %s: cannot cut the %d-byte torn line (%s); start-up will refuse it",
                self._path,
                written,
                exc.strerror,
            )

    def _wait_durable(self, sequence: int, line: bytes) -> None:
        with self._synced:
            while True:
                if self._durable >= sequence:
                    return
                if self._failure is not None or self._closed:
                    self._lost(line)
                    raise AuditUnavailable(
                        f"audit log unavailable: {self._path}: {self._failure or 'closed'}"
                    )
                if not self._syncing:
                    break
                self._synced.wait()
            # This caller syncs for everyone who has written so far.
            self._syncing = True
            target = self._written
        try:
            os.fsync(self._fd)
            failure = None
        except OSError as exc:
            failure = f"fsync failed: {exc.strerror}"
        with self._synced:
            self._syncing = False
            if failure is None:
                self._durable = max(self._durable, target)
            else:
                self._failure = failure
            self._synced.notify_all()
        if failure is not None:
            self._fail(failure, line)

    def _fail(self, reason: str, line: bytes) -> NoReturn:
        with self._synced:
            if self._failure is None:
                self._failure = reason
            self._synced.notify_all()
        log.error(
            "audit log %s: %s; every further event is refused until restart", self._path, reason
        )
        self._lost(line)
        raise AuditUnavailable(f"audit log unavailable: {self._path}: {reason}")

    def _lost(self, line: bytes) -> None:
        log.error("audit event not durable: %s", line.decode("utf-8").rstrip("\n"))

    def _unusable_reason(self) -> str | None:
        if self._closed:
            return "closed"
        if self._failure is not None:
            return self._failure
        try:
            open_file = os.fstat(self._fd)
        except OSError as exc:
            return f"descriptor unusable: {exc.strerror}"
        try:
            named = os.stat(self._path)
        except FileNotFoundError:
            return "the path is gone (moved or deleted)"
        except OSError as exc:
            return f"cannot stat the path: {exc.strerror}"
        if (named.st_dev, named.st_ino) != (open_file.st_dev, open_file.st_ino):
            return "the path names another file (the log was moved or replaced)"
        try:
            space = os.fstatvfs(self._fd)
        except OSError as exc:
            return f"cannot stat the file system: {exc.strerror}"
        if space.f_bavail * space.f_frsize < self._min_free_bytes:
            return f"less than {self._min_free_bytes} bytes free"
        return None

    @contextmanager
    def _reader(self) -> Iterator[BinaryIO]:
        """A read-only handle on the file being written, or AuditUnavailable."""
        if self._closed:
            raise AuditUnavailable(f"audit log unavailable: {self._path}: closed")
        try:
            reader = self._path.open("rb")
        except OSError as exc:
            raise AuditUnavailable(
                f"audit log unavailable: {self._path}: cannot open: {exc.strerror}"
            ) from None
        with reader:
            try:
                same = _same_file(os.fstat(reader.fileno()), os.fstat(self._fd))
            except OSError as exc:
                raise AuditUnavailable(
                    f"audit log unavailable: {self._path}: {exc.strerror}"
                ) from None
            if not same:
                raise AuditUnavailable(
                    f"audit log unavailable: {self._path}: the path names another file"
                )
            yield reader


def _open_for_append(path: Path) -> int:
    # O_NONBLOCK only so that a FIFO at the path fails instead of hanging; regular files
    # ignore it.
    flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)
            created = True
        except FileExistsError:
            fd = os.open(path, flags)
            created = False
    except OSError as exc:
        raise AuditUnavailable(f"cannot open the audit log {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise AuditUnavailable(f"the audit log {path} is not a regular file")
        if info.st_mode & 0o077:
            log.warning("audit log %s is readable by others (mode %o)", path, info.st_mode & 0o777)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AuditUnavailable(
                f"the audit log {path} is in use by another process or AuditLog"
            ) from None
        if created:
            # The new name must survive a crash too, not only the data written under it.
            _fsync_directory(path.parent)
    except OSError as exc:
        os.close(fd)
        raise AuditUnavailable(f"cannot open the audit log {path}: {exc.strerror}") from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _recover_head(path: Path, append_fd: int) -> tuple[int, str]:
    try:
        reader = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise AuditUnavailable(f"cannot read the audit log {path}: {exc.strerror}") from None
    try:
        info = os.fstat(reader)
        if not _same_file(info, os.fstat(append_fd)):
            raise AuditUnavailable(f"the audit log {path} was replaced while opening it")
        size = info.st_size
        if size == 0:
            return 0, GENESIS_HASH
        complete = os.pread(reader, 1, size - 1) == b"\n"
        start, last = _last_line(reader, size if not complete else size - 1)
    except OSError as exc:
        raise AuditUnavailable(f"cannot read the audit log {path}: {exc.strerror}") from None
    finally:
        os.close(reader)
    if not complete:
        raise AuditCorrupt(
            f"the audit log {path} ends with an incomplete line ({size - start} bytes at byte "
            f"{start}): a write was torn. Its event was never acknowledged, but hsmd cannot "
            f"tell a torn write from a removed line end, so it does not cut the file itself. "
            f"Look at it, keep a copy, then cut it (truncate -s {start} {path}) and start again."
        )
    try:
        record = decode_line(last)
    except MalformedEvent as exc:
        raise AuditCorrupt(
            f"the last line of the audit log {path} (at byte {start}) is not a valid event: {exc}"
        ) from None
    if compute_hash(record.event, record.sequence, record.previous_hash) != record.hash:
        raise AuditCorrupt(f"the last line of the audit log {path} does not match its hash")
    return record.sequence, record.hash


def _last_line(fd: int, end: int) -> tuple[int, bytes]:
    """The offset and bytes of the line that ends at `end` (exclusive), read backwards."""
    chunks: list[bytes] = []
    position = end
    while position > 0:
        start = max(0, position - _TAIL_CHUNK)
        chunk = os.pread(fd, position - start, start)
        if len(chunk) != position - start:
            raise OSError(errno.EIO, "the file shrank while reading its tail")
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            chunks.append(chunk[newline + 1 :])
            return start + newline + 1, b"".join(reversed(chunks))
        chunks.append(chunk)
        position = start
    return 0, b"".join(reversed(chunks))


def _complete_lines(reader: BinaryIO) -> Iterator[bytes]:
    for raw in reader:
        if not raw.endswith(b"\n"):
            return  # an append in flight
        yield raw


class _Broken(Exception):
    """Why a line breaks the chain; verify() turns it into a VerifyResult."""


def _check_line(raw: bytes, position: int, previous_hash: str) -> RecordedEvent:
    try:
        record = decode_line(raw)
    except MalformedEvent as exc:
        raise _Broken(f"not a valid event: {exc}") from None
    if record.sequence != position:
        raise _Broken(f"holds sequence {record.sequence} (a line was deleted, added or moved)")
    if record.previous_hash != previous_hash:
        raise _Broken("previous_hash is not the hash of the line before (deleted or moved)")
    if compute_hash(record.event, record.sequence, record.previous_hash) != record.hash:
        raise _Broken("the hash does not match the event (the line was edited)")
    return record


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _broken(position: int, problem: str) -> VerifyResult:
    return VerifyResult(False, position - 1, position, problem)
