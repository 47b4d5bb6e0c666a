"""Online backup and restore (hsmd/ops/backup.py, `hsmd backup`, `hsmd restore`), through real
daemons: a snapshot taken while two tenants' calls run, restored into a fresh state directory,
serves every key made before it, decrypts every ciphertext answered before it, and its audit
chain verifies; a restore refuses a state that is not empty, a snapshot that was changed, and
a master secret that is not the tokens'."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.harness import DaemonProcess, TestPki

TENANTS = ("first", "second")


def _hsmd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hsmd", *args], capture_output=True, text=True, env=env, timeout=300
    )


def _operator_env(daemon: DaemonProcess, directory: Path) -> dict[str, str]:
    cert, key = daemon.pki.operator_client()
    directory.mkdir()
    (directory / "ops.pem").write_bytes(cert)
    (directory / "ops-key.pem").write_bytes(key)
    return {
        **os.environ,
        "HSM_ENDPOINT": daemon.endpoint,
        "HSM_CA_CERT": str(daemon.pki.ca_cert),
        "HSM_CLIENT_CERT": str(directory / "ops.pem"),
        "HSM_CLIENT_KEY": str(directory / "ops-key.pem"),
    }


def _restored(tmp_path: Path, pki: TestPki, name: str, secret: bytes) -> DaemonProcess:
    """A daemon's state directory and config, not started, with this master secret."""
    target = DaemonProcess(tmp_path / name, pki)
    (target.directory / "master.secret").write_bytes(secret)
    return target


def test_a_backup_under_load_restores_every_key_and_answer(tmp_path: Path, pki: TestPki) -> None:
    live = DaemonProcess(tmp_path / "live", pki)
    live.start()
    answered: list[tuple[str, bytes, bytes]] = []  # tenant, blob, plaintext
    made: list[tuple[str, str]] = []  # tenant, key id
    stop = threading.Event()

    def load(tenant: str) -> None:
        with live.client(tenant) as client:
            key_id = client.create_key().key_id
            made.append((tenant, key_id))
            n = 0
            while not stop.is_set():
                n += 1
                if n % 10 == 0:
                    key_id = client.create_key().key_id
                    made.append((tenant, key_id))
                plaintext = os.urandom(16)
                answered.append(
                    (tenant, client.encrypt(key_id, plaintext).ciphertext_blob, plaintext)
                )

    try:
        for tenant in TENANTS:
            live.create_tenant(tenant)
        workers = [threading.Thread(target=load, args=(tenant,)) for tenant in TENANTS]
        for worker in workers:
            worker.start()
        while len(answered) < 50:
            threading.Event().wait(0.05)
        answered_before, made_before = list(answered), list(made)
        took = _hsmd("backup", env=_operator_env(live, tmp_path / "operator"))
        stop.set()
        for worker in workers:
            worker.join()
    finally:
        stop.set()
        live.stop()
    assert took.returncode == 0, took.stderr
    match = re.search(r"backup: (\S+)", took.stdout)
    assert match, took.stdout
    snapshot = Path(match.group(1))
    assert "the master secret is not in it" in took.stdout
    assert not (snapshot / "master.secret").exists()

    restored = _restored(tmp_path, pki, "restored", live.master_secret)
    done = _hsmd("restore", "--from", str(snapshot), "--config", str(restored.config))
    assert done.returncode == 0, done.stderr
    restored.start()
    try:
        for tenant in TENANTS:
            with restored.client(tenant) as client:
                for owner, key_id in made_before:
                    if owner == tenant:
                        assert client.describe_key(key_id).key_state == "ENABLED"
                for owner, blob, plaintext in answered_before:
                    if owner == tenant:
                        assert client.decrypt(blob).plaintext == plaintext
        with restored.admin() as admin:
            assert admin.verify_audit_log().valid
        again = _hsmd("restore", "--from", str(snapshot), "--config", str(restored.config))
        assert again.returncode != 0 and "restore needs an empty state" in again.stderr
    finally:
        restored.stop()


@pytest.fixture
def snapshot(tmp_path: Path, pki: TestPki) -> tuple[Path, bytes]:
    daemon = DaemonProcess(tmp_path / "source", pki)
    daemon.start()
    try:
        daemon.create_tenant(TENANTS[0])
        took = _hsmd("backup", env=_operator_env(daemon, tmp_path / "operator"))
    finally:
        daemon.stop()
    assert took.returncode == 0, took.stderr
    match = re.search(r"backup: (\S+)", took.stdout)
    assert match
    return Path(match.group(1)), daemon.master_secret


def test_a_changed_snapshot_is_refused(
    tmp_path: Path, pki: TestPki, snapshot: tuple[Path, bytes]
) -> None:
    changed = tmp_path / "changed"
    shutil.copytree(snapshot[0], changed)
    database = changed / "hsmd.db"
    data = database.read_bytes()
    database.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    target = _restored(tmp_path, pki, "target", snapshot[1])
    done = _hsmd("restore", "--from", str(changed), "--config", str(target.config))
    assert done.returncode != 0 and "hsmd.db does not match the manifest" in done.stderr
    assert not target.database.exists()


def test_another_master_secret_is_refused(
    tmp_path: Path, pki: TestPki, snapshot: tuple[Path, bytes]
) -> None:
    target = _restored(tmp_path, pki, "target", os.urandom(32))
    done = _hsmd("restore", "--from", str(snapshot[0]), "--config", str(target.config))
    assert done.returncode != 0 and "is not the master secret of this snapshot" in done.stderr
    assert not target.database.exists()


@pytest.mark.parametrize("tokens", [["../outside"], []])
def test_a_manifest_whose_tokens_are_not_its_directories_is_refused(
    tmp_path: Path, pki: TestPki, snapshot: tuple[Path, bytes], tokens: list[str]
) -> None:
    """A name that leaves the token directory, or a list that leaves tokens out, is refused
    before anything is written."""
    changed = tmp_path / "changed"
    shutil.copytree(snapshot[0], changed)
    manifest = json.loads((changed / "manifest.json").read_text())
    manifest["tokens"] = tokens
    (changed / "manifest.json").write_text(json.dumps(manifest))
    target = _restored(tmp_path, pki, "target", snapshot[1])
    done = _hsmd("restore", "--from", str(changed), "--config", str(target.config))
    assert done.returncode != 0 and "manifest's tokens are not its token directories" in done.stderr
    assert not target.database.exists() and not (tmp_path / "outside").exists()
