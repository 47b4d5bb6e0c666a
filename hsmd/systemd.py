"""systemd's readiness protocol (sd_notify(3)), without libsystemd: with `Type=notify` the
unit's start waits for READY=1, and `systemctl reload` for RELOADING=1 then READY=1.

Outside systemd ($NOTIFY_SOCKET unset) every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)


def notify(*fields: str) -> None:
    """Sends the fields (READY=1, STOPPING=1, STATUS=...) to the service manager, if any.
    A manager that cannot be reached is logged and otherwise ignored: readiness is its
    business, and the daemon serves either way."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sender:
            sender.sendto("\n".join(fields).encode(), address)
    except OSError as exc:
        log.warning("cannot notify the service manager at %s: %s", address, exc.strerror)


def ready(status: str) -> None:
    notify("READY=1", f"STATUS={status}")


def reloading() -> None:
    """Before a reload; ready() after it. MONOTONIC_USEC tells systemd which reload it is."""
    notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")


def stopping() -> None:
    notify("STOPPING=1")
