"""The one table from hsmd errors to gRPC status codes.

User errors carry their own message. Internal errors never do: the caller gets "internal
error" and the request id, the log gets the rest.
"""

from __future__ import annotations

import grpc

from hsmd import errors

_CODES: dict[type[errors.HsmdError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.DecryptionFailed: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
    errors.Aborted: grpc.StatusCode.ABORTED,
    errors.DataLoss: grpc.StatusCode.DATA_LOSS,
    errors.BackendUnavailable: grpc.StatusCode.UNAVAILABLE,
    errors.StorageFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def to_status(exc: BaseException, request_id: str) -> tuple[grpc.StatusCode, str]:
    """The status code and message the caller sees for an exception."""
    for kind in type(exc).__mro__:
        code = _CODES.get(kind)
        if code is None:
            continue
        if isinstance(exc, errors.UserError):
            return code, str(exc)
        return code, f"service unavailable, retry later (request_id={request_id})"
    return grpc.StatusCode.INTERNAL, f"internal error (request_id={request_id})"


def is_internal(exc: BaseException) -> bool:
    return not isinstance(exc, errors.UserError)
