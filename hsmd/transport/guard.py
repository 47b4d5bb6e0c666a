"""The request guard: every RPC goes through it, so a new RPC is protected by default.

gRPC server interceptors do not see the TLS auth context, so the guard wraps each handler
instead: it gives the request an id, takes the identity from the peer certificate (never from
metadata), checks the principal kind the service is for, hands the RequestContext to the
servicer through a context variable, turns every exception into a status through the one
table, and logs one access line with the request id.
"""

from __future__ import annotations

import contextvars
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, cast

import grpc

from hsmd.auth.authorize import require_kind
from hsmd.auth.identity import principal_from_certificate
from hsmd.domain import Principal, PrincipalKind, RequestContext
from hsmd.errors import PermissionDenied, Unauthenticated
from hsmd.transport.status import is_internal, to_status

log = logging.getLogger("hsmd.access")

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
    def __init__(self, trust_domain: str, is_tenant_served: Callable[[str], bool]) -> None:
        self._trust_domain = trust_domain
        self._is_tenant_served = is_tenant_served

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
        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            request_id = uuid.uuid4().hex
            context.set_trailing_metadata(((REQUEST_ID_METADATA, request_id),))
            started = time.perf_counter()
            principal: Principal | None = None
            try:
                principal = self._authenticate(context, required)
                token = _current.set(RequestContext(request_id, principal))
                try:
                    response = behaviour(request, context)
                finally:
                    _current.reset(token)
            except Exception as exc:
                code, message = to_status(exc, request_id)
                log.log(
                    logging.ERROR if is_internal(exc) else logging.INFO,
                    "%s %s %s %s %.1fms",
                    request_id,
                    method,
                    principal or context.peer(),
                    code.name,
                    (time.perf_counter() - started) * 1000,
                    exc_info=is_internal(exc),
                )
                context.abort(code, message)
            log.info(
                "%s %s %s OK %.1fms",
                request_id,
                method,
                principal,
                (time.perf_counter() - started) * 1000,
            )
            return response

        return guarded

    def _authenticate(self, context: grpc.ServicerContext, required: PrincipalKind) -> Principal:
        # grpc-stubs types each value as bytes; at run time it is a list of bytes.
        certificates = cast(Sequence[bytes], context.auth_context().get("x509_pem_cert", ()))
        if not certificates:
            raise Unauthenticated("a client certificate is required")
        principal = principal_from_certificate(certificates[0], self._trust_domain)
        require_kind(principal, required)
        if principal.tenant is not None and not self._is_tenant_served(principal.tenant):
            raise PermissionDenied(f"tenant {principal.tenant!r} is not served by this daemon")
        return principal
