"""Graceful shutdown: on SIGTERM every call is either answered correctly or refused as
UNAVAILABLE/CANCELLED (never broken), and the daemon stops with exit code 0."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable

import grpc
from hsmclient import HsmError

from tests.harness import DaemonProcess

# What a call that reaches a stopping server may get; any other failure means a call was broken.
_REFUSED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)


def test_sigterm_answers_or_refuses_every_call_and_exits_cleanly(
    new_daemon: Callable[..., DaemonProcess],
) -> None:
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
                except HsmError as exc:
                    if exc.code in _REFUSED:
                        return  # a new call refused after the stop began
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
