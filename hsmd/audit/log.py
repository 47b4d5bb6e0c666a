"""The audit log file: append-only, hash-chained (events.py), durable before the reply.

Writing. One O_APPEND descriptor, opened once and locked with flock so a second daemon cannot
fork the chain. append() assigns the next sequence, writes the whole line with one write() and
returns only after an fsync that covers it. fsync is the cost (0.1-10 ms by disk), so it is
shared: callers write under one lock, then whoever finds no fsync running starts one for
everything written so far, and callers whose line an fsync already covered return without
their own. Under load that is one fsync per group of requests, not per event. With a clock,
append stamps each event under the write lock, so the file's order and its times agree unless
the clock itself goes back (which the verifier reports).

Before each write the file's size must be what this process wrote (one fstat): a file cut or
appended to by someone else is never written to again, so the chain is not broken for good.

Checkpoints (checkpoint.py). With a CheckpointSigner, a thread signs the head every
`every_events` events or `interval_seconds` after the first unsigned event, whichever comes
first, and at close. It signs outside the write lock (the token may be busy with another
tenant's work, and appends must not wait for it), then appends the checkpoint line, waits for
it to be durable, and only then replaces the checkpoint file beside the log. Nothing of this
is on a request's path: an append never signs and never waits for more than its own fsync.
At start, the log is checked against the checkpoint file with two preads and a signature
check (check_anchor), so start-up does not depend on the log's size.

Fail closed. Any OSError (ENOSPC, EIO, EBADF, ...) raises AuditUnavailable (UNAVAILABLE at
the transport) and marks the log failed: every later append and pre-flight is refused until
the daemon restarts. After a failed write or fsync the daemon cannot know what reached the
disk (Linux may drop unsynced pages after an fsync error, and a later fsync then succeeds), so
chaining on would build on a line that may not be there; a restart reads the file's real tail.
A short write (disk full mid-line) is cut off again with ftruncate when possible. A break found
by verify(), read(), the pre-flight (a file shorter than what was written) or a write (a file
of the wrong size) marks the log failed the same way, with one ERROR line: nothing is appended
to a log that no longer holds what the daemon wrote, until an operator restores it or archives
it (`hsmd audit reset`) and restarts.

The guard calls ensure_writable() before an operation, so an unwritable log stops the request
before anything changes. A window remains: the log can fail between the pre-flight and the
append, and then the operation has taken effect but the caller gets UNAVAILABLE and the event
is missing from the file. The event is then written to the process log instead (events hold
no secrets, so that is safe), for the operator to reconcile.

Starting. The head (sequence, hash) comes from the last line, read backwards from the end so
start-up does not depend on the log's size. A last line without its LF means a write was torn
(a crash or power loss, or a disk full before the cut-off above could run). Its event was never
acknowledged, since append returns only after the whole line is synced. A deleted final LF
would look the same, but only after the last checkpoint, where nothing is protected anyway:
so, once the complete lines have been checked against the checkpoint, the fragment is moved
to `<log>.torn-<time>` beside the log (kept for the operator) and cut, and a WARNING says so.
Refusing to start instead made every power cut an operator's job.

Reading. read() finds a page in the index (index.py: each event's offset and length by
sequence, tenant and key) and reads just those lines, through its own read-only descriptor
(after checking it is the same file as the one being written), so a page costs the same at any
size of log, and a tenant or key filter reads only that tenant's or key's lines. Each line read
must hold the sequence, tenant and key its entry says, or the log is treated as changed
underneath (AuditCorrupt, as verify would find). The log collects the entries of the lines it
writes in memory and adds them to the index in batches (a full batch after an append, and
everything before a read and at close), so an append does not wait for the index. At start it
indexes what the index lacks: the lines after the last one the index holds (after a kill -9,
the entries still in memory), or the whole log when that last line does not match the file
(index.py). An index that fails leaves the log writable; only reads are refused (UNAVAILABLE)
until a restart builds the index again.

verify() scans the file from the start; only complete lines count, so an append in flight is
never half-seen. verify() (verify.py) also compares the
file with the head this process wrote and with the checkpoint file, so a tail cut off while
the daemon runs or while it is stopped is reported, and so is a rewrite of the chain up to the
last checkpoint. Lines after the last checkpoint can still be rewritten unseen by someone who
also holds the checkpoint file: keep a copy of it elsewhere (docs/security.md).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, NoReturn, Protocol

from hsmd import metrics
from hsmd.audit.checkpoint import (
    Checkpointing,
    check_anchor,
    fingerprint,
    publish_public_key,
    read_checkpoint_file,
    signature_algorithm,
    signature_valid,
    write_atomically,
)
from hsmd.audit.errors import AuditBroken, AuditCorrupt, AuditIndexFailed, AuditUnavailable
from hsmd.audit.events import (
    GENESIS_HASH,
    MAX_CHECKPOINT_LAG,
    AuditEvent,
    CheckpointRecord,
    CheckpointStatement,
    MalformedEvent,
    RecordedEvent,
    ResetRecord,
    chain_line,
    decode_record,
    encode_record,
    place_checkpoint,
    record_hash,
    reset_record,
)
from hsmd.audit.index import AuditIndex, IndexedLine, MemoryAuditIndex
from hsmd.audit.verify import CheckpointFile, VerifyResult, verify_lines
from hsmd.domain import Clock
from hsmd.errors import InternalError, InvalidArgument

__all__ = [
    "Appended",
    "AuditBroken",
    "AuditCorrupt",
    "AuditLog",
    "AuditSink",
    "AuditUnavailable",
    "VerifyResult",
    "Written",
]

log = logging.getLogger(__name__)

_TAIL_CHUNK = 4096
DEFAULT_MIN_FREE_BYTES = 1 << 20
# Entries collected before an append hands them to the index, and lines per index write when
# catching up at start.
_INDEX_BATCH = 256
_CATCH_UP_BATCH = 10_000
# A sync leader stops waiting for the calls at work once no line has come for this long: a
# call that is slow (an RSA-4096 signature) then costs the others this, not the whole window.
# About one call's CPU time here, so the lines of a round of concurrent calls still gather.
GATHER_QUIET_SECONDS = 0.001


@dataclass(frozen=True)
class Appended:
    """An appended event and the bytes its line added to the file (for per-tenant audit
    volume)."""

    record: RecordedEvent
    size: int


class Written(Protocol):
    """What an AuditSink says of an event it made durable."""

    @property
    def size(self) -> int:
        """The bytes its line added to the log (a tenant's audit volume counts them)."""


class AuditSink(Protocol):
    """Where a request guard writes its events: this process's AuditLog, or, in a worker
    process, the coordinator's log through the relay (hsmd/relay.py)."""

    def ensure_writable(self, *, check_length: bool = True) -> None: ...
    def append(self, event: AuditEvent) -> Written: ...
    def append_many(self, events: Sequence[AuditEvent]) -> Sequence[Written]: ...


# A backup copies the log in pieces of this size.
_COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class AuditCut:
    """A point of the log that a backup copies: the bytes before `end` (whole lines, the last
    one of `sequence` and `hash`) and the checkpoint file as it was then, which names a line
    before the cut (None: no checkpoint yet)."""

    end: int
    sequence: int
    hash: str
    checkpoint: bytes | None


@dataclass(frozen=True)
class _Tail:
    """Where the log ends: its last line's sequence, hash and offset, and its size."""

    sequence: int
    hash: str
    offset: int
    size: int


class AuditLog:
    """One audit log file, written by one process; thread-safe.

    clock: when given, each event's time is taken from it under the write lock.
    checkpoints: when given, the log signs checkpoints and keeps the files beside it.
    index: where reads find their lines (index.py); the log brings it up to date at open and
        closes it. Without one, an index in memory is built from the whole log at open.

    Raises (on construction):
        AuditUnavailable: the file cannot be opened or created, or another process holds it.
        AuditCorrupt: its last complete line is not a valid record.
        AuditBroken: the log does not match its checkpoint file, or the public key file holds
            another key (only with checkpoints).
    """

    def __init__(
        self,
        path: Path,
        *,
        min_free_bytes: int = DEFAULT_MIN_FREE_BYTES,
        clock: Clock | None = None,
        checkpoints: Checkpointing | None = None,
        index: AuditIndex | None = None,
    ) -> None:
        self._path = path
        self._index: AuditIndex = index if index is not None else MemoryAuditIndex()
        self._min_free_bytes = min_free_bytes
        self._clock = clock
        self._checkpointing = checkpoints
        self._public_key: bytes | None = None
        self._algorithm = ""
        # The last checkpoint known: the line it signs, its own line, and the line the
        # checkpoint file holds (0: none). Guarded by _write_lock.
        self._signed_through = 0
        self._checkpoint_line = 0
        self._file_sequence = 0
        self._fd = _open_for_append(path)
        try:
            tail = self._open_checks(path, checkpoints)
        except BaseException:
            os.close(self._fd)
            raise
        self._head_sequence, self._head_hash = tail.sequence, tail.hash
        self._head_offset, self._end = tail.offset, tail.size
        # Lock order: _checkpoint_lock, then _write_lock, then _synced. _write_lock guards the
        # head and the write; _synced guards everything below it and is where callers wait for
        # an fsync; _checkpoint_lock keeps one checkpoint (sign, append, file) at a time.
        self._write_lock = threading.Lock()
        synced_lock = threading.Lock()
        self._synced = threading.Condition(synced_lock)
        # Group commit (see expect_appends): the sync leader waits on _all_written, under
        # _synced's lock, for the lines of the calls in flight.
        self._all_written = threading.Condition(synced_lock)
        self._working: Callable[[], int] | None = None
        self._gather_seconds = 0.0
        self._gathering = False
        self._checkpoint_lock = threading.Lock()
        self._wake = threading.Condition(self._write_lock)
        self._written = self._head_sequence  # last sequence written to the file
        self._durable = self._head_sequence  # last sequence covered by a completed fsync
        self._syncing = False
        self._failure: str | None = None
        self._closed = False
        self._stopping = False
        self._first_unsigned_at: float | None = time.monotonic() if self._unsigned() else None
        self._retry_at = 0.0
        # Lock order: _index_lock before the others; it keeps the index's entries in order.
        self._index_lock = threading.Lock()
        self._index_pending: list[IndexedLine] = []  # guarded by _write_lock
        self._index_failure: str | None = None
        try:
            self._catch_up_index()
        except BaseException:
            os.close(self._fd)
            raise
        self._checkpointer: threading.Thread | None = None
        if checkpoints is not None:
            self._checkpointer = threading.Thread(
                target=self._run_checkpoints, name="hsmd-audit-checkpoints", daemon=True
            )
            self._checkpointer.start()

    def _open_checks(self, path: Path, checkpoints: Checkpointing | None) -> _Tail:
        try:
            reader = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise AuditUnavailable(f"cannot read the audit log {path}: {exc.strerror}") from None
        try:
            try:
                info = os.fstat(reader)
                if not _same_file(info, os.fstat(self._fd)):
                    raise AuditUnavailable(f"the audit log {path} was replaced while opening it")
            except OSError as exc:
                raise AuditUnavailable(
                    f"cannot read the audit log {path}: {exc.strerror}"
                ) from None
            try:
                torn = _torn_tail(reader, info.st_size)
            except OSError as exc:
                raise AuditUnavailable(
                    f"cannot read the audit log {path}: {exc.strerror}"
                ) from None
            tail = _recover_head(path, reader, torn.start if torn else info.st_size)
            if checkpoints is not None:
                self._open_checkpoints(path, reader, tail, checkpoints)
            if torn is not None:
                self._set_aside(torn)
            return tail
        finally:
            os.close(reader)

    def _set_aside(self, torn: _TornTail) -> None:
        """Moves a torn last line out of the log, into a file of its own beside it.

        It is the remains of a write cut short by a crash or power loss: append returns only
        once the whole line is synced, so its event was never acknowledged. The lines before it
        have been checked against the checkpoint already, and a line after the last checkpoint
        is not protected by it anyway (docs/security.md), so cutting it hides nothing that was
        protected; the fragment is kept for the operator all the same.
        """
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        kept = self._path.with_name(f"{self._path.name}.torn-{stamp}")
        try:
            descriptor = os.open(kept, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                os.write(descriptor, torn.fragment)
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
            os.ftruncate(self._fd, torn.start)
            os.fsync(self._fd)
            _fsync_directory(self._path.parent)
        except OSError as exc:
            raise AuditUnavailable(
                f"the audit log {self._path} ends with a torn line ({len(torn.fragment)} bytes at"
                f" byte {torn.start}) that cannot be set aside: {exc.strerror}"
            ) from None
        log.warning(
            "audit log %s ended with a torn line (%d bytes at byte %d), the remains of a write"
            " cut short by a crash or power loss (its event was never acknowledged): kept in %s"
            " and cut from the log",
            self._path,
            len(torn.fragment),
            torn.start,
            kept,
        )

    def _open_checkpoints(
        self, path: Path, reader: int, tail: _Tail, checkpoints: Checkpointing
    ) -> None:
        public_key = checkpoints.signer.public_key()
        try:
            self._algorithm = signature_algorithm(public_key)
        except ValueError:
            raise InternalError("the checkpoint key is neither Ed25519 nor EC P-256") from None
        self._public_key = public_key
        publish_public_key(checkpoints.public_key_file, public_key)
        try:
            anchor = check_anchor(path, reader, tail.size, checkpoints.checkpoint_file, public_key)
        except OSError as exc:
            raise AuditUnavailable(f"cannot read the audit log {path}: {exc.strerror}") from None
        if anchor is not None:
            self._signed_through = anchor.statement.head_sequence
            self._checkpoint_line = anchor.sequence
            self._file_sequence = anchor.sequence
            log.info(
                "audit log %s matches its checkpoint (line %d, signed %s)",
                path,
                anchor.sequence,
                anchor.statement.time.isoformat(),
            )

    @property
    def path(self) -> Path:
        return self._path

    @property
    def public_key(self) -> bytes | None:
        """The DER SPKI that checkpoints are signed with (None without checkpoints)."""
        return self._public_key

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def ensure_writable(self, *, check_length: bool = True) -> None:
        """Cheap pre-flight before an operation runs: a few syscalls, no write.

        check_length=False skips the comparison of the file's length with what this process
        wrote; VerifyAuditLog uses it, so that it can report a cut log instead of being refused.

        Raises:
            AuditUnavailable: the log is failed or closed, its descriptor is unusable, the path
                no longer names the open file (moved, deleted, replaced), the disk has less
                than min_free_bytes left, or the file is shorter than what this process wrote
                (which marks the log failed). Moving the same file back makes it pass again.
        """
        reason = self._unusable_reason(check_length)
        if reason is not None:
            raise AuditUnavailable(f"audit log unavailable: {self._path}: {reason}")

    def cut(self) -> AuditCut:
        """Where the log is now, for a backup: no checkpoint is in progress, so the checkpoint
        file read here names a line the cut holds."""
        with self._checkpoint_lock, self._write_lock:
            checkpoint = None
            if self._checkpointing is not None:
                checkpoint = read_checkpoint_file(self._checkpointing.checkpoint_file)
            return AuditCut(self._end, self._head_sequence, self._head_hash, checkpoint)

    def copy_until(self, cut: AuditCut, target: Path) -> None:
        """The log's bytes before the cut, in target (a new file), made durable."""
        with self._path.open("rb") as source, target.open("xb") as copy:
            left = cut.end
            while left:
                chunk = source.read(min(left, _COPY_CHUNK))
                if not chunk:
                    raise AuditUnavailable(f"audit log {self._path} is shorter than its cut")
                copy.write(chunk)
                left -= len(chunk)
            copy.flush()
            os.fsync(copy.fileno())

    def problem(self) -> str | None:
        """Why the log cannot take an event now (ensure_writable's reason), or None: the
        health check's question (hsmd/transport/observe.py)."""
        reason = self._unusable_reason(True)
        return None if reason is None else f"{self._path}: {reason}"

    def expect_appends(self, working: Callable[[], int], gather_seconds: float) -> None:
        """Groups fsyncs by load: `working` says how many calls are at work, each of which
        appends one event before it ends (the request guard's count, from a call's scheduler
        slot to its end). The caller that starts an fsync first waits until as many lines
        await the fsync, while lines keep coming (none for GATHER_QUIET_SECONDS ends the wait)
        and at most gather_seconds, so one fsync covers a round of concurrent calls instead
        of one or two of them (an fsync costs about 60 us of CPU here, more than the rest of
        an event). A lone call never waits, and a slow call at work (or one that synced and
        is still answering) costs the others at most one quiet interval."""
        with self._synced:
            self._working, self._gather_seconds = working, gather_seconds

    def append(self, event: AuditEvent) -> Appended:
        """Chains the event after the head and returns once it is on disk, with its size.

        Raises:
            AuditUnavailable: it could not be written or synced, or the log failed or was closed
                before; the log then refuses every further event until restart.
        """
        with self._write_lock:
            if self._clock is not None:
                event = event.at(self._clock.now())
            if self._closed or self._failure is not None:
                self._lost(chain_line(event, 0, GENESIS_HASH)[1])
            self._check_open()
            record, line = chain_line(event, self._head_sequence + 1, self._head_hash)
            self._write_line(record.sequence, record.hash, line, event)
        self._wait_durable(record.sequence, line)
        if len(self._index_pending) >= _INDEX_BATCH:
            self._flush_index(wait=False)
        return Appended(record, len(line))

    def append_many(self, events: Sequence[AuditEvent]) -> list[Appended]:
        """Chains the events after the head, in order, as one group: one write of all their
        lines and one fsync (shared as in append). Returns once all are on disk, with their
        sizes. A batch call's items are audited this way: all of them or none.

        Raises:
            AuditUnavailable: as append; then none of the events counts as written.
        """
        if not events:
            return []
        with self._write_lock:
            if self._clock is not None:
                now = self._clock.now()
                events = [event.at(now) for event in events]
            records: list[RecordedEvent] = []
            lines: list[bytes] = []
            sequence, digest = self._head_sequence, self._head_hash
            for event in events:
                record, line = chain_line(event, sequence + 1, digest)
                records.append(record)
                lines.append(line)
                sequence, digest = record.sequence, record.hash
            block = b"".join(lines)
            if self._closed or self._failure is not None:
                self._lost(block)
            self._check_open()
            self._check_end(block)
            self._write(block)
            for record, line, event in zip(records, lines, events, strict=True):
                self._advance(record.sequence, record.hash, line, event)
        self._wait_durable(records[-1].sequence, block)
        if len(self._index_pending) >= _INDEX_BATCH:
            self._flush_index(wait=False)
        return [Appended(record, len(line)) for record, line in zip(records, lines, strict=True)]

    def start_chain(
        self, archived_log: str, archived_sequence: int, archived_hash: str
    ) -> ResetRecord:
        """Writes the reset record that starts a new, empty log after an archived one.

        Raises:
            InvalidArgument: the log is not empty.
            AuditUnavailable: it could not be written or synced.
        """
        with self._write_lock:
            self._check_open()
            if self._head_sequence != 0:
                raise InvalidArgument("a reset record can only start an empty log")
            record = reset_record(self._now(), archived_log, archived_sequence, archived_hash)
            line = encode_record(record)
            self._write_line(record.sequence, record.hash, line)
        self._wait_durable(record.sequence, line)
        return record

    def checkpoint(self) -> CheckpointRecord | None:
        """Signs and writes a checkpoint now, if any line is not yet signed; returns it.

        Raises:
            InvalidArgument: the log was made without checkpoints.
            AuditUnavailable: the log is failed or closed, or the line could not be written.
            HsmdError: the signer could not sign.
        """
        if self._checkpointing is None:
            raise InvalidArgument("this audit log has no checkpoint signer")
        return self._checkpoint(self._checkpointing)

    def read(
        self,
        after_sequence: int = 0,
        limit: int = 100,
        tenant: str | None = None,
        key_id: str | None = None,
    ) -> tuple[list[RecordedEvent], int | None]:
        """Events with sequence > after_sequence, in order, filtered, at most limit of them.

        tenant=None means every tenant (operators); key_id=None means any key. Checkpoint and
        reset lines are not events and are skipped. Returns the events and the after_sequence
        of the next page, or None when no matching event follows.

        Raises:
            InvalidArgument: after_sequence < 0 or limit < 1.
            AuditUnavailable: the log is closed or the path no longer names it.
            AuditCorrupt: a line is not a valid record or sits at the wrong position; the log
                is then marked failed.
        """
        if after_sequence < 0:
            raise InvalidArgument("after_sequence must not be negative")
        if limit < 1:
            raise InvalidArgument("limit must be at least 1")
        if self._closed:
            raise AuditUnavailable(f"audit log unavailable: {self._path}: closed")
        self._flush_index(wait=True)
        if self._index_failure is not None:
            raise AuditIndexFailed(self._index_failure)
        try:
            locations = self._index.find(after_sequence, limit + 1, tenant, key_id)
        except AuditIndexFailed as exc:
            self._index_failed(str(exc))
            raise
        found: list[RecordedEvent] = []
        with self._reader() as reader:
            for location in locations[:limit]:
                position = location.sequence
                raw = os.pread(reader.fileno(), location.length, location.offset)
                if len(raw) != location.length or not raw.endswith(b"\n"):
                    self._corrupt(position, "is shorter than when it was written")
                try:
                    record = decode_record(raw)
                except MalformedEvent as exc:
                    self._corrupt(position, f"not a valid record: {exc}")
                if not isinstance(record, RecordedEvent) or record.sequence != position:
                    self._corrupt(position, "holds another record than when it was written")
                if (tenant is not None and record.event.tenant != tenant) or (
                    key_id is not None and record.event.key_id != key_id
                ):
                    self._corrupt(position, "names another tenant or key than when written")
                found.append(record)
        return found, found[-1].sequence if len(locations) > limit else None

    def verify(self) -> VerifyResult:
        """Walks the whole chain up to the head, checks every checkpoint, and compares the file
        with the head this process wrote and with the checkpoint file (verify.py). A break
        marks the log failed: nothing more is appended.

        Raises:
            AuditUnavailable: the log is closed or the path no longer names it.
        """
        checkpoint_file = None
        with self._checkpoint_lock:  # no checkpoint between reading its file and the head
            with self._write_lock:
                head = (self._head_sequence, self._head_hash)
                file_sequence = self._file_sequence
                # Past the head, a healthy log's lines are appends in flight; a failed log's
                # are what its failure left (a torn line), and they are read.
                stop_after = head[0] if self._failure is None else None
            if self._checkpointing is not None and file_sequence:
                # Only once a checkpoint file was there: one that never could be written is
                # logged when that happens, not a sign of tampering.
                path = self._checkpointing.checkpoint_file
                checkpoint_file = CheckpointFile(str(path), read_checkpoint_file(path))
        with self._reader() as reader:
            result = verify_lines(
                reader,
                public_key=self._public_key,
                checkpoint_file=checkpoint_file,
                stop_after=stop_after,
                expected_head=head if head[0] else None,
            )
        if not result.valid:
            where = result.first_broken_position
            self._break(f"line {where}: {result.problem}" if where else result.problem)
        return result

    def close(self) -> None:
        """Writes a last checkpoint (with checkpoints), syncs what was written and releases
        the file (and its lock). Idempotent."""
        with self._write_lock:
            if self._stopping:  # closed, or being closed by another thread
                return
            self._stopping = True
            self._wake.notify_all()
        if self._checkpointer is not None:
            self._checkpointer.join()
        if self._checkpointing is not None and self._failure is None:
            try:
                self._checkpoint(self._checkpointing)
            except Exception as exc:  # the log closes anyway; say why it has no checkpoint
                log.error("audit log %s: no checkpoint at close: %s", self._path, exc)
        self._flush_index(wait=True)
        try:
            self._index.close()
        except AuditIndexFailed as exc:
            log.error("audit log %s: %s", self._path, exc)
        with self._write_lock, self._synced:
            self._all_written.notify_all()  # a leader still gathering stops (_stopping)
            while self._syncing:
                self._synced.wait()
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

    # Checkpoints

    def _unsigned(self) -> int:
        """Lines after the last checkpoint's head, its own line not counted."""
        return self._head_sequence - self._signed_through - (1 if self._checkpoint_line else 0)

    def _due_in(self, checkpoints: Checkpointing) -> float | None:
        """Seconds until the next checkpoint is due (0: now), or None if none is (nothing
        unsigned, or the log failed)."""
        unsigned = self._unsigned()
        if self._failure is not None or unsigned <= 0:
            return None
        now = time.monotonic()
        if now < self._retry_at:
            return self._retry_at - now
        if unsigned >= checkpoints.every_events:
            return 0.0
        first = self._first_unsigned_at if self._first_unsigned_at is not None else now
        return max(0.0, first + checkpoints.interval_seconds - now)

    def _run_checkpoints(self) -> None:
        checkpoints = self._checkpointing
        assert checkpoints is not None
        while True:
            with self._write_lock:
                while True:
                    if self._stopping:
                        return
                    due = self._due_in(checkpoints)
                    if due is not None and due <= 0:
                        break
                    self._wake.wait(due)
            try:
                self._checkpoint(checkpoints)
            except Exception:  # a checkpoint is retried; the log itself is not affected
                log.exception(
                    "audit log %s: checkpoint failed; retrying in %ss",
                    self._path,
                    checkpoints.interval_seconds,
                )
                with self._write_lock:
                    self._retry_at = time.monotonic() + checkpoints.interval_seconds

    def _checkpoint(self, checkpoints: Checkpointing) -> CheckpointRecord | None:
        assert self._public_key is not None
        with self._checkpoint_lock:
            with self._write_lock:
                self._check_open()
                if self._unsigned() <= 0:
                    return None
                head = (self._head_sequence, self._head_hash, self._head_offset)
                statement = CheckpointStatement(
                    head_sequence=head[0],
                    head_hash=head[1],
                    head_offset=head[2],
                    time=self._now(),
                    public_key_sha256=fingerprint(self._public_key),
                    signature_algorithm=self._algorithm,
                )
            # Outside the write lock: appends go on while the token signs.
            signed = statement.signed_bytes()
            signature = checkpoints.signer.sign(signed)
            if not signature_valid(self._public_key, self._algorithm, signed, signature):
                raise InternalError("the checkpoint key's signature does not verify")
            with self._write_lock:
                self._check_open()
                if self._head_sequence - head[0] >= MAX_CHECKPOINT_LAG:
                    log.warning(
                        "audit log %s: %d events arrived while a checkpoint was signed; "
                        "signing again",
                        self._path,
                        self._head_sequence - head[0],
                    )
                    return None
                record = place_checkpoint(
                    statement, signature, self._head_sequence + 1, self._end, self._head_hash
                )
                line = encode_record(record)
                self._write_line(record.sequence, record.hash, line)
                self._signed_through, self._checkpoint_line = head[0], record.sequence
                self._first_unsigned_at = time.monotonic() if self._unsigned() > 0 else None
                self._retry_at = 0.0
            self._wait_durable(record.sequence, line)
            # Only a durable line may be named by the file, or a crash could leave the file
            # naming a line the log lost.
            try:
                write_atomically(checkpoints.checkpoint_file, line)
            except OSError as exc:
                log.error(
                    "audit log %s: cannot write the checkpoint file %s (%s); it still names "
                    "line %d, and the next checkpoint tries again",
                    self._path,
                    checkpoints.checkpoint_file,
                    exc.strerror,
                    self._file_sequence,
                )
                return record
            with self._write_lock:
                self._file_sequence = record.sequence
            return record

    # The index

    def _catch_up_index(self) -> None:
        """Indexes the lines the index lacks (module docstring); a line that is not a record
        breaks the log, as a read of it would."""
        try:
            with self._reader() as reader:
                offset, sequence = self._index_start(reader.fileno())
                reader.seek(offset)
                batch: list[IndexedLine] = []
                for raw in _complete_lines(reader):
                    if offset >= self._end:
                        break
                    line = _indexed_line(raw, offset, sequence)
                    if line is None:
                        self._break(f"line {sequence}: not a valid record")
                        break
                    batch.append(line)
                    offset, sequence = offset + len(raw), sequence + 1
                    if len(batch) == _CATCH_UP_BATCH:
                        self._index.add(batch)
                        batch = []
                self._index.add(batch)
        except AuditIndexFailed as exc:
            self._index_failed(str(exc))

    def _index_start(self, reader: int) -> tuple[int, int]:
        """Where to start indexing (offset, sequence): after the index's last line if the file
        still holds it there, else from the start, with the index cleared."""
        last = self._index.last()
        if last is None:
            self._index.clear()
            return 0, 1
        if last.offset + last.length <= self._end:
            raw = os.pread(reader, last.length, last.offset)
            found = _indexed_line(raw, last.offset, last.sequence)
            if found is not None and found.hash == last.hash:
                return last.offset + last.length, last.sequence + 1
        log.warning(
            "audit log %s: its index does not match the log (another or a reset log, or a "
            "lost index); building the index again from the whole log",
            self._path,
        )
        self._index.clear()
        return 0, 1

    def _flush_index(self, *, wait: bool) -> None:
        """Hands the entries collected so far to the index. Without wait, gives up at once
        if another thread is doing it (it takes these entries too)."""
        if not self._index_lock.acquire(blocking=wait):
            return
        try:
            with self._write_lock:
                batch, self._index_pending = self._index_pending, []
            if batch and self._index_failure is None:
                self._index.add(batch)
        except AuditIndexFailed as exc:
            self._index_failed(str(exc))
        finally:
            self._index_lock.release()

    def _index_failed(self, reason: str) -> None:
        with self._write_lock:
            first = self._index_failure is None
            self._index_failure = (
                f"the audit index failed ({reason}); the log is unaffected, and a restart "
                f"builds the index again from it"
            )
            self._index_pending = []
        if first:
            log.error("audit log %s: %s", self._path, self._index_failure)

    # Writing

    def _now(self) -> datetime:
        return self._clock.now() if self._clock is not None else datetime.now(UTC)

    def _check_open(self) -> None:
        """Under the write lock: refuses a closed or failed log."""
        if self._closed or self._failure is not None:
            raise AuditUnavailable(
                f"audit log unavailable: {self._path}: {self._failure or 'closed'}"
            )

    def _write_line(
        self, sequence: int, digest: str, line: bytes, event: AuditEvent | None = None
    ) -> None:
        """Under the write lock: writes one record's line after the head, which it becomes,
        and notes where it is for the index."""
        self._check_end(line)
        self._write(line)
        self._advance(sequence, digest, line, event)

    def _check_end(self, lines: bytes) -> None:
        """Under the write lock, before a write: the file must end where this process left it
        (else the log is broken and `lines` are lost)."""
        try:
            size = os.fstat(self._fd).st_size
        except OSError as exc:
            self._fail(f"cannot stat the file: {exc.strerror}", lines)
        if size != self._end:
            self._break(
                f"the file has {size} bytes, but this process wrote {self._end}: it was cut "
                f"or written to by someone else"
            )
            self._lost(lines)
            raise AuditUnavailable(f"audit log unavailable: {self._path}: {self._failure}")

    def _advance(
        self, sequence: int, digest: str, line: bytes, event: AuditEvent | None = None
    ) -> None:
        """Under the write lock, after the write: the line just written becomes the head, and
        its place is noted for the index."""
        if self._index_failure is None:
            self._index_pending.append(
                IndexedLine(
                    sequence,
                    self._end,
                    len(line),
                    digest,
                    event.tenant if event else None,
                    event.key_id if event else "",
                )
            )
        self._head_sequence, self._head_hash = sequence, digest
        self._head_offset, self._end = self._end, self._end + len(line)
        with self._synced:
            self._written = sequence
            if self._gathering and self._covered():
                self._all_written.notify()
        if self._checkpointing is not None:
            unsigned = self._unsigned()
            if self._first_unsigned_at is None:
                self._first_unsigned_at = time.monotonic()
                self._wake.notify()
            elif unsigned >= self._checkpointing.every_events:
                self._wake.notify()

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
            # This caller syncs for everyone who has written so far, once the calls at
            # work have written too.
            self._syncing = True
            try:
                failed = self._gather()  # the log may fail while this caller waits
            except BaseException:
                self._end_sync()
                raise
            if failed is not None:
                self._end_sync()
            target = self._written
        if failed is not None:
            self._lost(line)
            raise AuditUnavailable(f"audit log unavailable: {self._path}: {failed}")
        started = time.monotonic()
        try:
            os.fsync(self._fd)
            failure = None
        except OSError as exc:
            failure = f"fsync failed: {exc.strerror}"
        metrics.AUDIT_FSYNC_SECONDS.observe(time.monotonic() - started)
        with self._synced:
            self._syncing = False
            if failure is None:
                self._durable = max(self._durable, target)
            else:
                self._failure = failure
            self._synced.notify_all()
        if failure is not None:
            self._fail(failure, line)

    def _gather(self) -> str | None:
        """Under _synced's lock, as the sync leader: waits while calls are at work and their
        lines keep coming, at most the gather window (see expect_appends). Returns the log's
        failure if it failed meanwhile."""
        if not self._covered():
            self._wait_for_lines()
        return self._failure

    def _covered(self) -> bool:
        """Under _synced's lock: as many lines await the fsync as there are calls at work."""
        return self._working is None or self._written - self._durable >= self._working()

    def _wait_for_lines(self) -> None:
        now = time.monotonic()
        deadline = now + self._gather_seconds
        seen, quiet_from = self._written, now
        self._gathering = True
        try:
            while not self._covered() and self._failure is None and not self._stopping:
                if self._written != seen:
                    seen, quiet_from = self._written, time.monotonic()
                until = min(deadline, quiet_from + GATHER_QUIET_SECONDS)
                left = until - time.monotonic()
                if left <= 0:
                    return
                self._all_written.wait(left)
        finally:
            self._gathering = False

    def _end_sync(self) -> None:
        """Under _synced's lock: this caller will not sync after all; the next one may."""
        self._syncing = False
        self._synced.notify_all()

    def _fail(self, reason: str, line: bytes) -> NoReturn:
        with self._synced:
            if self._failure is None:
                self._failure = reason
            self._synced.notify_all()
            self._all_written.notify_all()
        log.error(
            "audit log %s: %s; every further event is refused until restart", self._path, reason
        )
        self._lost(line)
        raise AuditUnavailable(f"audit log unavailable: {self._path}: {reason}")

    def _break(self, problem: str) -> None:
        """The file no longer holds what this process wrote: refuse everything from now on."""
        with self._synced:
            first = self._failure is None
            if first:
                self._failure = f"the log is broken: {problem}"
            self._synced.notify_all()
            self._all_written.notify_all()
        if first:
            log.error(
                "audit log %s is broken: %s. Every call is refused from now on, until an "
                "operator restores the log and its checkpoint file, or archives them with "
                "`hsmd audit reset`, and restarts the daemon",
                self._path,
                problem,
            )

    def _corrupt(self, position: int, problem: str) -> NoReturn:
        self._break(f"line {position}: {problem}")
        raise AuditCorrupt(f"audit log {self._path} line {position}: {problem}")

    def _lost(self, line: bytes) -> None:
        log.error("audit event not durable: %s", line.decode("utf-8").rstrip("\n"))

    def _unusable_reason(self, check_length: bool) -> str | None:
        if self._closed:
            return "closed"
        if self._failure is not None:
            return self._failure
        written = self._end  # read before the fstat: the file only grows past it
        try:
            open_file = os.fstat(self._fd)
        except OSError as exc:
            return f"descriptor unusable: {exc.strerror}"
        if check_length and open_file.st_size < written:
            self._break(
                f"the file has {open_file.st_size} bytes, fewer than the {written} this process "
                f"wrote: lines were cut from its end"
            )
            return self._failure
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


@dataclass(frozen=True)
class _TornTail:
    """The bytes after the log's last LF, and where they start."""

    start: int
    fragment: bytes


def _torn_tail(reader: int, size: int) -> _TornTail | None:
    if size == 0 or os.pread(reader, 1, size - 1) == b"\n":
        return None
    start, fragment = _last_line(reader, size)
    return _TornTail(start, fragment)


def _recover_head(path: Path, reader: int, size: int) -> _Tail:
    """The head from the last line of the first `size` bytes, which end with an LF."""
    if size == 0:
        return _Tail(0, GENESIS_HASH, 0, 0)
    try:
        start, last = _last_line(reader, size - 1)
    except OSError as exc:
        raise AuditUnavailable(f"cannot read the audit log {path}: {exc.strerror}") from None
    try:
        record = decode_record(last)
    except MalformedEvent as exc:
        raise AuditCorrupt(
            f"the last line of the audit log {path} (at byte {start}) is not a valid event: {exc}"
        ) from None
    if record_hash(record) != record.hash:
        raise AuditCorrupt(f"the last line of the audit log {path} does not match its hash")
    return _Tail(record.sequence, record.hash, start, size)


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


def _indexed_line(raw: bytes, offset: int, sequence: int) -> IndexedLine | None:
    """The index entry of a line expected to hold `sequence`, or None if it does not (or is
    not a record). Only the members the index needs are checked; verify() checks the rest."""
    if not raw.endswith(b"\n"):
        return None
    try:
        members = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(members, dict) or members.get("sequence") != sequence:
        return None
    digest = members.get("hash")
    if not isinstance(digest, str):
        return None
    if "kind" in members:
        return IndexedLine(sequence, offset, len(raw), digest, None, "")
    tenant, key_id = members.get("tenant"), members.get("key_id")
    if not isinstance(tenant, str) or not isinstance(key_id, str):
        return None
    return IndexedLine(sequence, offset, len(raw), digest, tenant, key_id)


def _complete_lines(reader: BinaryIO) -> Iterator[bytes]:
    for raw in reader:
        if not raw.endswith(b"\n"):
            return  # an append in flight
        yield raw


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
