"""Start-up repair never destroys what it cannot prove it made, and one bad object, row or token
affects that key or tenant only (DESIGN §7; hsmd.repair decides, hsmd.ops.reconcile acts)."""

from __future__ import annotations

import re
import secrets
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest
from hsmclient import DataLossError, FailedPreconditionError, UnavailableError

from tests.harness import DaemonProcess

TENANT = "repair"
NEIGHBOUR = "neighbour"


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


def _token_ids(daemon: DaemonProcess, tenant: str = TENANT) -> set[str]:
    return {obj["id"] for obj in daemon.token_objects(tenant)}


def _start_fails(daemon: DaemonProcess) -> str:
    """Runs `hsmd serve` expecting it to refuse; returns what it said."""
    result = subprocess.run(
        [sys.executable, "-m", "hsmd", "serve", "--config", str(daemon.config)],
        capture_output=True,
        timeout=120,
    )
    assert result.returncode != 0
    return result.stderr.decode()


def _tenant_token_dir(daemon: DaemonProcess, tenant: str) -> Path:
    (serial,) = daemon.query("SELECT token_serial FROM tenants WHERE name = ?", tenant)[0]
    (directory,) = [d for d in daemon.tokens.iterdir() if d.name.replace("-", "").endswith(serial)]
    return directory


def test_an_unknown_object_is_quarantined_and_an_operator_destroys_it(
    stopped: tuple[DaemonProcess, str, bytes],
) -> None:
    daemon, key_id, blob = stopped
    stranger = secrets.token_bytes(16)
    daemon.probe(TENANT, "orphan", stranger)
    daemon.start()
    assert _token_ids(daemon) == {_object_id(daemon, key_id).hex(), stranger.hex()}
    assert f"object {stranger.hex()} in " in daemon.log.read_text()
    with daemon.admin() as admin:
        (entry,) = admin.iter_quarantined_objects(TENANT)
        assert (entry.tenant, entry.object_id) == (TENANT, stranger.hex())
        admin.destroy_quarantined_object(TENANT, stranger.hex())
        assert list(admin.iter_quarantined_objects()) == []
    assert _token_ids(daemon) == {_object_id(daemon, key_id).hex()}
    with daemon.client(TENANT) as client:
        assert client.decrypt(blob).plaintext == b"before"


def test_an_object_without_an_id_is_quarantined_and_can_be_destroyed(
    stopped: tuple[DaemonProcess, str, bytes],
) -> None:
    daemon, key_id, _ = stopped
    daemon.probe(TENANT, "orphan", b"")  # what a creation torn before it named its object leaves
    daemon.start()
    with daemon.admin() as admin:
        assert [e.object_id for e in admin.iter_quarantined_objects(TENANT)] == [""]
        admin.destroy_quarantined_object(TENANT, "")
        assert list(admin.iter_quarantined_objects()) == []
    assert _token_ids(daemon) == {_object_id(daemon, key_id).hex()}


def test_a_flipped_object_id_quarantines_the_object_and_adoption_gives_the_key_back(
    stopped: tuple[DaemonProcess, str, bytes],
) -> None:
    daemon, key_id, blob = stopped
    real = _object_id(daemon, key_id)
    flipped = bytes([real[0] ^ 0x01]) + real[1:]
    daemon.query("UPDATE key_versions SET object_id = ? WHERE key_id = ?", flipped, key_id)
    loose = secrets.token_bytes(16)
    daemon.probe(TENANT, "orphan", loose)  # an AES-256 key with the library's default rights
    daemon.start()
    assert _token_ids(daemon) == {real.hex(), loose.hex()}  # the real key object is still there
    with daemon.client(TENANT) as client:
        assert client.describe_key(key_id).key_state == "UNAVAILABLE"
        with pytest.raises(FailedPreconditionError, match="UNAVAILABLE"):
            client.decrypt(blob)
    with daemon.admin() as admin:
        quarantined = {e.object_id for e in admin.iter_quarantined_objects(TENANT)}
        assert quarantined == {real.hex(), loose.hex()}
        with pytest.raises(FailedPreconditionError, match="as hsmd makes them"):
            admin.adopt_quarantined_object(TENANT, loose.hex(), key_id, 1)
        adopted = admin.adopt_quarantined_object(TENANT, real.hex(), key_id, 1)
        assert adopted.key_state == "ENABLED"
    with daemon.client(TENANT) as client:
        assert client.decrypt(blob).plaintext == b"before"


def test_a_deleted_version_row_destroys_nothing(stopped: tuple[DaemonProcess, str, bytes]) -> None:
    daemon, key_id, _ = stopped
    real = _object_id(daemon, key_id)
    daemon.query("DELETE FROM key_versions WHERE key_id = ?", key_id)
    daemon.start()
    assert _token_ids(daemon) == {real.hex()}
    with daemon.client(TENANT) as client:
        assert client.describe_key(key_id).key_state == "UNAVAILABLE"


def test_a_copied_state_directory_refuses_the_originals_tokens_and_destroys_nothing(
    stopped: tuple[DaemonProcess, str, bytes], tmp_path: Path
) -> None:
    """`cp -a var var.copy` with a config that still names the original's token directory (as
    configs with absolute paths did): the copy must not touch the original's tokens."""
    original, key_id, blob = stopped
    copy = tmp_path / "copy"
    shutil.copytree(original.directory, copy)
    config = (copy / "hsmd.toml").read_text()
    config = config.replace('token_dir = "tokens"', f'token_dir = "{original.tokens}"')
    (copy / "hsmd.toml").write_text(config)
    result = subprocess.run(
        [sys.executable, "-m", "hsmd", "serve", "--config", str(copy / "hsmd.toml")],
        capture_output=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "is in use by the database at" in result.stderr.decode()
    assert _token_ids(original) == {_object_id(original, key_id).hex()}
    original.start()
    with original.client(TENANT) as client:
        assert client.decrypt(blob).plaintext == b"before"


def test_a_copy_with_its_own_tokens_serves_its_copies_of_the_keys(
    stopped: tuple[DaemonProcess, str, bytes],
    tmp_path: Path,
    new_daemon: Callable[..., DaemonProcess],
) -> None:
    """A whole copy (restore from backup elsewhere) binds the tokens copied with it."""
    original, _, blob = stopped
    shutil.copytree(original.directory, tmp_path / "copy")
    copy = DaemonProcess(tmp_path / "copy", original.pki, existing=True)
    copy.start()
    original.start()
    for daemon in (copy, original):
        with daemon.client(TENANT) as client:
            assert client.decrypt(blob).plaintext == b"before"
    assert "was moved or copied with its tokens" in copy.log.read_text()
    copy.stop()
    original.stop()


def test_a_damaged_object_file_leaves_every_other_key_and_tenant_served(
    new_daemon: Callable[..., DaemonProcess],
) -> None:
    daemon = new_daemon()
    daemon.create_tenant(TENANT)
    daemon.create_tenant(NEIGHBOUR)
    with daemon.client(TENANT) as client:
        keys = [client.create_key().key_id for _ in range(4)]
        blobs = {key_id: client.encrypt(key_id, b"x").ciphertext_blob for key_id in keys}
    with daemon.client(NEIGHBOUR) as client:
        neighbour_key = client.create_key().key_id
    daemon.stop()
    directory = _tenant_token_dir(daemon, TENANT)
    victim = next(p for p in sorted(directory.glob("*.object")) if p.name != "token.object")
    damaged = bytearray(victim.read_bytes())
    damaged[9] ^= 0xFF  # an attribute type: the library can no longer read the object
    victim.write_bytes(damaged)
    daemon.start()
    with daemon.client(NEIGHBOUR) as client:
        assert client.decrypt(client.encrypt(neighbour_key, b"y").ciphertext_blob).plaintext == b"y"
    with daemon.client(TENANT) as client:
        states = {key_id: client.describe_key(key_id).key_state for key_id in keys}
        served = [key_id for key_id, state in states.items() if state == "ENABLED"]
        assert sorted(states.values()) == ["ENABLED"] * 3 + ["UNAVAILABLE"]
        for key_id in served:
            assert client.decrypt(blobs[key_id]).plaintext == b"x"
    lost = next(key_id for key_id, state in states.items() if state == "UNAVAILABLE")
    log = daemon.log.read_text()
    assert f"tenant {TENANT}: key {lost} has lost its token object in {directory}" in log
    assert f"tenant {TENANT}: 1 object(s) in {directory} cannot be read" in log


def test_a_damaged_row_affects_that_key_only(new_daemon: Callable[..., DaemonProcess]) -> None:
    daemon = new_daemon()
    daemon.create_tenant(TENANT)
    daemon.create_tenant(NEIGHBOUR)
    with daemon.client(TENANT) as client:
        damaged, healthy = client.create_key().key_id, client.create_key().key_id
    daemon.stop()
    daemon.query("UPDATE keys SET spec = 'AES_999' WHERE key_id = ?", damaged)
    daemon.start()
    with daemon.client(TENANT) as client:
        with pytest.raises(DataLossError, match=f"key {damaged} is damaged"):
            client.describe_key(damaged)
        with pytest.raises(DataLossError):
            client.encrypt(damaged, b"x")
        assert [key.key_id for key in client.iter_keys()] == [healthy]
        assert client.decrypt(client.encrypt(healthy, b"x").ciphertext_blob).plaintext == b"x"
    with daemon.client(NEIGHBOUR) as client:
        client.create_key()
    assert re.search(
        rf"tenant {TENANT}: key {damaged} has a damaged row in \S*hsmd\.db", daemon.log.read_text()
    )


def test_a_damaged_token_affects_that_tenant_only(new_daemon: Callable[..., DaemonProcess]) -> None:
    daemon = new_daemon()
    daemon.create_tenant(TENANT)
    daemon.create_tenant(NEIGHBOUR)
    with daemon.client(NEIGHBOUR) as client:
        neighbour_key = client.create_key().key_id
    daemon.stop()
    (_tenant_token_dir(daemon, TENANT) / "token.object").write_bytes(b"\0" * 12)
    daemon.start()
    with daemon.client(NEIGHBOUR) as client:
        assert client.describe_key(neighbour_key).key_state == "ENABLED"
        client.create_key()
    with daemon.client(TENANT) as client, pytest.raises(UnavailableError):
        client.create_key()
    assert f"tenant {TENANT} is not served" in daemon.log.read_text()


def test_a_copied_token_beside_the_original_is_refused_with_a_message(
    stopped: tuple[DaemonProcess, str, bytes],
) -> None:
    daemon, _, _ = stopped
    original = _tenant_token_dir(daemon, TENANT)
    shutil.copytree(original, daemon.tokens / "copied-token")
    message = _start_fails(daemon)
    assert "two token directories hold the same token" in message
    assert str(original) in message and "copied-token" in message


def test_a_damaged_database_file_refuses_to_start(
    stopped: tuple[DaemonProcess, str, bytes],
) -> None:
    daemon, _, _ = stopped
    with closing(sqlite3.connect(daemon.database)) as db, db:
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        (root,) = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'keys_deletion'")
    raw = bytearray(daemon.database.read_bytes())
    start = (root[0] - 1) * page_size  # one index's page: the file still opens
    raw[start : start + 8] = b"\x0a\xff\xff\xff\xff\xff\xff\xff"
    daemon.database.write_bytes(raw)
    assert "is damaged (PRAGMA integrity_check" in _start_fails(daemon)


def test_a_second_daemon_on_the_same_state_refuses_to_start(
    new_daemon: Callable[..., DaemonProcess],
) -> None:
    assert "another hsmd process is using" in _start_fails(new_daemon())


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
