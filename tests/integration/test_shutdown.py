"""Signals: SIGTERM stops taking calls, waits for the running ones up to the grace period and
only then closes the audit log (no acknowledged call without its event); a call that outlives
the grace period does not hold the daemon up; SIGHUP reloads and never stops it."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from hsmclient import HsmError, ResourceExhaustedError

from tests.harness import DaemonProcess

# What a call that reaches a stopping server may get; any other failure means a call was broken.
_REFUSED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)


@dataclass
class Calls:
    created: list[str] = field(default_factory=list)  # key ids of acknowledged CreateKey calls
    unexpected: list[BaseException] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _keep_creating(daemon: DaemonProcess, tenant: str, calls: Calls, **key: str) -> None:
    with daemon.client(tenant) as client:
        while True:
            try:
                key_id = client.create_key(**key).key_id
            except ResourceExhaustedError as exc:  # the scheduler's wait bound: as asked
                time.sleep(min(exc.retry_after or 1.0, 1.0))
                continue
            except HsmError as exc:
                if exc.code not in _REFUSED:
                    calls.unexpected.append(exc)
                return
            with calls.lock:
                calls.created.append(key_id)


def _audited_creations(daemon: DaemonProcess, *, fallback: bool = False) -> set[str]:
    """Key ids of CreateKey events in the audit log (and, with fallback, of the events the
    daemon could no longer write there and logged as not durable)."""
    lines = daemon.audit_log.read_text().splitlines()
    if fallback:
        marker = "audit event not durable: "
        lines += [
            line.split(marker, 1)[1]
            for line in daemon.log.read_text().splitlines()
            if marker in line
        ]
    events = [json.loads(line) for line in lines]
    return {
        e["key_id"] for e in events if e.get("operation") == "CreateKey" and e["outcome"] == "OK"
    }


def _enabled_keys(daemon: DaemonProcess) -> set[str]:
    return {row[0] for row in daemon.query("SELECT key_id FROM keys WHERE state = 'ENABLED'")}


def _during_calls(
    daemon: DaemonProcess, tenant: str, calls: Calls, action: Callable[[], None], **key: str
) -> None:
    """Runs action once eight clients have had some CreateKey calls acknowledged."""
    threads = [
        threading.Thread(target=_keep_creating, args=(daemon, tenant, calls), kwargs=key)
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    daemon.wait_for(lambda: len(calls.created) >= 8, timeout=120)
    action()
    for thread in threads:
        thread.join(60)


def test_sigterm_with_calls_in_flight_loses_no_audit_event(
    new_daemon: Callable[..., DaemonProcess],
) -> None:
    daemon = new_daemon()
    daemon.create_tenant("calm")
    calls = Calls()
    stopped: list[int] = []
    _during_calls(daemon, "calm", calls, lambda: stopped.append(daemon.stop(signal.SIGTERM)))
    assert stopped == [0]
    assert calls.unexpected == []
    assert set(calls.created) <= _audited_creations(daemon)
    assert _enabled_keys(daemon) == _audited_creations(daemon)
    log = daemon.log.read_text()
    assert "stopped" in log and "audit event not durable" not in log


def test_a_call_that_outlives_the_grace_period_does_not_hold_the_daemon(
    new_daemon: Callable[..., DaemonProcess],
) -> None:
    """RSA-4096 generation takes seconds; with a 1 s grace the daemon stops after the one
    token operation in progress, turning away the calls queued behind it."""
    daemon = new_daemon(grace_seconds=1)
    daemon.create_tenant("slow")
    calls = Calls()
    stopped: list[int] = []
    _during_calls(
        daemon,
        "slow",
        calls,
        lambda: stopped.append(daemon.stop(signal.SIGTERM, timeout=60)),
        key_spec="RSA_4096",
        key_usage="SIGN_VERIFY",
    )
    assert stopped == [0]
    assert calls.unexpected == []
    assert set(calls.created) <= _audited_creations(daemon)
    # A key the call in progress finished after the log closed has its event in the fallback.
    assert _enabled_keys(daemon) <= _audited_creations(daemon, fallback=True)
    assert "still running after the 1.0s grace period are cancelled" in daemon.log.read_text()


def test_sighup_reloads_the_log_level_and_never_stops_the_daemon(
    new_daemon: Callable[..., DaemonProcess],
) -> None:
    daemon = new_daemon()
    daemon.create_tenant("hup")
    daemon.config.write_text(daemon.config.read_text() + '\n[log]\nlevel = "WARNING"\n')
    daemon.send(signal.SIGHUP)
    daemon.wait_for(lambda: "SIGHUP: reloaded" in daemon.log.read_text())
    with daemon.client("hup") as client:
        key_id = client.create_key().key_id  # served after the signal
    assert key_id not in daemon.log.read_text()  # INFO access lines are off now
    daemon.config.write_text(daemon.config.read_text() + "\n[nonsense]\n")
    daemon.send(signal.SIGHUP)
    daemon.wait_for(lambda: "is not reloaded, the running settings stay" in daemon.log.read_text())
    with daemon.client("hup") as client:
        assert client.describe_key(key_id).key_state == "ENABLED"
    assert daemon.stop(signal.SIGTERM) == 0
