"""docs/formats.md is right: its worked checkpoint example checks, and its third-party verifier
agrees with the daemon's own on clean, cut, rewritten, forged and clock-stepped logs."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from hsmd.audit import events
from hsmd.audit.checkpoint import fingerprint, load_public_key_pem, signature_valid
from hsmd.audit.log import AuditLog
from tests.unit.test_audit_checkpoints import (
    T0,
    FakeSigner,
    Files,
    _closed_log,
    _event,
    _rehash_from,
    _rewrite,
)

FORMATS = Path(__file__).parents[2] / "docs" / "formats.md"


def _section() -> str:
    text = FORMATS.read_text()
    return text[text.index("## Audit log, format 1") : text.index("## Other formats")]


def _blocks(language: str = "") -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", _section(), flags=re.DOTALL)


def test_the_worked_checkpoint_example_checks() -> None:
    blocks = _blocks()
    line = next(b for b in blocks if '"kind":"checkpoint"' in b and b.startswith("{")).encode()
    signed = next(b for b in blocks if b.startswith("hsmd audit checkpoint v1")).rstrip("\n")
    pem = next(b for b in blocks if b.startswith("-----BEGIN PUBLIC KEY-----")).encode()
    first = next(b for b in blocks if b.startswith('{"encryption_context_keys":[]')).split("\n")[0]
    record = events.decode_record(line)
    assert isinstance(record, events.CheckpointRecord)
    assert events.record_hash(record) == record.hash
    assert record.offset == len(first.encode()) + 1 == 436
    assert record.statement.head_hash == events.decode_record(first.encode()).hash
    assert record.statement.signed_bytes() == signed.encode()
    assert len(signed.encode()) == 303
    key = load_public_key_pem(pem)
    assert record.statement.public_key_sha256 == fingerprint(key)
    assert signature_valid(key, events.ED25519, signed.encode(), record.signature)


@pytest.fixture
def files(tmp_path: Path) -> Files:
    return Files(tmp_path)


@pytest.fixture
def verifier(tmp_path: Path) -> Path:
    (code,) = [b for b in _blocks("python") if "def verify(log_path" in b]
    path = tmp_path / "doc" / "verify.py"
    path.parent.mkdir()
    path.write_text(code)
    return path


def _run(verifier: Path, files: Files) -> str:
    done = subprocess.run(
        [
            sys.executable,
            str(verifier),
            str(files.log),
            str(files.checkpoint),
            str(files.public_key),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


@pytest.mark.parametrize("kind", ["ecdsa", "ed25519"])
def test_the_documented_verifier_accepts_what_the_daemon_writes(
    verifier: Path, files: Files, kind: str
) -> None:
    _closed_log(files, FakeSigner(kind), 12, every=5)
    ours = files.verify()
    assert ours.all_well
    assert _run(verifier, files) == f"valid: {ours.events_checked} lines, head {ours.head_hash}\n"


def _edit_principal(obj: dict[str, Any]) -> None:
    obj["principal"] = "tenant/acme/xyz"


def _forge(obj: dict[str, Any]) -> None:
    signature = bytearray.fromhex(obj["signature"])
    signature[5] ^= 1
    obj["signature"] = signature.hex()


@pytest.mark.parametrize(
    ("tamper", "theirs", "ours"),
    [
        (lambda lines: lines[:9], "truncated", "truncated"),
        (
            lambda lines: _rehash_from(lines, 3, _edit_principal),
            "line 6: the checkpoint does not match",
            "another hash",
        ),
        (
            lambda lines: _rehash_from(lines, 12, _forge),
            "line 12: the checkpoint's signature",
            "signature does not verify",
        ),
        (lambda lines: lines[:3] + lines[4:], "line 4: holds sequence 5", "holds sequence 5"),
        (lambda lines: [*lines[:-1], lines[-1][:-1]], "line 15: incomplete", "incomplete"),
    ],
    ids=["cut", "rewritten", "forged", "deleted", "torn"],
)
def test_the_documented_verifier_finds_what_the_daemon_finds(
    verifier: Path, files: Files, tamper: Any, theirs: str, ours: str
) -> None:
    _closed_log(files, FakeSigner("ed25519"), 12, every=5)
    _rewrite(files.log, tamper(files.lines()))
    assert ours in files.verify().problem
    assert _run(verifier, files).startswith(theirs)


def test_the_documented_verifier_reports_time_going_back(verifier: Path, files: Files) -> None:
    signer = FakeSigner("ed25519")
    with AuditLog(files.log, checkpoints=files.checkpointing(signer)) as log:
        for seconds in (0, 10, 5):
            log.append(_event(seconds))
    ours = files.verify()
    assert [(r.position, r.previous_position) for r in ours.time_reversals] == [(3, 2)]
    earlier = events.format_time(T0 + timedelta(seconds=5))
    later = events.format_time(T0 + timedelta(seconds=10))
    assert _run(verifier, files).startswith(
        f"finding: line 3 at {earlier} is earlier than line 2 at {later}\nvalid: 4 lines"
    )


def test_the_public_key_file_is_what_the_documented_verifier_reads(files: Files) -> None:
    _closed_log(files, FakeSigner("ed25519"), 1)
    key = serialization.load_pem_public_key(files.public_key.read_bytes())
    assert key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == load_public_key_pem(files.public_key.read_bytes())
