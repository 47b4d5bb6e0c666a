"""The README's path: `hsmd init` then `hsmd serve` (what `make run` does), and `hsm` from
another shell with var/client.env sourced."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _env_from(path: Path) -> dict[str, str]:
    """What `source client.env` would export."""
    env = dict(os.environ)
    for line in path.read_text().splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        env[name] = value.replace("$PATH", env.get("PATH", ""))
    return env


def _hsm(env: dict[str, str], *args: str, stdin: bytes = b"") -> dict[str, object]:
    result = subprocess.run(
        [str(BIN / "hsm"), *args], env=env, input=stdin, capture_output=True, timeout=60
    )
    assert result.returncode == 0, result.stderr.decode()
    parsed: dict[str, object] = json.loads(result.stdout)
    return parsed


@pytest.fixture
def var(tmp_path: Path) -> Path:
    directory = tmp_path / "var"
    listen = f"127.0.0.1:{_free_port()}"
    for _ in range(2):  # the second run reuses what the first made
        subprocess.run(
            [str(BIN / "hsmd"), "init", "--dir", str(directory), "--listen", listen],
            check=True,
            capture_output=True,
            timeout=120,
        )
    return directory


def test_init_makes_a_complete_private_set_up(var: Path) -> None:
    assert stat.S_IMODE((var / "master.secret").stat().st_mode) == 0o600
    for key in (var / "pki").rglob("*-key.pem"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert (var / "client.env").exists() and (var / "operator.env").exists()


def test_serve_then_hsm_from_another_shell(var: Path) -> None:
    log = (var / "serve.log").open("wb")
    daemon = subprocess.Popen(
        [str(BIN / "hsmd"), "serve", "--config", str(var / "hsmd.toml")], stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + 60
        while b"listening on" not in (var / "serve.log").read_bytes():
            assert daemon.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        assert b"source " in (var / "serve.log").read_bytes()
        env = _env_from(var / "client.env")
        created = _hsm(env, "create-key", "--description", "tour")
        key_id = created["KeyMetadata"]["KeyId"]  # type: ignore[index]
        (var / "secret.txt").write_bytes(b"hello from the tour")
        encrypted = _hsm(
            env,
            "encrypt",
            "--key-id",
            key_id,
            "--plaintext",
            f"fileb://{var / 'secret.txt'}",
            "--encryption-context",
            "app=tour",
        )
        blob_file = var / "secret.bin"
        blob_file.write_bytes(base64.b64decode(encrypted["CiphertextBlob"]))  # type: ignore[arg-type]
        decrypted = _hsm(
            env,
            "decrypt",
            "--ciphertext-blob",
            f"fileb://{blob_file}",
            "--encryption-context",
            "app=tour",
        )
        assert base64.b64decode(decrypted["Plaintext"]) == b"hello from the tour"  # type: ignore[arg-type]
        operator_env = _env_from(var / "operator.env")
        result = subprocess.run(
            [str(BIN / "hsmd"), "tenant", "create", "tour-two"],
            env=operator_env,
            capture_output=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr.decode()
    finally:
        daemon.send_signal(signal.SIGINT)
        assert daemon.wait(30) == 0
        log.close()
