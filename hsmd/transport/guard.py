"""The request guard: every RPC goes through it, so a new RPC is protected and audited by
default.

gRPC server interceptors do not see the TLS auth context, so the guard wraps each handler
instead: it gives the request an id, takes the identity from the peer certificate (never from
metadata), checks the principal kind the service is for, checks that the audit log can be
written before anything happens (fail closed), hands the RequestContext to the servicer
through a context variable, turns every exception into a status through the one table, records
one audit event of the outcome (durably, before the reply), and logs one access line.

The audit event is built here from the request and response messages: only their key id,
key version and encryption-context keys are read, never a plaintext, key or context value.
"""

from __future__ import annotations

import contextvars
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, cast

import grpc

from hsmd.audit.events import AuditEvent
from hsmd.audit.log import AuditLog, AuditUnavailable
from hsmd.auth.authorize import require_kind
from hsmd.auth.identity import principal_from_certificate
from hsmd.domain import Clock, Principal, PrincipalKind, RequestContext
from hsmd.errors import PermissionDenied, Unauthenticated
from hsmd.transport.status import is_internal, to_status

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
}
REQUEST_ID_METADATA = "x-request-id"

_current: contextvars.ContextVar[RequestContext] = contextvars.ContextVar("hsmd_request")


def current_request() -> RequestContext:
    """The RequestContext of the RPC this thread is serving (set by the guard)."""
    return _current.get()


class RequestGuard(grpc.ServerInterceptor):
    def __init__(
        self,
        trust_domain: str,
        is_tenant_served: Callable[[str], bool],
        audit: AuditLog,
        clock: Clock,
    ) -> None:
        self._trust_domain = trust_domain
        self._is_tenant_served = is_tenant_served
        self._audit = audit
        self._clock = clock

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        method: str = handler_call_details.method
        service = method.split("/")[1] if method.count("/") == 2 else ""
        required = SERVICE_PRINCIPALS.get(service)
        if handler is None or required is None:
            return handler
        if handler.unary_unary is None:
            raise AssertionError(f"{method}: only unary RPCs are guarded; add streaming support")
        return grpc.unary_unary_rpc_method_handler(
            self._guarded(method, required, handler.unary_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _guarded(
        self, method: str, required: PrincipalKind, behaviour: Callable[[Any, Any], Any]
    ) -> Callable[[Any, grpc.ServicerContext], Any]:
        operation = method.rsplit("/", 1)[-1]

        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            request_id = uuid.uuid4().hex
            context.set_trailing_metadata(((REQUEST_ID_METADATA, request_id),))
            started = time.perf_counter()
            principal: Principal | None = None
            response: Any = None
            failure: Exception | None = None
            try:
                principal = self._identify(context)
                self._authorize(principal, required)
                self._audit.ensure_writable(check_length=operation != _VERIFY_AUDIT_LOG)
                token = _current.set(RequestContext(request_id, principal))
                try:
                    response = behaviour(request, context)
                finally:
                    _current.reset(token)
            except Exception as exc:
                failure = exc
            code, message = to_status(failure, request_id) if failure else (grpc.StatusCode.OK, "")
            try:
                self._record(request_id, operation, principal, context, request, response, code)
            except AuditUnavailable as exc:
                if _reports_a_break(operation, failure, response):
                    log.error(
                        "%s %s %s OK, answered without its audit event: it found the log broken",
                        request_id,
                        method,
                        principal,
                    )
                    return response
                failure, (code, message) = exc, to_status(exc, request_id)
            elapsed_ms = (time.perf_counter() - started) * 1000
            if failure is None:
                log.info("%s %s %s OK %.1fms", request_id, method, principal, elapsed_ms)
                return response
            log.log(
                logging.ERROR if is_internal(failure) else logging.INFO,
                "%s %s %s %s %.1fms",
                request_id,
                method,
                principal or context.peer(),
                code.name,
                elapsed_ms,
                exc_info=failure if is_internal(failure) else None,
            )
            context.abort(code, message)

        return guarded

    def _record(
        self,
        request_id: str,
        operation: str,
        principal: Principal | None,
        context: grpc.ServicerContext,
        request: Any,
        response: Any,
        code: grpc.StatusCode,
    ) -> None:
        """Appends the outcome to the audit log, durably; raises AuditUnavailable if it cannot."""
        metadata = _field(response, "key_metadata")
        key_id = (
            _field(response, "key_id") or (metadata.key_id if metadata else "")
        ) or _request_key(request)
        self._audit.append(
            AuditEvent(
                time=self._clock.now(),
                request_id=request_id,
                tenant=(principal.tenant or "") if principal else "",
                principal=str(principal) if principal else "",
                operation=operation,
                key_id=key_id,
                key_version=int(_field(response, "key_version") or 0),
                encryption_context_keys=tuple(_context_keys(request)),
                outcome=code.name,
                peer=context.peer(),
            )
        )

    def _identify(self, context: grpc.ServicerContext) -> Principal:
        """Who the certificate names; separate from _authorize so refusals are attributed."""
        # grpc-stubs types each value as bytes; at run time it is a list of bytes.
        certificates = cast(Sequence[bytes], context.auth_context().get("x509_pem_cert", ()))
        if not certificates:
            raise Unauthenticated("a client certificate is required")
        return principal_from_certificate(certificates[0], self._trust_domain)

    def _authorize(self, principal: Principal, required: PrincipalKind) -> None:
        require_kind(principal, required)
        if principal.tenant is not None and not self._is_tenant_served(principal.tenant):
            raise PermissionDenied(f"tenant {principal.tenant!r} is not served by this daemon")


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
    """A field of a message if the message type has it (None otherwise)."""
    if message is None or name not in message.DESCRIPTOR.fields_by_name:
        return None
    return getattr(message, name)


def _request_key(request: Any) -> str:
    """The key a request names, as the caller wrote it (an id or an alias)."""
    for name in _KEY_FIELDS:
        value = _field(request, name)
        if value:
            return str(value)
    alias = _field(request, "alias_name")
    return str(alias) if alias else ""


def _context_keys(request: Any) -> set[str]:
    """The encryption-context keys of a request; the values are never read."""
    keys: set[str] = set()
    for name in _CONTEXT_FIELDS:
        keys |= set(_field(request, name) or ())
    return keys
