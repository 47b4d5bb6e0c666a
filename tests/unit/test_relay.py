"""The relay between a coordinator and its worker processes (hsmd/relay.py), over a real Unix
socket and a real audit log: events from many worker threads join the one chain and are
charged to their tenant, a failed log or a gone coordinator fails the worker closed, rate
admission leases spare calls without admitting beyond the rate, and a broken frame costs
only its own connection."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from hsmd.audit.events import AuditEvent
from hsmd.audit.log import AuditLog, AuditUnavailable
from hsmd.quotas import SPARE_LIMIT, QuotaLimits, TenantMeters, operation_class
from hsmd.relay import (
    RelayClient,
    RelayedAudit,
    RelayedMeters,
    RelayServer,
    keep_lifeline,
    send_frame,
)


@dataclass
class Coordinator:
    log: AuditLog
    meters: TenantMeters
    server: RelayServer
    path: Path
    limits: dict[str, QuotaLimits]
    ready: list[tuple[int, int]] = field(default_factory=list)
    frozen: list[float] = field(default_factory=list)


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[Coordinator]:
    limits: dict[str, QuotaLimits] = {}
    frozen: list[float] = []  # a time here stops the meters' clock (no refill)

    def clock() -> float:
        return frozen[0] if frozen else time.monotonic()

    meters = TenantMeters(lambda tenant: limits.get(tenant, QuotaLimits()), clock, 60)
    log = AuditLog(tmp_path / "audit.jsonl")
    ready: list[tuple[int, int]] = []
    path = tmp_path / "relay.sock"
    server = RelayServer(
        path,
        log,
        meters,
        lambda: {"acme": "serial-1"},
        lambda *told: ready.append(told),
        failed=lambda: None,
    )
    yield Coordinator(log, meters, server, path, limits, ready, frozen)
    server.close()
    log.close()


class CountingClient(RelayClient):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.exchanges = 0

    def exchange(self, request: dict[str, Any]) -> dict[str, Any]:
        self.exchanges += 1
        return super().exchange(request)


def _event(n: int, tenant: str = "acme") -> AuditEvent:
    return AuditEvent(
        time=datetime.now(UTC),
        request_id=f"req{n}",
        tenant=tenant,
        principal=f"tenant/{tenant}/app",
        operation="Encrypt",
        key_id="k1",
        key_version=1,
        encryption_context_keys=(),
        outcome="OK",
        peer="ipv4:127.0.0.1:5555",
    )


def test_events_of_many_worker_threads_join_the_one_chain_and_their_tenants_volume(
    coordinator: Coordinator,
) -> None:
    audit = RelayedAudit(RelayClient(coordinator.path))
    sizes: list[int] = []

    def worker_thread(first: int) -> None:
        for n in range(first, first + 25):
            sizes.append(audit.append(_event(n)).size)
        sizes.extend(done.size for done in audit.append_many([_event(-1), _event(-2)]))

    threads = [threading.Thread(target=worker_thread, args=(i * 100,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    checked = coordinator.log.verify()
    assert checked.valid and checked.events_checked == 8 * 27
    assert coordinator.meters.audit_bytes("acme") == sum(sizes)


def test_a_replication_events_regions_cross_the_relay(coordinator: Coordinator) -> None:
    event = dataclasses.replace(_event(1), operation="PutReplica", regions=("b", "a"))
    RelayedAudit(RelayClient(coordinator.path)).append(event)
    assert coordinator.log.verify().valid
    (line,) = coordinator.log.path.read_text().splitlines()
    assert json.loads(line)["regions"] == ["a", "b"]


def test_a_failed_log_fails_the_workers_calls_closed(coordinator: Coordinator) -> None:
    audit = RelayedAudit(RelayClient(coordinator.path))
    audit.append(_event(1))
    coordinator.log.close()
    for n in (2, 3):
        with pytest.raises(AuditUnavailable, match="closed"):
            audit.append(_event(n))


def test_a_log_moved_away_refuses_the_workers_events_until_it_is_back(
    coordinator: Coordinator, tmp_path: Path
) -> None:
    audit = RelayedAudit(RelayClient(coordinator.path))
    audit.append(_event(1))
    (tmp_path / "audit.jsonl").rename(tmp_path / "moved.jsonl")
    with pytest.raises(AuditUnavailable, match="audit log unavailable"):
        audit.append(_event(2))  # the pre-flight a single process makes before each call
    (tmp_path / "moved.jsonl").rename(tmp_path / "audit.jsonl")
    audit.append(_event(3))
    assert coordinator.log.verify().events_checked == 2


def test_a_gone_coordinator_fails_the_workers_calls_closed(coordinator: Coordinator) -> None:
    audit = RelayedAudit(RelayClient(coordinator.path))
    audit.append(_event(1))
    coordinator.server.close()
    for n in (2, 3):  # the second tries a new connection, and fails too
        with pytest.raises(AuditUnavailable, match="did not answer"):
            audit.append(_event(n))


def test_admission_leases_spare_calls_and_never_admits_beyond_the_rate(
    coordinator: Coordinator,
) -> None:
    coordinator.limits["acme"] = QuotaLimits(symmetric_requests_per_second=1000.0)
    relay = CountingClient(coordinator.path)
    meters = RelayedMeters(relay)
    started = time.monotonic()
    for _ in range(900):  # within the burst: each exchange leases 10 spare calls
        meters.admit("acme", "Encrypt")
    assert relay.exchanges <= 900 / 11 + 1
    admitted = 900 + sum(meters.admit_some("acme", "Encrypt", 1)[0] for _ in range(600))
    elapsed = time.monotonic() - started
    assert admitted <= 1000 + 1000 * elapsed + 1  # the burst and what refilled meanwhile


def test_a_low_rate_is_counted_call_by_call(coordinator: Coordinator) -> None:
    coordinator.limits["acme"] = QuotaLimits(symmetric_requests_per_second=0.5)
    relay = CountingClient(coordinator.path)
    meters = RelayedMeters(relay)
    meters.admit("acme", "Encrypt")
    admitted, refusal = meters.admit_some("acme", "Decrypt", 3)
    assert admitted == 0 and refusal is not None
    assert refusal.retry_after is not None and 0 < refusal.retry_after <= 2
    assert relay.exchanges == 2


def test_a_broken_frame_costs_only_its_own_connection(coordinator: Coordinator) -> None:
    for garbage in (b"\x00\x00\x00\x05hello", b"\xff\xff\xff\xff", b"\x00\x00\x00\x02[]"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
            raw.connect(str(coordinator.path))
            raw.sendall(garbage)
            assert raw.recv(1) == b""  # closed by the coordinator
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.connect(str(coordinator.path))
        send_frame(raw, {"op": "no such exchange"})
        assert raw.recv(1) == b""
    assert RelayClient(coordinator.path).served_tenants() == {"acme": "serial-1"}


def test_the_lifeline_says_ready_and_ends_with_the_coordinator(
    coordinator: Coordinator,
) -> None:
    gone = threading.Event()
    keep_lifeline(coordinator.path, 4242, gone.set)
    assert coordinator.ready and coordinator.ready[0][1] == 4242
    assert not gone.wait(0.2)
    coordinator.server.close()
    assert gone.wait(10)


class TogetherClient(RelayClient):
    """Holds the first `together` exchanges until all of them have begun: admissions that
    meet a used-up lease at the same moment."""

    def __init__(self, path: Path, together: int) -> None:
        super().__init__(path)
        self._together = threading.Barrier(together)

    def exchange(self, request: dict[str, Any]) -> dict[str, Any]:
        with contextlib.suppress(threading.BrokenBarrierError):
            self._together.wait(timeout=10)
        return super().exchange(request)


def test_admissions_at_the_same_moment_ask_for_one_lease(coordinator: Coordinator) -> None:
    """Each lease would replace the last if all asked, and its spare calls be lost from the
    tenant's bucket: only one asks."""
    coordinator.frozen.append(0.0)  # no refill: what the bucket lost is what was taken
    coordinator.limits["acme"] = QuotaLimits(symmetric_requests_per_second=1_600.0)
    meters = RelayedMeters(TogetherClient(coordinator.path, together=8))
    threads = [threading.Thread(target=meters.admit, args=("acme", "Encrypt")) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    left = coordinator.meters._buckets[("acme", operation_class("Encrypt"))].available(0.0)
    assert 1_600 - left == 8 + SPARE_LIMIT  # 8 admitted, one lease of 16


def test_a_worker_frozen_mid_frame_holds_the_others_up_only_briefly(
    coordinator: Coordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("hsmd.relay.FRAME_SECONDS", 0.2)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as frozen:
        frozen.connect(str(coordinator.path))
        frozen.sendall(b"\x00\x00\x00\x64")  # a frame of 100 bytes begins, and stops
        frozen.settimeout(30)  # without FRAME_SECONDS the relay would wait for it for ever
        assert frozen.recv(1) == b""  # closed by the coordinator
    assert RelayClient(coordinator.path).served_tenants() == {"acme": "serial-1"}


def test_a_frame_that_breaks_the_parser_costs_only_its_connection(
    coordinator: Coordinator,
) -> None:
    nested = b"[" * 100_000 + b"]" * 100_000  # RecursionError in json
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.connect(str(coordinator.path))
        raw.sendall(len(nested).to_bytes(4, "big") + nested)
        assert raw.recv(1) == b""
    assert RelayClient(coordinator.path).served_tenants() == {"acme": "serial-1"}
