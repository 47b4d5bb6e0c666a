"""Start-up reconciliation (DESIGN §7): orphans are destroyed, a lost object makes its key
UNAVAILABLE (and ENABLED again when restored), and no two daemons share one state."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable

import pytest
from hsmclient import FailedPreconditionError

from tests.harness import DaemonProcess

TENANT = "repair"


@pytest.fixture
def stopped(new_daemon: Callable[..., DaemonProcess]) -> tuple[DaemonProcess, str, bytes]:
    """A daemon with one key and one ciphertext, stopped so its token can be changed."""
    daemon = new_daemon()
    daemon.create_tenant(TENANT)
    with daemon.client(TENANT) as client:
        key_id = client.create_key().key_id
        blob = client.encrypt(key_id, b"before").ciphertext_blob
    daemon.stop()
    return daemon, key_id, blob


def _object_id(daemon: DaemonProcess, key_id: str) -> bytes:
    (row,) = daemon.query("SELECT object_id FROM key_versions WHERE key_id = ?", key_id)
    return bytes(row[0])


def test_an_orphan_object_is_destroyed_at_start(stopped: tuple[DaemonProcess, str, bytes]) -> None:
    daemon, key_id, _ = stopped
    orphan = secrets.token_bytes(16)
    daemon.probe(TENANT, "orphan", orphan)
    assert len(daemon.token_objects(TENANT)) == 2
    daemon.start()
    assert [obj["id"] for obj in daemon.token_objects(TENANT)] == [_object_id(daemon, key_id).hex()]
    assert "orphans destroyed 1" in daemon.log.read_text()


def test_a_lost_object_makes_the_key_unavailable_until_it_is_restored(
    stopped: tuple[DaemonProcess, str, bytes],
) -> None:
    daemon, key_id, blob = stopped
    backup = daemon.directory / "tokens-backup"
    shutil.copytree(daemon.tokens, backup)
    daemon.probe(TENANT, "destroy", _object_id(daemon, key_id))
    daemon.start()
    with daemon.client(TENANT) as client:
        assert client.describe_key(key_id).key_state == "UNAVAILABLE"
        with pytest.raises(FailedPreconditionError, match="UNAVAILABLE"):
            client.decrypt(blob)
        with pytest.raises(FailedPreconditionError, match="UNAVAILABLE"):
            client.encrypt(key_id, b"x")
    assert "has lost its token object" in daemon.log.read_text()
    daemon.stop()
    shutil.rmtree(daemon.tokens)
    shutil.copytree(backup, daemon.tokens)
    daemon.start()
    with daemon.client(TENANT) as client:
        assert client.describe_key(key_id).key_state == "ENABLED"
        assert client.decrypt(blob).plaintext == b"before"


def test_a_second_daemon_on_the_same_state_refuses_to_start(
    new_daemon: Callable[..., DaemonProcess],
) -> None:
    daemon = new_daemon()
    second = subprocess.run(
        [sys.executable, "-m", "hsmd", "serve", "--config", str(daemon.config)],
        capture_output=True,
        timeout=60,
    )
    assert second.returncode != 0
    assert b"another hsmd process is using" in second.stderr


def test_a_key_without_its_object_cannot_be_made_usable_again(
    stopped: tuple[DaemonProcess, str, bytes],
) -> None:
    """Scheduling an UNAVAILABLE key for deletion and cancelling gives it back UNAVAILABLE,
    not DISABLED, and EnableKey refuses a key whose object is gone."""
    daemon, key_id, _ = stopped
    daemon.probe(TENANT, "destroy", _object_id(daemon, key_id))
    daemon.start()
    with daemon.client(TENANT) as client:
        client.schedule_key_deletion(key_id, 7)
        assert client.cancel_key_deletion(key_id).key_state == "UNAVAILABLE"
        other = client.create_key().key_id
        client.disable_key(other)
    daemon.stop()
    daemon.probe(TENANT, "destroy", _object_id(daemon, other))
    daemon.start()
    with daemon.client(TENANT) as client:
        with pytest.raises(FailedPreconditionError, match="lost its token object"):
            client.enable_key(other)
        assert client.describe_key(other).key_state == "UNAVAILABLE"
