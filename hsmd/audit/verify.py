"""Verifying an audit log: the one implementation behind VerifyAuditLog and `hsmd audit verify`.

verify_lines() walks the lines in order and checks, for every line, the chain rule of
events.py (complete line, canonical record of a known kind, sequence = line number,
previous_hash, hash); for every checkpoint line, that it lies at the offset it records, that
the head it signs is a line within MAX_CHECKPOINT_LAG before it, after the previous
checkpoint's head, with exactly that hash and offset, and (given the public key) that the key
is the one named and the signature verifies; and that a reset record is line 1 only. The
first line that fails any of these is the break: the walk stops there.

Given the checkpoint file's content, it checks that file on its own (canonical, self-hashed,
signed), that the log reaches the line the file records (else the log's tail was cut), and
that the log holds exactly that line there (else it was rewritten). A missing file is a
problem if the log holds checkpoints. Given the head a running daemon wrote (expected_head),
it checks the log still holds it: that catches a cut or rewrite of lines newer than the last
checkpoint, while the daemon runs.

Times that go backwards are findings, not breaks: the line's position and time, and the
position and time of the line before it. Checkpoint lines stand outside that order: a
checkpoint's time is when it was signed, and events can be appended while it is signed.

Nothing here reads a file or a clock, so the daemon (over its open log) and the command (over
a copy) run the same checks.
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from hsmd.audit.checkpoint import (
    checkpoint_file_problem,
    fingerprint,
    load_public_key_pem,
    signature_valid,
)
from hsmd.audit.events import (
    GENESIS_HASH,
    MAX_CHECKPOINT_LAG,
    CheckpointRecord,
    MalformedEvent,
    ResetRecord,
    decode_record,
    format_time,
    record_hash,
    record_time,
)

MAX_TIME_REVERSALS = 100  # findings listed; all are counted


@dataclass(frozen=True)
class TimeReversal:
    """Line `position` has a time before that of the line before it (`previous_position`)."""

    position: int
    time: datetime
    previous_position: int
    previous_time: datetime


class CheckpointFileState(enum.StrEnum):
    NOT_CHECKED = "NOT_CHECKED"  # no checkpoint file was named
    NONE_YET = "NONE_YET"  # no file, and the log has no checkpoint: nothing signed yet
    MATCHED = "MATCHED"  # the log reaches the file's line and holds it
    PROBLEM = "PROBLEM"  # see VerifyResult.problem


@dataclass(frozen=True)
class CheckpointFile:
    """A checkpoint file as given to the verifier: its name (for messages) and its bytes, or
    None if it does not exist."""

    name: str
    content: bytes | None


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of a walk. events_checked counts lines of every kind that verified;
    first_broken_position is the line that breaks the chain (0 if none, or if the problem is
    the checkpoint file itself); head_hash is the hash of the last line that verified."""

    valid: bool
    events_checked: int
    first_broken_position: int
    problem: str
    checkpoints_verified: int = 0
    signatures_checked: bool = False
    last_checkpoint: CheckpointRecord | None = None
    checkpoint_file: CheckpointFileState = CheckpointFileState.NOT_CHECKED
    checkpoint_file_position: int = 0
    time_reversals: tuple[TimeReversal, ...] = ()
    time_reversal_count: int = 0
    chain_start: ResetRecord | None = None
    head_hash: str = GENESIS_HASH
    notes: tuple[str, ...] = field(default=())

    @property
    def lines_after_last_checkpoint(self) -> int:
        """Lines after the last verified checkpoint (all lines if there is none)."""
        last = self.last_checkpoint.sequence if self.last_checkpoint else 0
        return max(0, self.events_checked - last)

    @property
    def all_well(self) -> bool:
        """Valid, and no finding: what `hsmd audit verify` exits 0 for."""
        return self.valid and self.time_reversal_count == 0


class _Broken(Exception):
    def __init__(self, position: int, problem: str) -> None:
        super().__init__(problem)
        self.position = position
        self.problem = problem


@dataclass
class _Walk:
    public_key: bytes | None
    external: CheckpointRecord | None
    external_line: bytes | None
    expected_head: tuple[int, str] | None
    running: str = GENESIS_HASH
    checked: int = 0
    offset: int = 0
    checkpoints: int = 0
    last_checkpoint: CheckpointRecord | None = None
    chain_start: ResetRecord | None = None
    previous_time: tuple[int, datetime] | None = None
    reversals: list[TimeReversal] = field(default_factory=list)
    reversal_count: int = 0
    matched_external: bool = False
    # (sequence, hash, offset) of the last lines, for checkpoints to name as their head.
    recent: collections.deque[tuple[int, str, int]] = field(
        default_factory=lambda: collections.deque(maxlen=MAX_CHECKPOINT_LAG)
    )

    def line(self, position: int, raw: bytes) -> None:
        if not raw.endswith(b"\n"):
            raise _Broken(position, "the line is incomplete (a torn write, or a cut)")
        try:
            record = decode_record(raw)
        except MalformedEvent as exc:
            raise _Broken(position, f"not a valid record: {exc}") from None
        if record.sequence != position:
            raise _Broken(
                position, f"holds sequence {record.sequence} (a line was deleted, added or moved)"
            )
        if record.previous_hash != self.running:
            raise _Broken(
                position, "previous_hash is not the hash of the line before (deleted or moved)"
            )
        if record_hash(record) != record.hash:
            raise _Broken(position, "the hash does not match the line (the line was edited)")
        if isinstance(record, CheckpointRecord):
            self._checkpoint(record)
        else:
            if isinstance(record, ResetRecord):
                if position != 1:
                    raise _Broken(position, "a reset record can only be line 1")
                self.chain_start = record
            self._time(position, record_time(record))
        if self.external is not None and position == self.external.sequence:
            if raw != self.external_line:
                raise _Broken(
                    position,
                    "is not the checkpoint line the checkpoint file records here "
                    "(the log was rewritten)",
                )
            self.matched_external = True
        if self.expected_head is not None and position == self.expected_head[0]:
            if record.hash != self.expected_head[1]:
                raise _Broken(
                    position, "differs from the line this process wrote there (rewritten)"
                )
        self.recent.append((position, record.hash, self.offset))
        self.running = record.hash
        self.checked = position
        self.offset += len(raw)

    def _checkpoint(self, record: CheckpointRecord) -> None:
        position = record.sequence
        statement = record.statement
        if record.offset != self.offset:
            raise _Broken(
                position,
                f"the checkpoint says it starts at byte {record.offset}, but it starts at byte "
                f"{self.offset} (bytes were removed or added before it)",
            )
        head = statement.head_sequence
        floor = self.last_checkpoint.statement.head_sequence if self.last_checkpoint else 0
        if not floor < head < position or position - head > MAX_CHECKPOINT_LAG:
            raise _Broken(
                position,
                f"the checkpoint signs line {head}, which is not a line after the previous "
                f"checkpoint's head ({floor}) and at most {MAX_CHECKPOINT_LAG} lines before it",
            )
        first = self.recent[0][0]
        _, head_hash, head_offset = self.recent[head - first]
        if (statement.head_hash, statement.head_offset) != (head_hash, head_offset):
            raise _Broken(
                position,
                f"the checkpoint signs line {head} with another hash or offset than line "
                f"{head} has (line {head} or a line before it was rewritten)",
            )
        if self.public_key is not None:
            if statement.public_key_sha256 != fingerprint(self.public_key):
                raise _Broken(
                    position,
                    f"the checkpoint was signed by the key sha256:{statement.public_key_sha256}, "
                    f"not by the given key sha256:{fingerprint(self.public_key)}",
                )
            if not signature_valid(
                self.public_key,
                statement.signature_algorithm,
                statement.signed_bytes(),
                record.signature,
            ):
                raise _Broken(
                    position,
                    "the checkpoint's signature does not verify (forged, or the checkpoint or "
                    "the lines it signs were altered)",
                )
        self.checkpoints += 1
        self.last_checkpoint = record

    def _time(self, position: int, time: datetime) -> None:
        if self.previous_time is not None and time < self.previous_time[1]:
            self.reversal_count += 1
            if len(self.reversals) < MAX_TIME_REVERSALS:
                self.reversals.append(
                    TimeReversal(position, time, self.previous_time[0], self.previous_time[1])
                )
        self.previous_time = (position, time)


def verify_lines(
    lines: Iterable[bytes],
    *,
    public_key: bytes | None,
    checkpoint_file: CheckpointFile | None,
    stop_after: int | None = None,
    expected_head: tuple[int, str] | None = None,
) -> VerifyResult:
    """Walks the log's lines (each with its LF) and reports what is wrong, if anything.

    public_key: the DER SPKI checkpoints must be signed with; None leaves signatures unchecked.
    checkpoint_file: the checkpoint file to compare with; None leaves the tail unchecked.
    stop_after: the last line to read (a daemon's head: later lines are appends in flight).
    expected_head: (sequence, hash) the log must still hold (what a daemon wrote last).
    """
    notes: list[str] = []
    external: CheckpointRecord | None = None
    file_problem = ""
    if checkpoint_file is not None and checkpoint_file.content is not None:
        parsed = checkpoint_file_problem(checkpoint_file.content, public_key)
        if isinstance(parsed, str):
            file_problem = f"the checkpoint file {checkpoint_file.name} {parsed}"
        else:
            external = parsed
    walk = _Walk(
        public_key,
        external,
        checkpoint_file.content if external is not None and checkpoint_file else None,
        expected_head,
    )
    broken: _Broken | None = None
    try:
        for position, raw in enumerate(lines, start=1):
            if stop_after is not None and position > stop_after:
                break
            walk.line(position, raw)
        broken = _tail_problem(walk, expected_head, checkpoint_file)
    except _Broken as exc:
        broken = exc
    if broken is None and file_problem:
        broken = _Broken(0, file_problem)
    elif broken is not None and file_problem:
        notes.append(f"also: {file_problem}")
    state = _file_state(walk, checkpoint_file, broken, file_problem)
    if checkpoint_file is None:
        notes.append("no checkpoint file given: lines cut from the end of the log are not detected")
    if walk.checkpoints == 0 and broken is None:
        notes.append(
            "the log holds no checkpoint: no signature anchors it (a log from before "
            "checkpoints, or one too new to have one)"
        )
    if public_key is None and walk.checkpoints:
        notes.append("no public key given: checkpoint signatures were not checked")
    return VerifyResult(
        valid=broken is None,
        events_checked=walk.checked,
        first_broken_position=broken.position if broken else 0,
        problem=broken.problem if broken else "",
        checkpoints_verified=walk.checkpoints,
        signatures_checked=public_key is not None,
        last_checkpoint=walk.last_checkpoint,
        checkpoint_file=state,
        checkpoint_file_position=external.sequence if walk.matched_external and external else 0,
        time_reversals=tuple(walk.reversals),
        time_reversal_count=walk.reversal_count,
        chain_start=walk.chain_start,
        head_hash=walk.running,
        notes=tuple(notes),
    )


def _tail_problem(
    walk: _Walk, expected_head: tuple[int, str] | None, checkpoint_file: CheckpointFile | None
) -> _Broken | None:
    """What is wrong at the end of a walk that found every line good."""
    if expected_head is not None and walk.checked < expected_head[0]:
        return _Broken(
            walk.checked + 1,
            f"log truncated: it ends after line {walk.checked}, "
            f"but this process wrote up to line {expected_head[0]}",
        )
    external = walk.external
    if external is not None and checkpoint_file is not None and not walk.matched_external:
        return _Broken(
            walk.checked + 1,
            f"log truncated: it ends after line {walk.checked}, but the checkpoint file "
            f"{checkpoint_file.name} records line {external.sequence} (signed "
            f"{format_time(external.statement.time)}): lines were cut from its end",
        )
    if checkpoint_file is not None and checkpoint_file.content is None and walk.checkpoints:
        assert walk.last_checkpoint is not None
        return _Broken(
            0,
            f"the checkpoint file {checkpoint_file.name} is missing, but the log holds "
            f"{walk.checkpoints} checkpoint(s), the last at line {walk.last_checkpoint.sequence}: "
            f"it was deleted or moved, which would hide lines cut from the log's end",
        )
    return None


def _file_state(
    walk: _Walk,
    checkpoint_file: CheckpointFile | None,
    broken: _Broken | None,
    file_problem: str,
) -> CheckpointFileState:
    if checkpoint_file is None:
        return CheckpointFileState.NOT_CHECKED
    if walk.matched_external and not file_problem:
        return CheckpointFileState.MATCHED
    if checkpoint_file.content is None and walk.checkpoints == 0 and broken is None:
        return CheckpointFileState.NONE_YET
    return CheckpointFileState.PROBLEM


class VerifyUsageError(Exception):
    """The command cannot run as asked: a file cannot be read, or the key is not a key."""


def verify_files(
    log_path: Path, checkpoint_path: Path | None, public_key_path: Path
) -> VerifyResult:
    """Verifies a copy of a log, with no daemon and no token: the `hsmd audit verify` command.

    Raises:
        VerifyUsageError: the log or the public key cannot be read, or the key file does not
            hold an Ed25519 or EC P-256 public key in PEM.
    """
    try:
        public_key = load_public_key_pem(public_key_path.read_bytes())
    except OSError as exc:
        raise VerifyUsageError(
            f"cannot read the public key {public_key_path}: {exc.strerror}"
        ) from None
    except ValueError:
        raise VerifyUsageError(
            f"{public_key_path} is not an Ed25519 or EC P-256 public key in PEM"
        ) from None
    checkpoint = None
    if checkpoint_path is not None:
        try:
            content: bytes | None = checkpoint_path.read_bytes()
        except FileNotFoundError:
            content = None
        except OSError as exc:
            raise VerifyUsageError(
                f"cannot read the checkpoint file {checkpoint_path}: {exc.strerror}"
            ) from None
        checkpoint = CheckpointFile(str(checkpoint_path), content)
    try:
        with log_path.open("rb") as lines:
            return verify_lines(lines, public_key=public_key, checkpoint_file=checkpoint)
    except OSError as exc:
        raise VerifyUsageError(f"cannot read the log {log_path}: {exc.strerror}") from None


def report(result: VerifyResult, log_name: str) -> str:
    """The verification as text for an operator: what was checked, what is wrong, notes."""
    lines = [f"audit log: {log_name}"]
    if result.valid:
        lines.append(f"chain: intact, {result.events_checked} line(s)")
    elif result.first_broken_position:
        lines.append(
            f"chain: BROKEN at line {result.first_broken_position} "
            f"({result.events_checked} line(s) before it verified): {result.problem}"
        )
    else:
        lines.append(f"chain: intact, {result.events_checked} line(s)")
        lines.append(f"PROBLEM: {result.problem}")
    if result.chain_start is not None:
        start = result.chain_start
        lines.append(
            f"chain start: continues from the archived log {start.archived_log}, whose line "
            f"{start.archived_sequence} (hash {start.archived_hash}) was its last verified line "
            f"(reset at {format_time(start.time)})"
        )
    if result.last_checkpoint is not None:
        last = result.last_checkpoint
        how = "signatures verified" if result.signatures_checked else "signatures NOT checked"
        lines.append(
            f"checkpoints: {result.checkpoints_verified} ({how}, key "
            f"sha256:{last.statement.public_key_sha256}); the last is line {last.sequence}, "
            f"signed {format_time(last.statement.time)}, covering lines 1-"
            f"{last.statement.head_sequence}"
        )
    elif result.valid:
        lines.append("checkpoints: none")
    if result.checkpoint_file is CheckpointFileState.MATCHED:
        lines.append(
            f"checkpoint file: the log reaches its line {result.checkpoint_file_position} and "
            f"holds the same line there"
        )
    elif result.checkpoint_file is CheckpointFileState.NONE_YET:
        lines.append("checkpoint file: none, and the log has no checkpoint yet")
    if result.last_checkpoint is not None and result.valid:
        after = result.lines_after_last_checkpoint
        if after:
            lines.append(
                f"after the last checkpoint: {after} line(s), not covered by a signature yet"
            )
    if result.time_reversal_count:
        lines.append(f"time: {result.time_reversal_count} line(s) go back in time:")
        for reversal in result.time_reversals:
            lines.append(
                f"  line {reversal.position} at {format_time(reversal.time)} is earlier than "
                f"line {reversal.previous_position} at {format_time(reversal.previous_time)}"
            )
        if result.time_reversal_count > len(result.time_reversals):
            lines.append(f"  (the first {len(result.time_reversals)} are listed)")
    lines.extend(f"note: {note}" for note in result.notes)
    lines.append("result: OK" if result.all_well else "result: PROBLEMS FOUND")
    return "\n".join(lines) + "\n"
