"""The client library's retries against a real daemon that restarts: calls safe to repeat
finish across the restart, and a CreateKey sent while the daemon is down is made once it is
back. (That a retried token makes one key whatever the first attempt did is
test_idempotency's, against the daemon directly.)"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hsmclient.client import RETRY_DELAYS as LIBRARY_RETRY_DELAYS

from tests.harness import DaemonProcess, TestPki, wait_until

TENANT = "retries"


@pytest.fixture
def daemon(
    tmp_path: Path, pki: TestPki, monkeypatch: pytest.MonkeyPatch
) -> Iterator[DaemonProcess]:
    monkeypatch.setattr("hsmclient.client.RETRY_DELAYS", LIBRARY_RETRY_DELAYS)
    process = DaemonProcess(tmp_path / "daemon", pki)
    process.start()
    try:
        process.create_tenant(TENANT)
        process.pin_port()
        yield process
    finally:
        if process.process is not None:
            process.stop()


def test_calls_safe_to_repeat_finish_across_a_restart(daemon: DaemonProcess) -> None:
    done: list[bytes] = []
    failures: list[BaseException] = []
    with daemon.client(TENANT) as client:
        key_id = client.create_key().key_id

        def calls() -> None:
            try:
                for n in range(300):
                    blob = client.encrypt(key_id, b"%d" % n).ciphertext_blob
                    done.append(client.decrypt(blob).plaintext)
            except BaseException as exc:
                failures.append(exc)

        worker = threading.Thread(target=calls)
        worker.start()
        wait_until(lambda: len(done) >= 20, "some calls before the restart")
        daemon.stop()
        daemon.start()
        worker.join(120)
    assert not failures, failures
    assert done == [b"%d" % n for n in range(300)]


def test_a_create_key_sent_while_the_daemon_is_down_is_made_once_it_is_back(
    daemon: DaemonProcess,
) -> None:
    with daemon.client(TENANT) as client:
        before = {key.key_id for key in client.list_keys()[0]}
        made: list[str] = []
        daemon.stop()
        worker = threading.Thread(target=lambda: made.append(client.create_key().key_id))
        worker.start()  # UNAVAILABLE until the daemon is back: retried with one token
        daemon.start()
        worker.join(120)
        after = {key.key_id for key in client.list_keys()[0]}
    assert len(made) == 1 and after - before == {made[0]}
