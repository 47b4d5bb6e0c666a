"""`hsmd audit reset`: archive a log that cannot go on, and start a new chain that names it.

With the daemon stopped, the operator's command verifies the log as it is (with the daemon's
key and the checkpoint file), renames the log, its checkpoint file and its public key file to
"<name>.archived-<UTC time>", and starts a new log whose line 1 is a reset record: the
archive's file name, its last line that verified, and that line's hash. A checkpoint signs
that record at once, so the new chain is anchored from its first line. Nothing is deleted or
cut: the break stays visible in the archive, and the new log says where it continues from.
The log's index is emptied and indexes the new log (it is derived data: the archive can be
read with `hsmd audit verify`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from hsmd.audit.checkpoint import Checkpointing, read_checkpoint_file
from hsmd.audit.errors import AuditUnavailable
from hsmd.audit.events import CheckpointRecord, ResetRecord
from hsmd.audit.index import AuditIndex
from hsmd.audit.log import AuditLog
from hsmd.audit.verify import CheckpointFile, VerifyResult, verify_lines
from hsmd.domain import Clock


@dataclass(frozen=True)
class ResetOutcome:
    """What reset_log did: the verification of the old log (None if there was none), the
    files it renamed (from, to), and the new log's first records."""

    verification: VerifyResult | None
    archived: tuple[tuple[Path, Path], ...]
    reset: ResetRecord | None
    checkpoint: CheckpointRecord | None


def reset_log(
    log_path: Path, checkpoints: Checkpointing, clock: Clock, index: AuditIndex
) -> ResetOutcome:
    """Archives the log and its checkpoint files and starts a new chain (module docstring).
    The index is cleared and then holds the new log; the caller closes it.

    The caller holds the daemon's state lock, so no daemon writes the log meanwhile.

    Raises:
        AuditUnavailable: a file cannot be read, renamed or written, or an archive of that
            name exists already.
        HsmdError: the daemon key cannot sign the new log's first checkpoint.
    """
    suffix = ".archived-" + clock.now().strftime("%Y%m%dT%H%M%SZ")
    verification = None
    if log_path.exists():
        content = read_checkpoint_file(checkpoints.checkpoint_file)
        try:
            with log_path.open("rb") as lines:
                verification = verify_lines(
                    lines,
                    public_key=checkpoints.signer.public_key(),
                    checkpoint_file=CheckpointFile(str(checkpoints.checkpoint_file), content),
                )
        except OSError as exc:
            raise AuditUnavailable(
                f"cannot read the audit log {log_path}: {exc.strerror}"
            ) from None
    files = (log_path, checkpoints.checkpoint_file, checkpoints.public_key_file)
    moves = tuple((path, path.with_name(path.name + suffix)) for path in files if path.exists())
    for _, target in moves:
        if target.exists():
            raise AuditUnavailable(f"{target} exists already; run the reset again in a second")
    try:
        for source, target in moves:
            os.rename(source, target)
        for directory in {target.parent for _, target in moves}:
            _fsync_directory(directory)
    except OSError as exc:
        raise AuditUnavailable(f"cannot archive the audit files: {exc}") from None
    index.clear()
    with AuditLog(log_path, clock=clock, checkpoints=checkpoints, index=index) as log:
        reset = None
        if verification is not None:
            reset = log.start_chain(
                log_path.name + suffix, verification.events_checked, verification.head_hash
            )
        checkpoint = log.checkpoint()
    return ResetOutcome(verification, moves, reset, checkpoint)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
