"""Client load from processes of their own, so the bench's clients do not share one GIL (or the
daemon's) and a measuring client is not slowed by the flooding ones in its own process.

A load is a list of assignments, (who, key id or key ids), one client thread each, closed loop
(each thread sends its next call when the last is answered, so the threads are the calls in
flight). `measure` spreads them over processes and returns what a window of wall-clock time
saw (items, calls, refusals, the time of each call); `run_in_processes` is its call count,
`Flood` runs a load until stopped, and `latencies` times one client's calls one after another.

Actions are what a call does: "echo" (bench.reference's server), "rsa4096" (CreateKey), one
of OPERATIONS through the generated stub (one item a call), or "batch_" and an operation (the
Batch RPC with BATCH_SIZE items a call). Given several key ids, every item takes one at random.
"""

from __future__ import annotations

import multiprocessing
import queue
import secrets
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.synchronize import Barrier, Event
from types import TracebackType
from typing import Any

import grpc
from google.protobuf.message import Message
from hsmclient.channel import secure_channel

from hsmd.v1 import resources_pb2 as resources
from hsmd.v1 import service_pb2 as service
from hsmd.v1 import service_pb2_grpc
from tests.harness import TestPki

_SPAWN = multiprocessing.get_context("spawn")
ECHO_METHOD = "/bench.Echo/Echo"
KB = b"x" * 1024
PAYLOADS = {"encrypt4k": b"x" * 4096, "echo": KB}
BATCH_SIZE = 100
BATCH_PREFIX = "batch_"

# Operation -> (RPC, one request for a key id). Messages of 1 KB; signatures are over a RAW
# message the daemon hashes, as the raw rates in bench.reference hash it in-process.
OPERATIONS: dict[str, tuple[str, Callable[[str], Message]]] = {
    "encrypt": ("Encrypt", lambda key: service.EncryptRequest(key_id=key, plaintext=KB)),
    "encrypt4k": (
        "Encrypt",
        lambda key: service.EncryptRequest(key_id=key, plaintext=PAYLOADS["encrypt4k"]),
    ),
    "datakey": (
        "GenerateDataKey",
        lambda key: service.GenerateDataKeyRequest(key_id=key, key_spec=resources.DATA_KEY_AES_256),
    ),
    "sign_ecdsa": (
        "Sign",
        lambda key: service.SignRequest(
            key_id=key, message=KB, signing_algorithm=resources.ECDSA_SHA_256
        ),
    ),
    "sign_rsa": (
        "Sign",
        lambda key: service.SignRequest(
            key_id=key, message=KB, signing_algorithm=resources.RSASSA_PKCS1_V1_5_SHA_256
        ),
    ),
    "mac": (
        "GenerateMac",
        lambda key: service.GenerateMacRequest(
            key_id=key, message=KB, mac_algorithm=resources.HMAC_SHA_256
        ),
    ),
}


@dataclass(frozen=True)
class Credentials:
    """What a client in another process needs to connect as one tenant principal."""

    endpoint: str
    ca_cert: bytes
    cert: bytes
    key: bytes = field(repr=False)  # the client's private key: never in a traceback

    @classmethod
    def for_tenant(cls, pki: TestPki, endpoint: str, tenant: str) -> Credentials:
        cert, key = pki.tenant_client(tenant, "bench")
        return cls(endpoint, pki.ca_cert.read_bytes(), cert, key)


Assignment = tuple[Credentials, str | tuple[str, ...]]


@dataclass
class Tally:
    """What a load did: items answered (one a unary call, BATCH_SIZE a batch call), calls
    answered, calls or batch items refused, and each answered call's seconds."""

    items: int = 0
    calls: int = 0
    refused: int = 0
    times: list[float] = field(default_factory=list)

    def add(self, other: Tally) -> None:
        self.items += other.items
        self.calls += other.calls
        self.refused += other.refused
        self.times += other.times


def p50_p99_ms(times: Sequence[float]) -> tuple[float, float]:
    """The median and 99th percentile of call times in seconds, in milliseconds (at least
    two times)."""
    cuts = statistics.quantiles(times, n=100, method="inclusive")
    return cuts[49] * 1000, cuts[98] * 1000


class Refused(Exception):
    """Every item of a call was refused (with the first item's status)."""


def _one_item(call: Callable[[], object]) -> Callable[[], int]:
    def answered() -> int:
        call()
        return 1

    return answered


def _call(action: str, who: Credentials, keys: str | tuple[str, ...]) -> Callable[[], int]:
    """One client's call for an action, as a function of no arguments that returns the items
    answered (and counts refused items in the error it raises, or in `refused`)."""
    channel = secure_channel(who.endpoint, who.ca_cert, who.cert, who.key)
    if action == "echo":
        echo = channel.unary_unary(ECHO_METHOD)
        return _one_item(lambda: echo(PAYLOADS["echo"], timeout=30))
    stub = service_pb2_grpc.KeyManagementServiceStub(channel)
    if action == "rsa4096":
        create = service.CreateKeyRequest(
            key_spec=resources.RSA_4096, key_usage=resources.SIGN_VERIFY
        )
        return _one_item(lambda: stub.CreateKey(create, timeout=120))
    pick = (lambda: keys) if isinstance(keys, str) else (lambda: secrets.choice(keys))
    batched = action.startswith(BATCH_PREFIX)
    rpc, request = OPERATIONS[action.removeprefix(BATCH_PREFIX)]
    if not batched:
        unary = getattr(stub, rpc)
        return _one_item(lambda: unary(request(pick()), timeout=30))
    batch = getattr(stub, f"Batch{rpc}")
    batch_request = getattr(service, f"Batch{rpc}Request")

    def call() -> int:
        items = [request(pick()) for _ in range(BATCH_SIZE)]
        results = batch(batch_request(requests=items), timeout=60).results
        answered = sum(result.WhichOneof("outcome") == "response" for result in results)
        if not answered:
            raise Refused(results[0].error.message if results else "no results")
        return answered

    return call


def _worker(
    action: str,
    assignments: Sequence[Assignment],
    until: Event | float,
    ready: Barrier,
    results: Any,
) -> None:
    """Runs one thread per assignment until `until` (an event, or a number of seconds) and
    puts a Tally on `results`. Every thread connects and makes one call, then every process
    and the parent meet at `ready`, then the window opens. Refused calls (RESOURCE_EXHAUSTED
    under a quota or the fair-share bound) and refused batch items are counted apart, not as
    answered."""
    tallies = [Tally() for _ in assignments]
    calls = [_call(action, *assignment) for assignment in assignments]
    for call in calls:
        try:
            call()
        except (grpc.RpcError, Refused):
            pass  # a refusal before the window is not counted; the connection is made

    ready.wait()
    end = time.monotonic() + until if isinstance(until, float) else 0.0

    def running() -> bool:
        if isinstance(until, float):
            return time.monotonic() < end
        return not until.is_set()

    def run(index: int) -> None:
        call, tally = calls[index], tallies[index]
        while running():
            began = time.perf_counter()
            try:
                answered = call()
            except (grpc.RpcError, Refused):
                tally.refused += BATCH_SIZE if action.startswith(BATCH_PREFIX) else 1
                continue
            tally.times.append(time.perf_counter() - began)
            tally.items += answered
            tally.calls += 1
            tally.refused += (BATCH_SIZE - answered) if action.startswith(BATCH_PREFIX) else 0

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(assignments))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = Tally()
    for tally in tallies:
        total.add(tally)
    results.put(total)


def _split(assignments: Sequence[Assignment], processes: int) -> list[list[Assignment]]:
    return [list(assignments[i::processes]) for i in range(processes) if assignments[i::processes]]


_START_TIMEOUT = 120.0  # seconds for every client process to start and connect
# Seconds a client process may take, past its window, to report (its last calls end first).
_RESULT_TIMEOUT = 300.0


class _Load:
    """Client processes for a load; start() returns once every client has connected and made
    its first call, so the window opens for all of them at once."""

    def __init__(
        self, action: str, assignments: Sequence[Assignment], until: Event | float, processes: int
    ) -> None:
        parts = _split(assignments, processes)
        self._ready = _SPAWN.Barrier(len(parts) + 1)
        self._results = _SPAWN.Queue()
        self._workers = [
            _SPAWN.Process(target=_worker, args=(action, part, until, self._ready, self._results))
            for part in parts
        ]

    def start(self) -> None:
        for worker in self._workers:
            worker.start()
        self._ready.wait(_START_TIMEOUT)

    def join(self) -> Tally:
        total = Tally()
        for _ in self._workers:
            try:
                total.add(self._results.get(timeout=_RESULT_TIMEOUT))
            except queue.Empty:
                exits = [worker.exitcode for worker in self._workers]
                message = f"a client process gave no result (exit codes {exits})"
                raise RuntimeError(message) from None
        for worker in self._workers:
            worker.join()
        return total


def measure(
    action: str, assignments: Sequence[Assignment], seconds: float, processes: int = 2
) -> Tally:
    """What one thread per assignment, over `processes` processes, did in the same window of
    `seconds` (calls begun in the window; the last ones may end just after it)."""
    load = _Load(action, assignments, float(seconds), processes)
    load.start()
    return load.join()


def run_in_processes(
    action: str, assignments: Sequence[Assignment], seconds: float, processes: int = 2
) -> int:
    """Calls answered in `seconds` by one thread per assignment, over `processes` processes."""
    return measure(action, assignments, seconds, processes).calls


class Flood:
    """Processes calling as fast as they can from the start of the block until its end;
    `calls` and `refused` hold their totals afterwards."""

    def __init__(self, action: str, assignments: Sequence[Assignment], processes: int = 2):
        self._stop = _SPAWN.Event()
        self._load = _Load(action, assignments, self._stop, processes)
        self.calls = 0
        self.refused = 0

    def __enter__(self) -> Flood:
        self._load.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        total = self._load.join()
        self.calls, self.refused = total.calls, total.refused


def latencies(who: Credentials, key_id: str, seconds: float) -> tuple[list[float], int]:
    """Seconds per Encrypt of 1 KB, one call after another, from a process of its own, and
    how many calls were refused."""
    tally = measure("encrypt", [(who, key_id)], seconds, processes=1)
    return tally.times, tally.refused
