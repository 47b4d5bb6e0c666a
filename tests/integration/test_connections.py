"""Connections cannot exhaust the daemon: a flood of TCP connections that never start TLS is
capped ([server] max_connections) and closed after the handshake timeout, and authenticated
clients, those connected before and those that come after, are served throughout."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import DaemonProcess, TestPki

TENANT = "flooded"
CAP = 64
FLOOD = 400


@pytest.fixture
def daemon(tmp_path: Path, pki: TestPki) -> Iterator[DaemonProcess]:
    daemon = DaemonProcess(tmp_path / "daemon", pki)
    limits = f"max_connections = {CAP}\nhandshake_timeout_seconds = 1\n"
    daemon.config.write_text(daemon.config.read_text().replace("[server]\n", f"[server]\n{limits}"))
    daemon.start()
    daemon.create_tenant(TENANT)
    yield daemon
    daemon.stop()


def _open_descriptors(daemon: DaemonProcess) -> int:
    assert daemon.process is not None
    return len(os.listdir(f"/proc/{daemon.process.pid}/fd"))


def _closed_by_peer(connection: socket.socket) -> bool:
    try:
        return connection.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:  # reset
        return True


def test_a_flood_of_connections_that_never_start_tls_leaves_clients_served(
    daemon: DaemonProcess,
) -> None:
    with daemon.client(TENANT) as client:
        key_id = client.create_key().key_id
        before = _open_descriptors(daemon)
        flood = [socket.create_connection(("127.0.0.1", daemon.port)) for _ in range(FLOOD)]
        try:
            for connection in flood:
                connection.setblocking(False)
            blob = client.encrypt(key_id, b"during the flood").ciphertext_blob
            assert client.decrypt(blob).plaintext == b"during the flood"
            # The daemon holds no more than the cap, however many connect (and a few files).
            assert _open_descriptors(daemon) <= before + CAP + 8
            # Every connection that never started TLS is closed by the daemon.
            deadline = time.monotonic() + 60
            open_ones = list(flood)
            while open_ones and time.monotonic() < deadline:
                open_ones = [c for c in open_ones if not _closed_by_peer(c)]
                time.sleep(0.1)
            assert open_ones == []
        finally:
            for connection in flood:
                connection.close()
    with daemon.client(TENANT) as newcomer:
        assert newcomer.decrypt(blob).plaintext == b"during the flood"
