"""The request guard: every RPC goes through it, so a new RPC is protected and audited by
default.

gRPC server interceptors do not see the TLS auth context, so the guard wraps each handler
instead: it gives the request an id, takes the identity from the peer certificate (never from
what a client sends; in the coordinator of worker processes, from the certificate a worker's
handshake saw, transport/forward.py) once hsmd.auth.certificates has verified it beyond the
handshake, checks the principal kind the service is for, checks that the audit log can be
written before anything happens (fail closed), hands the RequestContext to the servicer
through a context variable, turns every exception into a status through the one table,
records one audit event of the outcome (durably, before the reply), and logs one access line
(with the reason when a certificate is refused). In a worker process it passes the calls a
worker does not serve to the coordinator (transport/forward.py), counted among its handlers.

The audit event is built here from the request and response messages: only their key id,
key version and encryption-context keys are read, never a plaintext, key or context value.
Every request's sizes are checked (hsmd/transport/bounds.py) as soon as the caller is known,
before anything is looked up, and what the event records of the caller's input is bounded by
the audit budgets of hsmd/limits.py whatever was sent, so a refused call too makes one event
of at most limits.MAX_AUDIT_EVENT_BYTES.

A request that does not parse as its message type is answered INVALID_ARGUMENT and audited like
any refusal, with one WARNING line at most a few times a second (gRPC itself would answer
INTERNAL and log a traceback). The guard also counts the handlers running, so that shutdown can
wait for them before it closes the audit log (drain).
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from google.protobuf.message import DecodeError
from google.rpc import status_pb2

from hsmd import limits, metrics
from hsmd.audit.events import AuditEvent, bounded_keys, bounded_text
from hsmd.audit.log import AuditSink, AuditUnavailable, Written
from hsmd.auth.authorize import require_kind
from hsmd.auth.certificates import ClientCertificateVerifier
from hsmd.domain import Clock, Principal, PrincipalKind, RequestContext, is_valid_region_name
from hsmd.errors import (
    BackendError,
    BackendUnavailable,
    DeadlineExceeded,
    InvalidArgument,
    ResourceExhausted,
    Unauthenticated,
)
from hsmd.names import is_valid_tenant_name
from hsmd.quotas import SLOW_RPCS, Meters
from hsmd.scheduler import Scheduler
from hsmd.transport.batch import CHUNK_ITEMS, UNARY_OPERATIONS, BatchRunner, ItemOutcome, Unary
from hsmd.transport.bounds import check_batch, check_request
from hsmd.transport.forward import (
    REQUEST_ID_METADATA,
    SERVED_BY_WORKERS,
    Caller,
    Forwarder,
    TlsCaller,
    passes_bytes,
)
from hsmd.transport.status import is_internal, rpc_status_of, to_status, with_details

log = logging.getLogger("hsmd.access")

# VerifyAuditLog reports a broken log: its pre-flight does not refuse a log cut shorter (the
# check finds and reports that), and when its check has just found the log broken, which stops
# the log, its report is still answered though its own event cannot be written (the access
# line, at ERROR, records the call). Every later call is refused.
_VERIFY_AUDIT_LOG = "VerifyAuditLog"

# Which kind of principal each service is for. Services not named here (health, reflection)
# need a client certificate from our CA, like every connection, but no particular identity.
SERVICE_PRINCIPALS = {
    "hsmd.v1.KeyManagementService": PrincipalKind.TENANT,
    "hsmd.v1.AdminService": PrincipalKind.OPERATOR,
    "hsmd.v1.RegionService": PrincipalKind.REGION,
}

_current: contextvars.ContextVar[RequestContext] = contextvars.ContextVar("hsmd_request")
_current_batch: contextvars.ContextVar[BatchRunner] = contextvars.ContextVar("hsmd_batch")


def current_request() -> RequestContext:
    """The RequestContext of the RPC this thread is serving (set by the guard)."""
    return _current.get()


class RequestGuard(grpc.ServerInterceptor):
    def __init__(
        self,
        certificates: ClientCertificateVerifier,
        admit_tenant: Callable[[str], None],
        audit: AuditSink,
        clock: Clock,
        admission: Admission | None = None,
        *,
        caller: Caller | None = None,
        forwarder: Forwarder | None = None,
        region: str | None = None,
    ) -> None:
        """caller: where the caller's certificate is read (the TLS handshake with this
        process unless the call was forwarded to it). forwarder: in a worker process, the
        channel that passes to the coordinator the calls a worker does not serve itself
        (hsmd/transport/forward.py). region: this instance's region, named with the other
        region in the events of multi-region keys' replication."""
        self._certificates = certificates
        self._caller = caller or TlsCaller()
        self._forwarder = forwarder
        self._admit_tenant = admit_tenant
        self._audit = audit
        self._clock = clock
        self._region = region
        self._admission = admission
        self._handlers = _Handlers()
        self._malformed_log = _RateLimitedLog(log, per_second=5)

    def drain(self, timeout: float) -> int:
        """Waits up to timeout seconds for every running handler to finish; returns how many
        are still running (shutdown: the server has stopped taking calls)."""
        return self._handlers.wait_idle(timeout)

    def at_work(self) -> int:
        """Calls at work, each appending its audit event before it ends (AuditLog
        .expect_appends): unary calls, not slow ones, from their scheduler slot to their end.
        Calls waiting for a slot are not counted: the first of a group would otherwise wait
        out its window for them."""
        return self._handlers.working

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method: str = handler_call_details.method
        service = method.split("/")[1] if method.count("/") == 2 else ""
        required = SERVICE_PRINCIPALS.get(service)
        operation = _operation(method)
        forwarder = self._forwarder
        if forwarder is not None and required is not None and operation not in SERVED_BY_WORKERS:
            return grpc.unary_unary_rpc_method_handler(
                self._counted(lambda request, context: forwarder.forward(method, request, context))
            )
        handler = continuation(handler_call_details)
        if handler is None or required is None:
            return handler
        if handler.unary_unary is None:
            raise AssertionError(f"{method}: only unary RPCs are guarded; add streaming support")
        guarded = self._guarded_batch if operation in UNARY_OPERATIONS else self._guarded
        behaviour = guarded(method, required, handler.unary_unary)
        if forwarder is not None:
            behaviour = self._here_or_forwarded(method, behaviour, forwarder)
        return grpc.unary_unary_rpc_method_handler(
            behaviour,
            request_deserializer=_lenient(handler.request_deserializer),
            response_serializer=passes_bytes(handler.response_serializer),
        )

    def _here_or_forwarded(
        self, method: str, here: Callable[[Any, grpc.ServicerContext], Any], forwarder: Forwarder
    ) -> Callable[[Any, grpc.ServicerContext], Any]:
        """A worker's call of an operation it serves: served here, unless its tenant's token
        is not open in this process (a tenant made after it started), then forwarded."""

        def behaviour(request: Any, context: grpc.ServicerContext) -> Any:
            if isinstance(request, Malformed):
                return here(request, context)
            try:
                tenant = self._identify(context).tenant
            except Exception:  # refused: the guard answers it here, as any refusal
                return here(request, context)
            if tenant is None or forwarder.serves(tenant):
                return here(request, context)
            forward = self._counted(lambda raw, call: forwarder.forward(method, raw, call))
            return forward(request.SerializeToString(), context)

        return behaviour

    def _counted(
        self, behaviour: Callable[[Any, grpc.ServicerContext], Any]
    ) -> Callable[[Any, grpc.ServicerContext], Any]:
        """A forwarded call, counted among the running handlers, so that a worker's drain at
        shutdown waits for its answer too (the coordinator audits it)."""

        def counted(request: Any, context: grpc.ServicerContext) -> Any:
            self._handlers.enter()
            try:
                return behaviour(request, context)
            finally:
                self._handlers.leave(_Work(counted=False))

        return counted

    def _guarded(
        self, method: str, required: PrincipalKind, behaviour: Callable[[Any, Any], Any]
    ) -> Callable[[Any, grpc.ServicerContext], Any]:
        operation = _operation(method)
        slow = operation in SLOW_RPCS

        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            self._handlers.enter()
            work = _Work(counted=not slow)
            try:
                return handle(request, context, work)
            finally:
                self._handlers.leave(work)

        def handle(request: Any, context: grpc.ServicerContext, work: _Work) -> Any:
            request_id = uuid.uuid4().hex
            context.set_trailing_metadata(((REQUEST_ID_METADATA, request_id),))
            started = time.perf_counter()
            principal: Principal | None = None
            response: Any = None
            failure: Exception | None = None
            recorded: Written | AuditUnavailable | None = None
            recording = False

            def record() -> Written | AuditUnavailable:
                """The call's audit event appended durably, or why it could not be."""
                code = to_status(failure, request_id)[0] if failure else grpc.StatusCode.OK
                event = self._event(
                    request_id, operation, principal, context, request, response, code
                )
                try:
                    return self._audit.append(event)
                except AuditUnavailable as exc:
                    return exc

            try:
                principal = self._identify(context)
                self._let_in(principal, required, method, request, request_id)
                check_request(request)
                self._audit.ensure_writable(check_length=operation != _VERIFY_AUDIT_LOG)
                token = _current.set(RequestContext(request_id, principal))
                try:
                    # The slot spans the call's work through its durable audit event: all
                    # but gRPC's own part of the CPU a call costs, which the GIL shares among
                    # every thread at work. So the fair share is a share of the CPU, and a
                    # tenant's flood cannot crowd another's calls out of it (docs/concurrency
                    # .md). A call over its rate quota takes one too, to record its refusal
                    # in (its tenant's cost, not the others'), if one frees in time.
                    refusal = self._rate_refusal(principal, operation)
                    with self._scheduled(
                        principal.tenant,
                        operation,
                        0 if refusal else 1,
                        context.time_remaining(),
                        required=refusal is None,
                    ):
                        self._handlers.start_work(work)
                        try:
                            if refusal is not None:
                                raise refusal
                            response = behaviour(request, context)
                        except Exception as exc:
                            failure = exc
                        recording = True
                        recorded = record()
                finally:
                    _current.reset(token)
            except Exception as exc:
                if recording:  # not the call's failure: recording it failed unexpectedly
                    raise
                failure = exc
            if recorded is None:  # refused before it ran: recorded outside any slot
                recorded = record()
            if isinstance(recorded, AuditUnavailable):
                if _reports_a_break(operation, failure, response):
                    log.error(
                        "%s %s %s OK, answered without its audit event: it found the log broken",
                        request_id,
                        method,
                        principal,
                    )
                    return response
                failure = recorded
            else:
                self._charge_audit(principal, recorded)
            elapsed_ms = (time.perf_counter() - started) * 1000
            if failure is None:
                log.info(
                    "%s %s %s OK %.1fms",
                    request_id,
                    method,
                    principal,
                    elapsed_ms,
                    extra=_answered(request_id, operation, principal, None, elapsed_ms),
                )
                return response
            who = principal or self._caller.peer(context)
            _end_with_failure(context, method, who, failure, elapsed_ms, request_id)

        return guarded

    def _guarded_batch(
        self, method: str, required: PrincipalKind, behaviour: Callable[[Any, Any], Any]
    ) -> Callable[[Any, grpc.ServicerContext], Any]:
        """The batch twin of _guarded (hsmd/transport/batch.py): the caller, the batch's
        bounds and the audit log are checked once, for the whole batch; each item is then
        checked, admitted, scheduled and run as its unary call (_BatchRun), and all items'
        events are appended as one group. Only a whole-batch refusal or an unwritable audit
        log fails the call; its event is the batch's own."""
        operation = _operation(method)
        unary = UNARY_OPERATIONS[operation]

        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            self._handlers.enter()
            try:
                return handle(request, context)
            finally:
                self._handlers.leave(_Work(counted=False))

        def handle(request: Any, context: grpc.ServicerContext) -> Any:
            batch_id = uuid.uuid4().hex
            context.set_trailing_metadata(((REQUEST_ID_METADATA, batch_id),))
            started = time.perf_counter()
            principal: Principal | None = None
            run: _BatchRun | None = None
            response: Any = None
            failure: Exception | None = None
            try:
                principal = self._identify(context)
                self._let_in(principal, required, method, request, batch_id)
                check_batch(request)
                self._audit.ensure_writable()
                run = _BatchRun(self, batch_id, principal, unary, context)
                token = _current_batch.set(run)
                try:
                    response = behaviour(request, context)
                finally:
                    _current_batch.reset(token)
            except Exception as exc:
                failure = exc
            code = to_status(failure, batch_id)[0] if failure else grpc.StatusCode.OK
            events = [
                self._event(
                    item.request_id,
                    unary,
                    principal,
                    context,
                    item.request,
                    item.response,
                    _code(item.error),
                )
                for item in (run.outcomes if run else [])
            ]
            if failure is not None:
                events.append(
                    self._event(batch_id, operation, principal, context, request, None, code)
                )
            try:
                for appended in self._audit.append_many(events):
                    self._charge_audit(principal, appended)
            except AuditUnavailable as exc:
                failure = exc
            elapsed_ms = (time.perf_counter() - started) * 1000
            if failure is None:
                log.info(
                    "%s %s %s OK %.1fms %s",
                    batch_id,
                    method,
                    principal,
                    elapsed_ms,
                    _item_codes(events),
                    extra=_answered(batch_id, operation, principal, None, elapsed_ms),
                )
                return response
            who = principal or self._caller.peer(context)
            _end_with_failure(context, method, who, failure, elapsed_ms, batch_id)

        return guarded

    def _event(
        self,
        request_id: str,
        operation: str,
        principal: Principal | None,
        context: grpc.ServicerContext,
        request: Any,
        response: Any,
        code: grpc.StatusCode,
    ) -> AuditEvent:
        """The audit event of one outcome: key and version, context keys, never a value."""
        metadata = _field(response, "key_metadata") or _field(response, "replica_key_metadata")
        key_id = (
            _field(response, "key_id") or (metadata.key_id if metadata else "")
        ) or _request_key(request)
        return AuditEvent(
            time=self._clock.now(),
            request_id=request_id,
            tenant=_event_tenant(principal, request),
            principal=str(principal) if principal else "",
            operation=operation,
            key_id=bounded_text(key_id, limits.AUDIT_KEY_ID_BYTES),
            key_version=int(_field(response, "key_version") or 0),
            encryption_context_keys=bounded_keys(
                _context_keys(request), limits.AUDIT_CONTEXT_KEYS_BYTES
            ),
            outcome=code.name,
            peer=bounded_text(self._caller.peer(context), limits.AUDIT_PEER_BYTES),
            regions=_event_regions(self._region, principal, request),
        )

    # Quotas and fair share (hsmd.quotas, hsmd.scheduler): tenant calls only; operators'
    # calls are neither counted nor scheduled.

    @contextmanager
    def _scheduled(
        self,
        tenant: str | None,
        operation: str,
        calls: int,
        patience: float | None,
        *,
        required: bool = True,
    ) -> Iterator[None]:
        """Runs the block in a scheduler slot of the tenant's (none for an operator), waited
        for at most `patience` (the call's time left), for `calls` calls already admitted
        by their rate quotas (one unary call, none for a call refused by them, or a chunk of
        batch items). If the scheduler has no slot, gives their rate tokens back and raises
        its ResourceExhausted (with a retry delay), or, if the slot is not `required`, runs
        the block without one."""
        if self._admission is None or tenant is None:
            yield
            return
        meters, scheduler = self._admission.meters, self._admission.scheduler
        ticket = None
        try:
            ticket = scheduler.enter(tenant, operation in SLOW_RPCS, patience)
        except ResourceExhausted:  # refused by the scheduler, not by the block
            for _ in range(calls):
                meters.refund(tenant, operation)
            if required:
                raise
        try:
            yield
        finally:
            if ticket is not None:
                scheduler.leave(ticket)

    def _rate_refusal(self, principal: Principal, operation: str) -> ResourceExhausted | None:
        """None if the tenant is within its rate quotas and audit volume (the call's rate
        token is then taken); else the refusal, with its retry delay."""
        if self._admission is None or principal.tenant is None:
            return None
        try:
            self._admission.meters.admit(principal.tenant, operation)
        except ResourceExhausted as exc:
            return exc
        return None

    def _charge_audit(self, principal: Principal | None, appended: Written) -> None:
        if self._admission is not None and principal is not None and principal.tenant:
            self._admission.meters.charge_audit(principal.tenant, appended.size)

    def _identify(self, context: grpc.ServicerContext) -> Principal:
        """Who the certificate names; separate from _authorize so refusals are attributed."""
        presented = self._caller.certificates(context)
        if presented is None:
            raise Unauthenticated("a client certificate is required")
        return self._certificates.identify(*presented)

    def _let_in(
        self,
        principal: Principal,
        required: PrincipalKind,
        method: str,
        request: Any,
        request_id: str,
    ) -> None:
        """The caller may make this call, and its request parsed (INVALID_ARGUMENT and a
        rate-limited WARNING if not)."""
        self._authorize(principal, required)
        if isinstance(request, Malformed):
            self._malformed_log.warning(
                "%s %s %s: %s", request_id, method, principal, request.problem
            )
            raise InvalidArgument(f"the request is not a valid message: {request.problem}")

    def _authorize(self, principal: Principal, required: PrincipalKind) -> None:
        require_kind(principal, required)
        _admit(principal, self._admit_tenant)


class _BatchRun:
    """Runs one batch's items for the servicer (batch.BatchRunner), each exactly as its unary
    call would run after the guard's checks: its bounds, the tenant's rate quota of the
    unary operation, a scheduler slot (one per batch.CHUNK_ITEMS items), and the unary
    servicer method under a RequestContext of its own. Collects the outcomes for the
    guard's audit events."""

    def __init__(
        self,
        guard: RequestGuard,
        batch_id: str,
        principal: Principal,
        operation: str,
        context: grpc.ServicerContext,
    ) -> None:
        self._guard = guard
        self._batch_id = batch_id
        self._principal = principal
        self._operation = operation
        self._context = context
        self.outcomes: list[ItemOutcome] = []

    def run(self, requests: Sequence[Any], unary: Unary) -> list[ItemOutcome]:
        """Raises ResourceExhausted, for the batch as a whole, if the scheduler refuses its
        first chunk, and DeadlineExceeded if the caller is gone (deadline passed, or
        cancelled) before it: nothing has run, and one refusal (one audit event) costs the
        daemon far less than one per item, which a client retrying at once would make it pay.
        After a later refusal, or once the caller is gone, the items left are not run: they
        fail with that refusal, or DEADLINE_EXCEEDED."""
        stopped: Exception | None = None
        for start in range(0, len(requests), CHUNK_ITEMS):
            chunk = [
                ItemOutcome(f"{self._batch_id}.{index}", request)
                for index, request in enumerate(requests[start : start + CHUNK_ITEMS], start)
            ]
            self.outcomes += chunk
            stopped = stopped or self._caller_gone()
            if stopped is None:
                stopped = self._run_chunk(self._admitted(chunk), unary)
            else:
                for item in chunk:
                    item.failure = stopped
            if stopped is not None and start == 0:
                self.outcomes = []  # (_scheduled gave the items' rate tokens back)
                raise stopped
        for item in self.outcomes:
            if item.failure is not None:
                code, message = to_status(item.failure, item.request_id)
                item.error = rpc_status_of(item.failure, code, message)
        return self.outcomes

    def _caller_gone(self) -> DeadlineExceeded | None:
        left = self._context.time_remaining()
        if self._context.is_active() and (left is None or left > 0):
            return None
        return DeadlineExceeded("the caller's deadline passed, or it cancelled, before this ran")

    def _admitted(self, chunk: list[ItemOutcome]) -> list[ItemOutcome]:
        """The chunk's items within their bounds and the tenant's rate quota, admitted in
        order as their unary calls would be, in one count; the others have their failure."""
        checked = []
        for item in chunk:
            try:
                check_request(item.request)
            except Exception as exc:
                item.failure = exc
            else:
                checked.append(item)
        admission, tenant = self._guard._admission, self._principal.tenant
        if admission is None or tenant is None or not checked:
            return checked
        admitted, refusal = admission.meters.admit_some(tenant, self._operation, len(checked))
        for item in checked[admitted:]:
            item.failure = refusal
        return checked[:admitted]

    def _run_chunk(self, admitted: list[ItemOutcome], unary: Unary) -> ResourceExhausted | None:
        """Runs the admitted items in one slot; returns the scheduler's refusal, if it refused
        the slot (the items' rate tokens are given back; each item fails with it)."""
        if not admitted:
            return None
        tenant = self._principal.tenant or ""
        patience = self._context.time_remaining()
        try:
            with self._guard._scheduled(tenant, self._operation, len(admitted), patience):
                for item in admitted:
                    self._run_item(item, unary)
        except ResourceExhausted as exc:  # no slot: _run_item catches everything else
            for item in admitted:
                item.failure = exc
            return exc
        return None

    def _run_item(self, item: ItemOutcome, unary: Unary) -> None:
        token = _current.set(RequestContext(item.request_id, self._principal))
        try:
            item.response = unary(item.request, self._context)
        except Exception as exc:
            item.failure = exc
            if is_internal(exc):
                log.error("%s %s item failed", item.request_id, self._operation, exc_info=exc)
        finally:
            _current.reset(token)


def current_batch() -> BatchRunner:
    """The runner of the batch RPC this thread is serving (set by the guard)."""
    return _current_batch.get()


def _operation(method: str) -> str:
    """The RPC's name, from its full method name /package.Service/Name."""
    return method.rsplit("/", 1)[-1]


def _code(error: status_pb2.Status | None) -> grpc.StatusCode:
    return grpc.StatusCode.OK if error is None else _CODE_OF_NUMBER[error.code]


_CODE_OF_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def _item_codes(events: Sequence[AuditEvent]) -> str:
    """How a batch's items came out, for its access line: "items OK=98 NOT_FOUND=2"."""
    counts = Counter(event.outcome for event in events)
    return "items " + " ".join(f"{outcome}={n}" for outcome, n in sorted(counts.items()))


# Tenancy: which tenants' principals are let in, and which tenant an operator's call is about.


def _admit(principal: Principal, admit_tenant: Callable[[str], None]) -> None:
    """A tenant principal is let in only while its tenant is served: admit_tenant
    (hsmd.ops.tenants.TenantOps.admit) raises PERMISSION_DENIED for a tenant this daemon does
    not serve, the same words for every other tenant on a dedicated instance, and
    FAILED_PRECONDITION for a tenant an operator disabled or scheduled for deletion."""
    if principal.tenant is not None:
        admit_tenant(principal.tenant)


def _event_tenant(principal: Principal | None, request: Any) -> str:
    """The audit event's tenant: the caller's; for an operator's tenant administration
    (CreateTenant, DisableTenant, ...: the requests with a `name`) the tenant it names, so
    that tenant's own trail shows what was done to it. Only a valid tenant name is taken,
    so the event stays small whatever the request holds."""
    if principal is None:
        return ""
    if principal.tenant is not None:
        return principal.tenant
    if principal.kind is PrincipalKind.REGION:
        sent = _field(request, "key")
        name = _field(sent, "tenant") if sent is not None else _field(request, "tenant")
    else:
        name = _field(request, "name")
    return name if isinstance(name, str) and is_valid_tenant_name(name) else ""


def _event_regions(here: str | None, principal: Principal | None, request: Any) -> tuple[str, ...]:
    """The regions an event of a multi-region key's replication names: this one and the
    other end (the peer calling, or the region a tenant's ReplicateKey or
    UpdatePrimaryRegion names). Only a valid region name is taken."""
    if here is None:
        return ()
    if principal is not None and principal.kind is PrincipalKind.REGION:
        other = principal.name
    else:
        other = _field(request, "replica_region") or _field(request, "primary_region")
    return (here, other) if isinstance(other, str) and is_valid_region_name(other) else ()


@dataclass
class _Work:
    """Whether a call counts as working (AuditLog group commit) and has started to."""

    counted: bool
    started: bool = False


class _Handlers:
    """How many handlers are running, and how many of them are at work towards their audit
    append (RequestGuard.at_work): a lock and two counts on the hot path; the drain at
    shutdown waits on an event only it arms."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.running = 0
        self.working = 0
        self._idle: threading.Event | None = None

    def enter(self) -> None:
        with self._lock:
            self.running += 1

    def start_work(self, work: _Work) -> None:
        """The call has its slot (or needs none): at work until it leaves."""
        if work.counted:
            with self._lock:
                self.working += 1
            work.started = True

    def leave(self, work: _Work) -> None:
        with self._lock:
            self.running -= 1
            self.working -= work.started
            if self.running == 0 and self._idle is not None:
                self._idle.set()

    def wait_idle(self, timeout: float) -> int:
        with self._lock:
            if self.running == 0:
                return 0
            self._idle = idle = threading.Event()
        idle.wait(timeout)
        return self.running


@dataclass(frozen=True)
class Admission:
    """What the guard checks a tenant's call against before it runs."""

    meters: Meters
    scheduler: Scheduler


def _end_with_failure(
    context: grpc.ServicerContext,
    method: str,
    who: Principal | str,
    failure: Exception,
    elapsed_ms: float,
    request_id: str,
) -> NoReturn:
    """Logs the failed call's access line (who: the caller, or its address if unknown) and
    ends it with the failure's status, with its details (ErrorInfo, RetryInfo) if it has any, and
    the request id in the trailers either way."""
    code, message = to_status(failure, request_id)
    log.log(
        _level(failure),
        "%s %s %s %s %.1fms%s",
        request_id,
        method,
        who,
        code.name,
        elapsed_ms,
        f": {failure}" if isinstance(failure, Unauthenticated) else "",
        exc_info=failure if is_internal(failure) else None,
        extra=_answered(request_id, _operation(method), who, failure, elapsed_ms),
    )
    detailed = with_details(failure, code, message, ((REQUEST_ID_METADATA, request_id),))
    if detailed is not None:
        context.abort_with_status(detailed)
    context.abort(code, message)


def _answered(
    request_id: str,
    operation: str,
    who: Principal | str | None,
    failure: Exception | None,
    elapsed_ms: float,
) -> dict[str, object]:
    """Counts an answered call in the metrics (hsmd.metrics), and returns the fields of its
    access line for JSON logs (hsmd.logs.JsonFormatter). who: the caller, or its address."""
    principal = who if isinstance(who, Principal) else None
    tenant = principal.tenant or "" if principal else ""
    status = to_status(failure, request_id)[0].name if failure else "OK"
    metrics.REQUESTS.labels(tenant, operation, status).inc()
    metrics.REQUEST_SECONDS.labels(operation).observe(elapsed_ms / 1000)
    if isinstance(failure, ResourceExhausted):
        metrics.QUOTA_REJECTIONS.labels(tenant, operation).inc()
    elif isinstance(failure, BackendError | BackendUnavailable):
        metrics.BACKEND_ERRORS.labels(tenant, operation).inc()
    return {
        "access": {
            "request_id": request_id,
            "tenant": tenant,
            "principal": principal.name if principal else "",
            "peer": "" if principal or who is None else str(who),
            "operation": operation,
            "status": status,
            "duration_ms": round(elapsed_ms, 1),
        }
    }


def _level(failure: Exception) -> int:
    """Internal errors are ERROR, refused certificates WARNING (a misissued certificate or an
    attempt), other user errors INFO."""
    if is_internal(failure):
        return logging.ERROR
    return logging.WARNING if isinstance(failure, Unauthenticated) else logging.INFO


def _reports_a_break(operation: str, failure: Exception | None, response: Any) -> bool:
    """A VerifyAuditLog that succeeded and found the log broken (see _VERIFY_AUDIT_LOG)."""
    return operation == _VERIFY_AUDIT_LOG and failure is None and _field(response, "valid") is False


_KEY_FIELDS = ("key_id", "target_key_id", "destination_key_id", "source_key_id")
_CONTEXT_FIELDS = (
    "encryption_context",
    "source_encryption_context",
    "destination_encryption_context",
)


def _field(message: Any, name: str) -> Any:
    """A field of a message if the message type has it (None otherwise, and for a request
    that did not parse)."""
    if message is None or isinstance(message, Malformed):
        return None
    if name not in message.DESCRIPTOR.fields_by_name:
        return None
    return getattr(message, name)


@dataclass(frozen=True)
class Malformed:
    """What the guard's deserializer gives the handler for bytes that are not the message."""

    problem: str


def _lenient(parse: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        if parse is None:
            return data
        try:
            return parse(data)
        except (DecodeError, ValueError, TypeError) as exc:  # bad wire format or bad UTF-8
            return Malformed(str(exc)[:200] or type(exc).__name__)

    return deserialize


class _RateLimitedLog:
    """WARNING lines, at most per_second of them each second; the rest are counted and the
    count logged with the next line that passes, so a flood of bad requests cannot flood the
    log."""

    def __init__(self, logger: logging.Logger, per_second: int) -> None:
        self._logger = logger
        self._per_second = per_second
        self._lock = threading.Lock()
        self._second = 0
        self._used = 0
        self._suppressed = 0

    def warning(self, message: str, *args: object) -> None:
        now = int(time.monotonic())
        with self._lock:
            if now != self._second:
                self._second, self._used = now, 0
            if self._used >= self._per_second:
                self._suppressed += 1
                return
            self._used += 1
            suppressed, self._suppressed = self._suppressed, 0
        if suppressed:
            self._logger.warning("(%d similar lines suppressed)", suppressed)
        self._logger.warning(message, *args)


def _request_key(request: Any) -> str:
    """The key a request names, as the caller wrote it (an id or an alias); a peer region's
    request names it inside the key it sends."""
    for name in _KEY_FIELDS:
        value = _field(request, name)
        if value:
            return str(value)
    alias = _field(request, "alias_name")
    if alias:
        return str(alias)
    sent = _field(request, "key")
    return str(_field(sent, "key_id") or "") if sent is not None else ""


def _context_keys(request: Any) -> set[str]:
    """The encryption-context keys of a request; the values are never read."""
    keys: set[str] = set()
    for name in _CONTEXT_FIELDS:
        keys |= set(_field(request, name) or ())
    return keys
