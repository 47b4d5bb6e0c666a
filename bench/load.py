"""Client load from processes of their own, so the bench's clients do not share one GIL (or the
daemon's) and a measuring client is not slowed by the flooding ones in its own process.

A load is a list of assignments, (who, key id), one client thread each; `run_in_processes`
spreads them over processes and returns the calls made, `Flood` runs them until stopped, and
`latencies` times one client's calls one after another.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.synchronize import Event
from types import TracebackType
from typing import Any

import grpc
from hsmclient import HsmClient, HsmError
from hsmclient.channel import secure_channel

from tests.harness import TestPki

_SPAWN = multiprocessing.get_context("spawn")
ECHO_METHOD = "/bench.Echo/Echo"
PAYLOADS = {"encrypt": b"x" * 1024, "encrypt4k": b"x" * 4096, "echo": b"x" * 1024}


@dataclass(frozen=True)
class Credentials:
    """What a client in another process needs to connect as one tenant principal."""

    endpoint: str
    ca_cert: bytes
    cert: bytes
    key: bytes

    @classmethod
    def for_tenant(cls, pki: TestPki, endpoint: str, tenant: str) -> Credentials:
        cert, key = pki.tenant_client(tenant, "bench")
        return cls(endpoint, pki.ca_cert.read_bytes(), cert, key)


Assignment = tuple[Credentials, str]


def _call(action: str, who: Credentials, key_id: str) -> Any:
    """One client's call for an action, as a function of no arguments."""
    channel = secure_channel(who.endpoint, who.ca_cert, who.cert, who.key)
    if action == "echo":
        echo = channel.unary_unary(ECHO_METHOD)
        return lambda: echo(PAYLOADS["echo"], timeout=30)
    client = HsmClient(channel, timeout=120)
    if action == "rsa4096":
        return lambda: client.create_key("RSA_4096", "SIGN_VERIFY")
    payload = PAYLOADS[action]
    return lambda: client.encrypt(key_id, payload)


def _worker(
    action: str, assignments: Sequence[Assignment], until: Event | float, results: Any
) -> None:
    """Runs one thread per assignment until `until` (an event, or a monotonic deadline) and
    puts the number of calls completed on `results`. Refused calls (RESOURCE_EXHAUSTED under
    a quota or the fair-share bound) are counted apart, not as completed."""
    counts = [0] * len(assignments)
    refused = [0] * len(assignments)

    def running() -> bool:
        if isinstance(until, float):
            return time.monotonic() < until
        return not until.is_set()

    def run(index: int) -> None:
        call = _call(action, *assignments[index])
        while running():
            try:
                call()
                counts[index] += 1
            except (grpc.RpcError, HsmError):  # echo raises the first, the client the second
                refused[index] += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(assignments))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results.put((sum(counts), sum(refused)))


def _split(assignments: Sequence[Assignment], processes: int) -> list[list[Assignment]]:
    return [list(assignments[i::processes]) for i in range(processes) if assignments[i::processes]]


def run_in_processes(
    action: str, assignments: Sequence[Assignment], seconds: float, processes: int = 2
) -> int:
    """Calls completed in `seconds` by one thread per assignment, over `processes` processes
    (all start, then all run for the same wall-clock window)."""
    results = _SPAWN.Queue()
    deadline_offset = 3.0  # every process has started its clients before the window opens
    start = time.monotonic() + deadline_offset
    workers = [
        _SPAWN.Process(target=_timed_worker, args=(action, part, start, seconds, results))
        for part in _split(assignments, processes)
    ]
    for worker in workers:
        worker.start()
    total = sum(results.get()[0] for _ in workers)
    for worker in workers:
        worker.join()
    return total


def _timed_worker(
    action: str, assignments: Sequence[Assignment], start: float, seconds: float, results: Any
) -> None:
    """Counts only the calls of the window [start, start + seconds) (monotonic clocks are
    shared by the processes of one machine)."""
    time.sleep(max(0.0, start - time.monotonic()))
    _worker(action, assignments, start + seconds, results)


class Flood:
    """Processes calling as fast as they can until the block ends; `calls` and `refused` hold
    their totals afterwards."""

    def __init__(self, action: str, assignments: Sequence[Assignment], processes: int = 2):
        self._stop = _SPAWN.Event()
        self._results = _SPAWN.Queue()
        self._workers = [
            _SPAWN.Process(target=_worker, args=(action, part, self._stop, self._results))
            for part in _split(assignments, processes)
        ]
        self.calls = 0
        self.refused = 0

    def __enter__(self) -> Flood:
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        for _ in self._workers:
            calls, refused = self._results.get()
            self.calls += calls
            self.refused += refused
        for worker in self._workers:
            worker.join()


def _time_calls(who: Credentials, key_id: str, seconds: float, results: Any) -> None:
    call = _call("encrypt", who, key_id)
    call()  # the connection is made outside the window
    times, refused = [], 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        began = time.perf_counter()
        try:
            call()
        except HsmError:  # refused (fair share, quota): counted, not timed
            refused += 1
            continue
        times.append(time.perf_counter() - began)
    results.put((times, refused))


def latencies(who: Credentials, key_id: str, seconds: float) -> tuple[list[float], int]:
    """Seconds per Encrypt of 1 KB, one call after another, from a process of its own, and
    how many calls were refused."""
    results = _SPAWN.Queue()
    worker = _SPAWN.Process(target=_time_calls, args=(who, key_id, seconds, results))
    worker.start()
    measured: tuple[list[float], int] = results.get()
    worker.join()
    return measured
