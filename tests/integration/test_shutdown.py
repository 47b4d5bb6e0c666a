"""Graceful shutdown: on SIGTERM in-flight requests finish, new ones are refused, exit code 0."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable

from hsmclient import HsmError, UnavailableError

from tests.harness import DaemonProcess


def test_sigterm_lets_in_flight_requests_finish(new_daemon: Callable[..., DaemonProcess]) -> None:
    daemon = new_daemon()
    daemon.create_tenant("calm")
    answered: list[bool] = []
    unexpected: list[BaseException] = []
    started = threading.Event()

    def keep_calling() -> None:
        with daemon.client("calm") as client:
            key_id = client.create_key().key_id
            started.set()
            while True:
                try:
                    blob = client.encrypt(key_id, b"in flight").ciphertext_blob
                    answered.append(client.decrypt(blob).plaintext == b"in flight")
                except UnavailableError:
                    return  # refused after the stop began: the only acceptable failure
                except HsmError as exc:
                    unexpected.append(exc)
                    return

    threads = [threading.Thread(target=keep_calling) for _ in range(8)]
    for thread in threads:
        thread.start()
    assert started.wait(30)
    time.sleep(0.5)
    assert daemon.stop(signal.SIGTERM) == 0
    for thread in threads:
        thread.join(30)
    assert unexpected == []
    assert answered and all(answered)
    assert "stopped" in daemon.log.read_text()
