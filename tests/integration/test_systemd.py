"""The daemon under systemd: readiness over $NOTIFY_SOCKET (hsmd/systemd.py) through a real
start, reload and stop, and the shipped unit, which `systemd-analyze verify` accepts."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import DaemonProcess, TestPki

UNIT = Path(__file__).parents[2] / "deploy" / "systemd" / "hsmd.service"


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket where the daemon's notifications arrive, as systemd's would."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(str(path))
        receiver.settimeout(60)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield receiver


def _next(receiver: socket.socket) -> dict[str, str]:
    message = receiver.recv(4096).decode()
    return dict(line.split("=", 1) for line in message.splitlines())


def test_the_daemon_says_when_it_is_ready_reloading_and_stopping(
    tmp_path: Path, pki: TestPki, notify_socket: socket.socket
) -> None:
    daemon = DaemonProcess(tmp_path / "state", pki)
    daemon.start()
    try:
        ready = _next(notify_socket)
        assert ready["READY"] == "1" and ready["STATUS"] == f"listening on 127.0.0.1:{daemon.port}"
        daemon.send(signal.SIGHUP)
        assert _next(notify_socket)["RELOADING"] == "1"
        assert _next(notify_socket)["READY"] == "1"
    finally:
        daemon.stop()
    assert _next(notify_socket) == {"STOPPING": "1"}
    # A clean stop says nothing more: nothing module-wide (the metrics' gauges) keeps the
    # token library alive into the interpreter's end, where it cannot be released cleanly.
    assert "Exception ignored" not in daemon.log.read_text()


def test_the_shipped_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # The unit's ExecStart names the installed daemon, which is not on this machine.
    unit = tmp_path / "hsmd.service"
    unit.write_text(UNIT.read_text().replace("/opt/hsmd/.venv/bin/hsmd", "/usr/bin/true"))
    checked = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert (checked.returncode, checked.stderr) == (0, "")
    assert "Type=notify" in UNIT.read_text()
