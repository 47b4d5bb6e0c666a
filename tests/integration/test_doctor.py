"""`hsmd doctor` (hsmd/doctor.py) on real deployments made by `hsmd init` (a real token
directory, database and PKI): a sound one is all `ok`, and each fault a deployment can have is
named with its fix: a config that does not load, a private key others can read, a certificate
expired or about to be, a server certificate without the listen address, a token directory
marked as another database's, objects in quarantine. It reads beside a running daemon."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hsmd import devpki
from hsmd.backend import softhsm_files
from hsmd.repair import OwnerMark
from tests.conftest import TENANT_A
from tests.harness import DaemonProcess


def _doctor(config: Path) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "hsmd", "doctor", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout + done.stderr


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A development set-up, made once; tests copy it before they break it."""
    directory = tmp_path_factory.mktemp("made") / "var"
    done = subprocess.run(
        [sys.executable, "-m", "hsmd", "init", "--dir", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return directory


@pytest.fixture
def deployment(made: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "var"
    subprocess.run(["cp", "-a", str(made), str(copy)], check=True)
    return copy


def test_a_sound_deployment_is_all_ok(deployment: Path) -> None:
    code, output = _doctor(deployment / "hsmd.toml")
    assert code == 0, output
    assert all(line.startswith(("ok ", "   ")) for line in output.splitlines()), output


def test_a_config_that_does_not_load_is_a_problem(deployment: Path) -> None:
    config = deployment / "hsmd.toml"
    config.write_text(config.read_text() + "\n[nonsense]\n")
    code, output = _doctor(config)
    assert code == 1 and "PROBLEM  the config does not load: unknown table(s): nonsense" in output


def test_a_server_key_others_can_read_is_a_problem_with_its_fix(deployment: Path) -> None:
    (deployment / "pki" / "server-key.pem").chmod(0o644)
    code, output = _doctor(deployment / "hsmd.toml")
    assert code == 1
    assert "can be read by others (mode 0644)" in output
    assert f"fix: chmod 600 {deployment / 'pki' / 'server-key.pem'}" in output


@pytest.mark.parametrize(
    ("days", "level", "words"),
    [(-1, "PROBLEM", "tls.server_cert expired at"), (10, "warning", "tls.server_cert expires in")],
)
def test_a_server_certificate_near_its_end_is_named(
    deployment: Path, days: int, level: str, words: str
) -> None:
    pki = deployment / "pki"
    ca = devpki.load(pki / "ca.pem", pki / "ca-key.pem")
    ends = datetime.now(UTC) + timedelta(days=days, hours=1)
    devpki.issue(
        ca,
        "localhost",
        hosts=["localhost", "127.0.0.1"],
        server=True,
        not_after=ends,
        not_before=ends - timedelta(days=30),
    ).write(pki / "server.pem", pki / "server-key.pem")
    code, output = _doctor(deployment / "hsmd.toml")
    assert f"{level:8} {words}" in output
    assert code == (1 if level == "PROBLEM" else 0)


def test_a_server_certificate_without_the_listen_address_is_a_warning(deployment: Path) -> None:
    config = deployment / "hsmd.toml"
    config.write_text(
        config.read_text().replace('listen = "127.0.0.1:7443"', 'listen = "10.9.8.7:7443"')
    )
    code, output = _doctor(config)
    assert code == 0  # a warning
    assert "tls.server_cert does not name 10.9.8.7, the address server.listen gives" in output


def test_a_token_directory_of_another_database_is_a_problem(deployment: Path) -> None:
    softhsm_files.write_owner_mark(
        deployment / "tokens", OwnerMark("another-id", "/srv/other/hsmd.db")
    )
    code, output = _doctor(deployment / "hsmd.toml")
    assert code == 1
    assert (
        "the daemon will refuse it: the token directory belongs to another hsmd database" in output
    )


def test_objects_in_quarantine_are_a_warning_with_the_command(deployment: Path) -> None:
    database = sqlite3.connect(deployment / "hsmd.db")
    columns = [row[1] for row in database.execute("PRAGMA table_info(quarantine)")]
    values = {"tenant": "demo", "object_id": "00" * 16, "reason": "test", "found_time": "x"}
    database.execute(
        f"INSERT INTO quarantine ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
        [values.get(column, "x") for column in columns],
    )
    database.commit()
    database.close()
    code, output = _doctor(deployment / "hsmd.toml")
    assert code == 0
    assert "1 token objects are in quarantine" in output and "hsmd quarantine list" in output


def test_it_reads_beside_a_running_daemon(daemon: DaemonProcess) -> None:
    code, output = _doctor(daemon.config)
    assert code == 0, output
    assert f"pkcs11.token_dir {daemon.tokens}" in output
    with daemon.client(TENANT_A) as client:
        assert client.generate_random(4)  # and the daemon serves on
