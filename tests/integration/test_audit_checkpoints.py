"""Signed audit checkpoints through the real daemon: written every N events and at a clean
stop, checked offline by `hsmd audit verify`, checked at start-up (a cut log is refused until
`hsmd audit reset`), and a break found live stops every call.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from hsmclient import UnavailableError

from tests.conftest import TENANT_A
from tests.harness import DaemonProcess, run_hsmd

NewDaemon = Callable[..., DaemonProcess]


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _kinds(path: Path) -> list[str]:
    return [str(json.loads(line).get("kind", "event")) for line in _lines(path)]


def _busy_daemon(new_daemon: NewDaemon, encrypts: int = 10, **audit: Any) -> DaemonProcess:
    """A daemon with tenant alpha, one key and `encrypts` Encrypt calls in its log."""
    daemon = new_daemon(audit=audit or None)
    daemon.create_tenant(TENANT_A)
    with daemon.client(TENANT_A, "app") as app:
        key_id = app.create_key().key_id
        for _ in range(encrypts):
            app.encrypt(key_id, b"x")
    return daemon


def _copy(daemon: DaemonProcess, to: Path) -> tuple[Path, Path, Path]:
    to.mkdir()
    copies = tuple(
        Path(shutil.copy(path, to / path.name))
        for path in (daemon.audit_log, daemon.checkpoint_file, daemon.public_key_file)
    )
    return copies[0], copies[1], copies[2]


def _verify(log: Path, checkpoint: Path, key: Path) -> tuple[int, str]:
    done = run_hsmd(
        "audit", "verify", "--log", str(log), "--checkpoint", str(checkpoint), "--public-key",
        str(key),
    )  # fmt: skip
    return done.returncode, done.stdout + done.stderr


def _rehash_from(
    lines: list[bytes], start: int, change: Callable[[dict[str, Any]], None]
) -> list[bytes]:
    """Edits line `start` and re-chains every later line, as a writer without the key would."""
    out = list(lines[: start - 1])
    previous = json.loads(lines[start - 2])["hash"]
    for index in range(start - 1, len(lines)):
        obj = json.loads(lines[index])
        if index == start - 1:
            change(obj)
        if obj.get("kind") == "checkpoint":
            obj["offset"] = sum(len(line) for line in out)
        obj["previous_hash"] = previous
        del obj["hash"]
        body = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        obj["hash"] = previous = hashlib.sha256(f"{previous}\n{body}".encode()).hexdigest()
        out.append(
            json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
            + b"\n"
        )
    return out


def test_checkpoints_come_every_n_events_and_at_a_clean_stop(new_daemon: NewDaemon) -> None:
    daemon = _busy_daemon(new_daemon, encrypts=10, checkpoint_every_events=5)
    daemon.wait_for(lambda: _kinds(daemon.audit_log).count("checkpoint") == 2)
    with daemon.admin() as admin:
        result = admin.verify_audit_log()
    assert result.valid and result.checkpoints_verified == 2
    assert result.checkpoint_file_position == result.last_checkpoint_position
    assert (
        daemon.checkpoint_file.read_bytes()
        == _lines(daemon.audit_log)[result.last_checkpoint_position - 1]
    )
    serialization.load_pem_public_key(daemon.public_key_file.read_bytes())
    assert daemon.stop() == 0
    kinds = _kinds(daemon.audit_log)
    assert kinds[-1] == "checkpoint"
    assert kinds.count("event") == 13  # CreateTenant, CreateKey, 10 Encrypt, VerifyAuditLog
    assert daemon.checkpoint_file.read_bytes() == _lines(daemon.audit_log)[-1]
    for path in (daemon.audit_log, daemon.checkpoint_file):
        assert path.stat().st_mode & 0o777 == 0o600


def test_the_daemon_key_is_in_its_own_token_sensitive_and_not_extractable(
    new_daemon: NewDaemon,
) -> None:
    daemon = new_daemon()
    daemon.stop()
    objects = daemon.daemon_token_objects()
    private = [o for o in objects if o["sign"] is True]
    assert len(objects) == 2 and len(private) == 1
    assert {k: private[0][k] for k in ("sensitive", "extractable", "never_extractable")} == {
        "sensitive": True,
        "extractable": False,
        "never_extractable": True,
    }
    assert private[0]["value"] == "AttributeSensitive"


def test_the_offline_command_verifies_a_copy_and_finds_a_cut_and_a_rewrite(
    new_daemon: NewDaemon, tmp_path: Path
) -> None:
    daemon = _busy_daemon(new_daemon, encrypts=10, checkpoint_every_events=5)
    daemon.wait_for(lambda: _kinds(daemon.audit_log).count("checkpoint") == 2)
    daemon.stop()
    log, checkpoint, key = _copy(daemon, tmp_path / "copy")
    code, output = _verify(log, checkpoint, key)
    assert code == 0, output
    assert "result: OK" in output and "checkpoints: 3" in output

    original = _lines(log)
    log.write_bytes(b"".join(original[:-3]))  # the last checkpoint and lines before it
    code, output = _verify(log, checkpoint, key)
    assert code == 1 and "truncat" in output, output

    rewritten = _rehash_from(original, 3, lambda obj: obj.update(principal="tenant/alpha/evil"))
    log.write_bytes(b"".join(rewritten))
    code, output = _verify(log, checkpoint, key)
    assert code == 1 and "BROKEN at line" in output, output

    log.write_bytes(b"".join(original))
    assert _verify(log, checkpoint, key)[0] == 0
    checkpoint.unlink()
    code, output = _verify(log, checkpoint, key)
    assert code == 1 and "is missing" in output, output


def test_the_offline_command_refuses_bad_usage(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    log.write_bytes(b"")
    assert run_hsmd("audit", "verify", "--log", str(log)).returncode == 2  # no --public-key
    (tmp_path / "key.pem").write_text("not a key")
    done = run_hsmd("audit", "verify", "--log", str(log), "--public-key", str(tmp_path / "key.pem"))
    assert done.returncode == 2 and "not an Ed25519 or EC P-256 public key" in done.stderr


def test_a_daemon_refuses_to_start_on_a_cut_log_until_it_is_reset(
    new_daemon: NewDaemon, tmp_path: Path
) -> None:
    daemon = _busy_daemon(new_daemon, encrypts=3)
    refused = run_hsmd("audit", "reset", "--config", str(daemon.config))
    assert refused.returncode == 1 and "another hsmd process" in refused.stderr
    assert not list(daemon.directory.glob("*.archived-*"))
    daemon.stop()  # signs a checkpoint as the last line
    lines = _lines(daemon.audit_log)
    daemon.audit_log.write_bytes(b"".join(lines[:-2]))

    code, output = daemon.start_fails()
    assert code == 1
    assert f"the audit log {daemon.audit_log} was cut" in output
    assert str(daemon.checkpoint_file) in output
    assert f"hsmd audit reset --config {daemon.config}" in output

    report = _reset(daemon)
    assert "log truncated" in report and "archived" in report
    archives = sorted(daemon.directory.glob("audit.jsonl*.archived-*"))
    assert len(archives) == 3

    daemon.start()
    with daemon.client(TENANT_A, "app") as app:
        app.generate_random(8)
    with daemon.admin() as admin:
        result = admin.verify_audit_log()
    assert result.valid, result.problem
    archive = next(path for path in archives if path.name.startswith("audit.jsonl.archived-"))
    assert (result.previous_log, result.previous_log_position) == (archive.name, len(lines) - 2)
    assert result.previous_log_hash == json.loads(lines[-3])["hash"]
    assert _kinds(daemon.audit_log)[:2] == ["reset", "checkpoint"]

    # The archive still shows the cut, with its own checkpoint and key.
    checkpoint, key = (
        next(path for path in archives if path.name.startswith(name + ".archived-"))
        for name in (daemon.checkpoint_file.name, daemon.public_key_file.name)
    )
    code, output = _verify(archive, checkpoint, key)
    assert code == 1 and "truncat" in output


def _reset(daemon: DaemonProcess) -> str:
    done = run_hsmd("audit", "reset", "--config", str(daemon.config))
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_a_live_cut_is_reported_and_then_every_call_is_refused(new_daemon: NewDaemon) -> None:
    daemon = _busy_daemon(new_daemon, encrypts=4)
    lines = _lines(daemon.audit_log)
    with daemon.audit_log.open("r+b") as f:
        f.truncate(len(b"".join(lines[:-2])))
    size = daemon.audit_log.stat().st_size
    with daemon.admin() as admin, daemon.client(TENANT_A, "app") as app:
        result = admin.verify_audit_log()
        assert (result.valid, result.first_broken_position) == (False, len(lines) - 1)
        assert "truncated" in result.problem
        refused: list[Callable[[], object]] = [
            lambda: app.generate_random(8),
            app.create_key,
            admin.list_tenants,
            admin.verify_audit_log,
            admin.list_audit_events,
        ]
        for call in refused:
            with pytest.raises(UnavailableError):
                call()
    assert daemon.audit_log.stat().st_size == size  # nothing more was appended
    assert daemon.log.read_text().count("Every call is refused from now on") == 1
    assert daemon.stop() == 0


def test_a_time_going_back_is_a_finding_of_verify_audit_log(
    new_daemon: NewDaemon, tmp_path: Path
) -> None:
    daemon = new_daemon()
    daemon.create_tenant(TENANT_A)  # line 1
    daemon.clock_file.write_text("-7200")  # the clock goes two hours back
    with daemon.client(TENANT_A, "app") as app:
        app.generate_random(8)  # line 2
    with daemon.admin() as admin:
        result = admin.verify_audit_log()
    assert result.valid  # a finding, not a break: the daemon goes on
    assert result.time_reversal_count == 1
    (reversal,) = result.time_reversals
    assert (reversal.position, reversal.previous_position) == (2, 1)
    assert 7100 < (reversal.previous_time - reversal.time).total_seconds() < 7300
    daemon.stop()
    log, checkpoint, key = _copy(daemon, tmp_path / "copy")
    code, output = _verify(log, checkpoint, key)
    assert code == 1 and "line 2 at" in output and "is earlier than line 1 at" in output
