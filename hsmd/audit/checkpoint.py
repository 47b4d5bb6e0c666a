"""Signed checkpoints: what signs them, the files beside the log, and the start-up check.

The daemon's key lives in a PKCS#11 token of its own, which this layer must not import: it
asks for a CheckpointSigner (sign(data) -> signature, public_key() -> DER SPKI), and the
composition root hands it the backend's daemon key. A checkpoint is signed off the request
path, at most every `every_events` events or `interval_seconds` after the first unsigned
event, and at a clean close (AuditLog does the scheduling).

Two files sit beside the log (paths configurable):

- the checkpoint file: the last checkpoint line, byte for byte as in the log, replaced
  atomically (temporary file, fsync, rename, fsync of the directory) after the line itself is
  durable in the log, so it never names a line the log might lose;
- the public key file: the daemon key's SubjectPublicKeyInfo in PEM, written once, so an
  operator can keep a copy elsewhere and verify a copy of the log without the daemon.

check_anchor() is the start-up check: two preads (the checkpoint line at its recorded offset,
the head it signs at its offset) and one signature check, whatever the log's size. A full scan
happens only when the checkpoint file is missing from a non-empty log, to tell an old log from
before checkpoints (adopted, with a WARNING) from one whose checkpoint file was removed
(refused).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from hsmd.audit.errors import AuditBroken, AuditUnavailable
from hsmd.audit.events import (
    ECDSA_P256,
    ED25519,
    CheckpointRecord,
    MalformedEvent,
    decode_record,
    format_time,
    record_hash,
)

log = logging.getLogger(__name__)

DEFAULT_EVERY_EVENTS = 1000
DEFAULT_INTERVAL_SECONDS = 60.0
_MAX_CHECKPOINT_FILE = 4096  # a checkpoint line is about 600 bytes
_READ_CHUNK = 1 << 16
_RESET_HINT = (
    "Keep copies of the log and its checkpoint file; compare the checkpoint file with the "
    "copy you keep elsewhere. Then put the right files back, or archive these and start a new "
    "chain with `hsmd audit reset` (docs/operations.md, 'After a break')."
)


class CheckpointSigner(Protocol):
    """The daemon's signing key, as the audit log needs it."""

    def sign(self, data: bytes) -> bytes:
        """The signature of data: 64 bytes for Ed25519, DER for ECDSA P-256 with SHA-256.

        Raises:
            HsmdError: the key cannot sign now (token unavailable).
        """
        ...

    def public_key(self) -> bytes:
        """The DER SubjectPublicKeyInfo of the key."""
        ...


@dataclass(frozen=True)
class Checkpointing:
    """How an AuditLog checkpoints: with which key, into which files, how often."""

    signer: CheckpointSigner
    checkpoint_file: Path
    public_key_file: Path
    every_events: int = DEFAULT_EVERY_EVENTS
    interval_seconds: float = DEFAULT_INTERVAL_SECONDS


def fingerprint(public_key: bytes) -> str:
    """public_key_sha256: the hex SHA-256 of the DER SubjectPublicKeyInfo."""
    return hashlib.sha256(public_key).hexdigest()


def signature_algorithm(public_key: bytes) -> str:
    """The checkpoint signature algorithm for a key: Ed25519, or ECDSA with SHA-256 on P-256.

    Raises:
        ValueError: the bytes are not a DER SPKI of either kind.
    """
    key = serialization.load_der_public_key(public_key)
    if isinstance(key, ed25519.Ed25519PublicKey):
        return ED25519
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return ECDSA_P256
    raise ValueError("a checkpoint key is Ed25519 or EC P-256")


def signature_valid(public_key: bytes, algorithm: str, data: bytes, signature: bytes) -> bool:
    """Whether signature is the algorithm's signature of data under public_key (DER SPKI)."""
    try:
        if signature_algorithm(public_key) != algorithm:
            return False
        key = serialization.load_der_public_key(public_key)
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        else:
            return False
    except (InvalidSignature, ValueError):
        return False
    return True


def public_key_pem(public_key: bytes) -> bytes:
    key = serialization.load_der_public_key(public_key)
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public_key_pem(pem: bytes) -> bytes:
    """The DER SPKI of a PEM public key of a kind that can sign checkpoints.

    Raises:
        ValueError: not a PEM public key, or not Ed25519 or EC P-256.
    """
    key = serialization.load_pem_public_key(pem)
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signature_algorithm(der)
    return der


def write_atomically(path: Path, data: bytes) -> None:
    """Replaces path with data so that a crash leaves the old or the new content, never a mix:
    a temporary file beside it, fsync, rename over, fsync of the directory. Mode 0600.

    Raises:
        OSError: any step failed (the old file is then still in place).
    """
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(
        temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600
    )
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def read_checkpoint_file(path: Path) -> bytes | None:
    """The checkpoint file's bytes, or None if there is none.

    Raises:
        AuditUnavailable: it exists but cannot be read.
    """
    try:
        with path.open("rb") as f:
            return f.read(_MAX_CHECKPOINT_FILE + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AuditUnavailable(f"cannot read the checkpoint file {path}: {exc.strerror}") from None


def publish_public_key(path: Path, public_key: bytes) -> None:
    """Writes the key's PEM to path if it has none; checks it if it has one.

    Raises:
        AuditBroken: the file holds another key, or no key.
        AuditUnavailable: it cannot be read or written.
    """
    try:
        existing = path.read_bytes()
    except FileNotFoundError:
        try:
            write_atomically(path, public_key_pem(public_key))
        except OSError as exc:
            raise AuditUnavailable(
                f"cannot write the audit public key file {path}: {exc.strerror}"
            ) from None
        log.info("audit checkpoint key sha256:%s written to %s", fingerprint(public_key), path)
        return
    except OSError as exc:
        raise AuditUnavailable(
            f"cannot read the audit public key file {path}: {exc.strerror}"
        ) from None
    try:
        found = load_public_key_pem(existing)
    except ValueError:
        raise AuditBroken(
            f"the audit public key file {path} does not hold an Ed25519 or EC P-256 public "
            f"key in PEM. Move it away; the daemon writes its key there at the next start."
        ) from None
    if found != public_key:
        raise AuditBroken(
            f"the audit public key file {path} holds the key sha256:{fingerprint(found)}, but "
            f"the daemon's checkpoint key is sha256:{fingerprint(public_key)}: the daemon token "
            f"(label hsmd:daemon) or the file was replaced, and checkpoints signed by one key "
            f"do not verify with the other. If the token was replaced on purpose, archive the "
            f"log with `hsmd audit reset`, which also writes the new key here."
        )


def check_anchor(
    log_path: Path, fd: int, size: int, checkpoint_file: Path, public_key: bytes
) -> CheckpointRecord | None:
    """Checks the log (open read-only as fd, size bytes) against its checkpoint file.

    Returns the file's checkpoint, or None when there is no file and the log holds no
    checkpoint (a new log, or one from before checkpoints).

    Raises:
        AuditBroken: the file is not a valid checkpoint of this key, the log does not reach
            it or holds another line there, or the file is missing from a log that has
            checkpoints. The message names the files, what is wrong and what to do.
        AuditUnavailable: a file cannot be read.
    """
    content = read_checkpoint_file(checkpoint_file)
    if content is None:
        if size == 0:
            return None
        last = _last_checkpoint_in(fd, size)
        if last is not None:
            raise AuditBroken(
                f"the checkpoint file {checkpoint_file} is missing, but the audit log "
                f"{log_path} holds checkpoints (the last at line {last}): the file was "
                f"deleted or moved, which would hide lines cut from the log's end. "
                f"{_RESET_HINT}"
            )
        log.warning(
            "audit log %s has no checkpoint yet (a log from before checkpoints, or one whose "
            "daemon never signed): its %d bytes are taken as they are; verify a copy",
            log_path,
            size,
        )
        return None
    checkpoint = parse_checkpoint_file(content, public_key, checkpoint_file)
    signed = format_time(checkpoint.statement.time)
    line = _line_at(fd, checkpoint.offset, size)
    if line is None:
        raise AuditBroken(
            f"the audit log {log_path} was cut: it has {size} bytes, but the checkpoint file "
            f"{checkpoint_file} records line {checkpoint.sequence} at byte {checkpoint.offset} "
            f"(signed {signed}). Lines were removed from its end. {_RESET_HINT}"
        )
    if line != content:
        raise AuditBroken(
            f"the audit log {log_path} does not hold, at byte {checkpoint.offset}, the line "
            f"{checkpoint.sequence} that the checkpoint file {checkpoint_file} records (signed "
            f"{signed}): the log was rewritten or cut and appended to. {_RESET_HINT}"
        )
    statement = checkpoint.statement
    head = _line_at(fd, statement.head_offset, size)
    try:
        head_record = decode_record(head) if head is not None else None
    except MalformedEvent:
        head_record = None
    if (
        head_record is None
        or head_record.sequence != statement.head_sequence
        or head_record.hash != statement.head_hash
        or record_hash(head_record) != head_record.hash
    ):
        raise AuditBroken(
            f"the audit log {log_path} does not hold, at byte {statement.head_offset}, the "
            f"line {statement.head_sequence} that its last checkpoint signs (hash "
            f"{statement.head_hash}, signed {signed}): the log was rewritten. {_RESET_HINT}"
        )
    return checkpoint


def parse_checkpoint_file(content: bytes, public_key: bytes, name: Path) -> CheckpointRecord:
    """The checkpoint a checkpoint file holds, checked on its own: one canonical checkpoint
    line whose hash matches and whose signature verifies with public_key.

    Raises:
        AuditBroken: it is not such a checkpoint.
    """
    problem = checkpoint_file_problem(content, public_key)
    if isinstance(problem, str):
        raise AuditBroken(f"the checkpoint file {name} {problem}. {_RESET_HINT}")
    return problem


def checkpoint_file_problem(content: bytes, public_key: bytes | None) -> CheckpointRecord | str:
    """The checkpoint in a checkpoint file's content, or what is wrong with it (a phrase that
    follows "the checkpoint file NAME"). Without a key the signature is not checked."""
    if len(content) > _MAX_CHECKPOINT_FILE or not content.endswith(b"\n"):
        return "is not one complete line"
    try:
        record = decode_record(content)
    except MalformedEvent as exc:
        return f"is not a valid checkpoint line ({exc})"
    if not isinstance(record, CheckpointRecord):
        return "holds a line that is not a checkpoint"
    if record_hash(record) != record.hash:
        return "holds a line whose hash does not match it (it was edited)"
    if public_key is None:
        return record
    statement = record.statement
    if statement.public_key_sha256 != fingerprint(public_key):
        return (
            f"was signed by the key sha256:{statement.public_key_sha256}, not by the daemon's "
            f"key sha256:{fingerprint(public_key)}"
        )
    if not signature_valid(
        public_key, statement.signature_algorithm, statement.signed_bytes(), record.signature
    ):
        return "holds a signature that does not verify (forged, or the checkpoint was altered)"
    return record


def _line_at(fd: int, offset: int, size: int) -> bytes | None:
    """The complete line (LF included) that starts at offset, or None if there is none."""
    parts: list[bytes] = []
    while offset < size:
        chunk = os.pread(fd, min(_READ_CHUNK, size - offset), offset)
        if not chunk:
            break
        end = chunk.find(b"\n")
        if end >= 0:
            parts.append(chunk[: end + 1])
            return b"".join(parts)
        parts.append(chunk)
        offset += len(chunk)
    return None


def _last_checkpoint_in(fd: int, size: int) -> int | None:
    """The line number of the last checkpoint line, by scanning the whole file once."""
    last = None
    position = 0
    rest = b""
    offset = 0
    marker = b'"kind":"checkpoint"'
    while offset < size:
        chunk = os.pread(fd, min(_READ_CHUNK, size - offset), offset)
        if not chunk:
            break
        offset += len(chunk)
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        for raw in lines:
            position += 1
            # JSON escapes every quote inside a string, so only the member itself can match.
            if marker in raw:
                last = position
    if rest and marker in rest:
        last = position + 1
    return last
