"""The local channel between the coordinator process and its worker processes (hsmd/workers.py).

A worker serves calls on existing keys with its own token sessions, but the tenant's rate
quotas and the one audit chain stay in the coordinator: a worker asks it to admit a call (or a
batch chunk) against the tenant's rate, and hands it each call's audit event, returning only
once the coordinator has appended it durably (fail closed: no answer without its event). The
coordinator adds the event's size to the tenant's audit volume, as it does for its own calls.

The channel is a Unix stream socket in a directory only the daemon's user can enter (mode
0700): whoever can connect runs as that user, and could read the master secret anyway. Each
worker thread keeps a connection of its own and makes one exchange at a time on it, so an
exchange is a send and a blocking receive on the calling thread (no dispatcher thread, no
hand-off). A frame is a 4-byte big-endian length and a JSON object.

Exchanges (worker -> coordinator, each answered once):
  {"op": "admit", "tenant", "rpc", "count", "lease"}
                                               -> {"admitted", "spare", "refusal": null | {...}}
  {"op": "refund", "tenant", "rpc"}            -> {}
  {"op": "append", "events": [...]}            -> {"sizes": [...]} | {"unavailable": message}
  {"op": "tenants"}                            -> {"tenants": {name: token serial}}
  {"op": "ready", "port"}                      -> {}   (the worker serves on that port)
  {"op": "audit_problem"}                      -> {"problem": why the log takes no events, or None}
The tenants are those whose tokens the coordinator serves: a worker opens just those. After
"ready", the worker's lifeline connection stays open without a further exchange; it ends only
when the coordinator exits, and then the worker stops.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from hsmd.audit.events import AuditEvent
from hsmd.audit.log import AuditLog, AuditUnavailable
from hsmd.errors import ResourceExhausted
from hsmd.quotas import OperationClass, TenantMeters, operation_class

log = logging.getLogger(__name__)

# A batch's events (1,000 items of at most limits.MAX_AUDIT_EVENT_BYTES, whatever JSON makes
# of their characters) fit with room left.
_MAX_FRAME = 64 * 1024 * 1024
# A worker's exchange that the coordinator has not answered by then fails (UNAVAILABLE), and
# its connection is closed: a coordinator that stalls does not hold workers' threads forever.
EXCHANGE_TIMEOUT_SECONDS = 30.0
_LENGTH = 4
_ACCEPT_RETRY_SECONDS = 0.1
# How long a frame that has begun may take to arrive whole (RelayServer).
FRAME_SECONDS = 2.0
# How long a worker may use the spare calls of a lease (RelayedMeters).
SPARE_SECONDS = 1.0


class RelayBroken(Exception):
    """The other end closed the channel or sent something that is not a frame."""


def send_frame(connection: socket.socket, message: dict[str, Any]) -> None:
    data = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
    connection.sendall(len(data).to_bytes(_LENGTH, "big") + data)


def receive_frame(connection: socket.socket) -> dict[str, Any]:
    """The next frame's object. Raises RelayBroken at the end of the stream, or for a frame
    that is too long or not a JSON object."""
    size = int.from_bytes(_receive_exactly(connection, _LENGTH), "big")
    if size > _MAX_FRAME:
        raise RelayBroken(f"a frame of {size} bytes is over the limit")
    try:
        message = json.loads(_receive_exactly(connection, size))
    except ValueError as exc:
        raise RelayBroken("a frame is not JSON") from exc
    if not isinstance(message, dict):
        raise RelayBroken("a frame is not a JSON object")
    return message


def _receive_exactly(connection: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = connection.recv(min(size, 1 << 20))
        if not chunk:
            raise RelayBroken("the other process closed the channel")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _event_fields(event: AuditEvent) -> dict[str, Any]:
    fields = asdict(event)
    fields["time"] = event.time.isoformat()
    return fields


def _event(fields: dict[str, Any]) -> AuditEvent:
    """The event a worker sent (ValueError, TypeError or KeyError if it is not one)."""
    fields = dict(fields)
    fields["time"] = datetime.fromisoformat(fields["time"])
    for name in ("encryption_context_keys", "regions"):
        if not isinstance(fields[name], list):
            raise TypeError(f"{name} must be a list")
        fields[name] = tuple(fields[name])
    return AuditEvent(**fields)


class RelayServer:
    """The coordinator's end. One thread serves every worker's connection: each turn it reads
    the exchanges that have arrived, answers admissions and the rest at once, and appends all
    the events that arrived as one group (one write, one fsync), then answers those. So the
    calls of every worker at one moment share one sync, and a turn wakes one thread, not one
    per connection (which cost the coordinator more than the events themselves: ~20 futex
    calls and ~0.9 fsyncs a call when each connection had its own thread). Before each group
    it checks the log as a single process does before each call (AuditLog.ensure_writable:
    the file still there, space left), and refuses the group if not.

    A worker sends each frame whole, so a frame that has begun must end within
    FRAME_SECONDS: a worker that stops mid-frame (frozen) has its connection closed, and
    holds the others up at most that long. Whatever one exchange raises costs that exchange
    (its connection is closed; its call fails, closed), never the thread; if the thread ends
    all the same, it says so (failed), so that no worker waits on a relay gone silent."""

    def __init__(
        self,
        path: Path,
        audit: AuditLog,
        meters: TenantMeters,
        served_tenants: Callable[[], dict[str, str]],
        ready: Callable[[int, int], None],
        failed: Callable[[], None],
    ) -> None:
        """served_tenants(): the tenants whose tokens the coordinator serves, with their token
        serials. ready(pid, port): a worker process serves on port. failed(): the relay's
        thread has ended on an error it could not contain."""
        self._audit = audit
        self._meters = meters
        self._served_tenants = served_tenants
        self._ready = ready
        self._failed = failed
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        os.chmod(path, 0o600)
        self._listener.listen(256)
        self._wake, self._waker = socket.socketpair()  # close() wakes the turn waiting
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wake, selectors.EVENT_READ)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="hsmd-relay", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stops serving; the workers' next exchanges fail (they have stopped by then)."""
        if self._closed:
            return
        self._closed = True
        self._waker.send(b"x")
        self._thread.join()
        for key in list(self._selector.get_map().values()):
            self._selector.unregister(key.fileobj)
            cast(socket.socket, key.fileobj).close()
        self._selector.close()
        self._waker.close()

    def _run(self) -> None:
        try:
            self._serve()
        except BaseException:
            log.critical("the relay to the worker processes failed", exc_info=True)
            self._failed()
            raise

    def _serve(self) -> None:
        while not self._closed:
            appends: list[tuple[socket.socket, int, dict[str, Any]]] = []
            for key, _ in self._selector.select():
                connection = cast(socket.socket, key.fileobj)
                if connection is self._listener:
                    self._accept()
                elif connection is not self._wake:
                    request = self._receive(connection, key.data)
                    if request is not None and request.get("op") == "append":
                        appends.append((connection, key.data, request))
                    elif request is not None:
                        self._answer(connection, key.data, request)
            if appends:
                self._append(appends)

    def _accept(self) -> None:
        try:
            connection, _ = self._listener.accept()
        except OSError as exc:  # out of descriptors: the connection waits in the backlog
            log.error("the relay cannot take a worker's connection: %s", exc)
            time.sleep(_ACCEPT_RETRY_SECONDS)
            return
        connection.settimeout(FRAME_SECONDS)
        self._selector.register(connection, selectors.EVENT_READ, _peer_pid(connection))

    def _receive(self, connection: socket.socket, pid: int) -> dict[str, Any] | None:
        """The next exchange on a connection the selector found readable; None, with the
        connection closed, at its end (the worker exited) or on a broken frame."""
        try:
            return receive_frame(connection)
        except (RelayBroken, OSError):  # the end of the stream, a timeout
            pass
        except Exception:  # RecursionError, MemoryError: a frame no worker sends
            log.exception("worker %d sent a frame the coordinator cannot read", pid)
        self._drop(connection)
        return None

    def _drop(self, connection: socket.socket) -> None:
        self._selector.unregister(connection)
        connection.close()

    def _reply(self, connection: socket.socket, reply: dict[str, Any]) -> None:
        try:
            send_frame(connection, reply)
        except OSError:
            self._drop(connection)

    def _answer(self, connection: socket.socket, pid: int, request: dict[str, Any]) -> None:
        try:
            reply = self._reply_to(request, pid)
        except Exception:
            log.exception("worker %d sent an exchange the coordinator cannot answer", pid)
            self._drop(connection)  # its call fails, closed: nothing was half-done here
            return
        self._reply(connection, reply)

    def _reply_to(self, request: dict[str, Any], pid: int) -> dict[str, Any]:
        op = request["op"]
        if op == "admit":
            tenant, rpc, count = request["tenant"], request["rpc"], int(request["count"])
            if count < 1:
                raise ValueError(f"an admission of {count} calls")
            admitted, refusal = self._meters.admit_some(tenant, rpc, count)
            if refusal is not None:
                return {
                    "admitted": admitted,
                    "spare": 0,
                    "refusal": {"message": str(refusal), "retry_after": refusal.retry_after},
                }
            spare = self._meters.take_spare(tenant, rpc) if request.get("lease") else 0
            return {"admitted": admitted, "spare": spare, "refusal": None}
        if op == "refund":
            self._meters.refund(request["tenant"], request["rpc"])
            return {}
        if op == "tenants":
            return {"tenants": self._served_tenants()}
        if op == "ready":
            self._ready(pid, int(request["port"]))
            return {}
        if op == "audit_problem":
            return {"problem": self._audit.problem()}
        raise ValueError(f"unknown exchange {op!r}")

    def _append(self, requests: list[tuple[socket.socket, int, dict[str, Any]]]) -> None:
        """Appends the events of every request of the turn as one group, and answers each."""
        groups: list[tuple[socket.socket, list[AuditEvent]]] = []
        for connection, pid, request in requests:
            try:
                groups.append((connection, [_event(fields) for fields in request["events"]]))
            except Exception:
                log.exception("worker %d sent events the coordinator cannot read", pid)
                self._drop(connection)
        events = [event for _, group in groups for event in group]
        try:
            self._audit.ensure_writable()  # the pre-flight of each worker call (see class doc)
            appended = iter(self._audit.append_many(events))
        except Exception as exc:  # AuditUnavailable, or the clock or anything else failing
            if not isinstance(exc, AuditUnavailable):
                log.exception("the workers' events could not be appended")
            for connection, _ in groups:
                self._reply(connection, {"unavailable": str(exc)})
            return
        for connection, group in groups:
            sizes = []
            for event in group:
                size = next(appended).size
                if event.tenant:
                    self._meters.charge_audit(event.tenant, size)
                sizes.append(size)
            self._reply(connection, {"sizes": sizes})


def _peer_pid(connection: socket.socket) -> int:
    """The connected process's pid (SO_PEERCRED), for log lines."""
    credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    return int.from_bytes(credentials[:4], "little")


class RelayClient:
    """A worker's end: one connection per thread, opened on first use, and closed (to be
    opened again by the thread's next exchange) when an exchange on it fails. That the
    coordinator is gone for good is the lifeline's to tell (keep_lifeline)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._local = threading.local()

    def audit_problem(self) -> str | None:
        """Why the coordinator's audit log cannot take events now, or None (a worker's health
        check: every call it serves needs that log)."""
        try:
            problem = self.exchange({"op": "audit_problem"})["problem"]
        except AuditUnavailable as exc:
            return str(exc)
        return None if problem is None else str(problem)

    def served_tenants(self) -> dict[str, str]:
        """The tenants whose tokens the coordinator serves, with their token serials."""
        tenants = self.exchange({"op": "tenants"})["tenants"]
        return {str(name): str(serial) for name, serial in tenants.items()}

    def exchange(self, request: dict[str, Any]) -> dict[str, Any]:
        """Sends one request and returns its answer. Raises AuditUnavailable if the exchange
        fails: without the coordinator nothing can be audited, so nothing may be answered."""
        connection: socket.socket | None = getattr(self._local, "connection", None)
        try:
            if connection is None:
                connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                connection.settimeout(EXCHANGE_TIMEOUT_SECONDS)
                connection.connect(str(self._path))
                self._local.connection = connection
            send_frame(connection, request)
            return receive_frame(connection)
        except (OSError, RelayBroken) as exc:
            self._local.connection = None
            if connection is not None:
                connection.close()
            raise AuditUnavailable(f"the coordinator process did not answer: {exc}") from exc


@dataclass(frozen=True)
class RelayedEvent:
    """An event the coordinator made durable: the size its line added (audit.log.Written)."""

    size: int


def keep_lifeline(path: Path, port: int, gone: Callable[[], None]) -> None:
    """Tells the coordinator this worker serves on port, then calls gone() from a thread of
    its own once the coordinator's end closes (it exited, however). Raises OSError or
    RelayBroken if the coordinator cannot be told."""
    lifeline = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lifeline.connect(str(path))
    send_frame(lifeline, {"op": "ready", "port": port})
    receive_frame(lifeline)

    def wait() -> None:
        with lifeline:
            try:
                lifeline.recv(1)  # never answered: returns at the end of the stream
            except OSError:
                pass
        gone()

    threading.Thread(target=wait, name="hsmd-lifeline", daemon=True).start()


class RelayedAudit:
    """The audit log as the guard of a worker sees it (audit.log.AuditSink): events go to
    the coordinator's log, and append returns once the coordinator has made them durable."""

    def __init__(self, relay: RelayClient) -> None:
        self._relay = relay

    def ensure_writable(self, *, check_length: bool = True) -> None:
        """Refuses nothing: the coordinator checks its log as it appends each event (the
        pre-flight a single process makes before an operation), and a worker serves no call
        that changes anything, so a refused event costs the call its answer, never an
        unrecorded change."""

    def append(self, event: AuditEvent) -> RelayedEvent:
        return self.append_many([event])[0]

    def append_many(self, events: Sequence[AuditEvent]) -> list[RelayedEvent]:
        if not events:
            return []
        reply = self._relay.exchange({"op": "append", "events": [_event_fields(e) for e in events]})
        if "unavailable" in reply:
            raise AuditUnavailable(reply["unavailable"])
        return [RelayedEvent(size) for size in reply["sizes"]]


@dataclass
class _Lease:
    """Calls a worker may admit by itself for a tenant's operation class, until when, and
    whether one of its threads is asking for more (one at a time, so they never add up)."""

    spare: int = 0
    until: float = 0.0
    asking: bool = False


class RelayedMeters:
    """The tenant meters as the guard of a worker sees them: the coordinator's. An admission
    may also lease the worker spare calls (TenantMeters.take_spare: at most SPARE_LIMIT, a
    hundredth of the rate), which it admits by itself for up to SPARE_SECONDS; unused ones
    lapse. Only one thread asks for a lease at a time, and only once the last is used up, so
    a worker holds at most one lease. So a tenant is never admitted beyond its rate, and a
    worker holds back at most a hundredth of it. The audit volume is charged by the
    coordinator as it appends each event."""

    def __init__(self, relay: RelayClient) -> None:
        self._relay = relay
        self._lock = threading.Lock()
        self._leases: dict[tuple[str, OperationClass], _Lease] = {}

    def admit(self, tenant: str, rpc: str) -> None:
        _, refusal = self.admit_some(tenant, rpc, 1)
        if refusal is not None:
            raise refusal

    def admit_some(self, tenant: str, rpc: str, count: int) -> tuple[int, ResourceExhausted | None]:
        now = time.monotonic()
        with self._lock:
            lease = self._leases.setdefault((tenant, operation_class(rpc)), _Lease())
            if now >= lease.until:
                lease.spare = 0
            from_spare = min(count, lease.spare)
            lease.spare -= from_spare
            if from_spare == count:
                return count, None
            asks = not lease.asking  # (the lease is used up: from_spare < count)
            lease.asking |= asks
        spare = 0
        try:
            reply = self._relay.exchange(
                {
                    "op": "admit",
                    "tenant": tenant,
                    "rpc": rpc,
                    "count": count - from_spare,
                    "lease": asks,
                }
            )
            spare = int(reply["spare"]) if asks else 0
        finally:
            if asks:
                with self._lock:
                    lease.asking = False
                    lease.spare, lease.until = spare, time.monotonic() + SPARE_SECONDS
        admitted, refusal = from_spare + int(reply["admitted"]), reply["refusal"]
        if refusal is None:
            return admitted, None
        return admitted, ResourceExhausted(refusal["message"], retry_after=refusal["retry_after"])

    def refund(self, tenant: str, rpc: str) -> None:
        self._relay.exchange({"op": "refund", "tenant": tenant, "rpc": rpc})

    def charge_audit(self, tenant: str, size: int) -> None:
        """Charged by the coordinator as it appends (RelayServer)."""
