"""The one table from hsmd errors to gRPC status codes.

User errors carry their own message. Internal errors never do: the caller gets "internal
error" and the request id, the log gets the rest.
"""

from __future__ import annotations

import math

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from hsmd import errors

# The domain of every ErrorInfo hsmd sends: its reasons are errors.REASON_*.
ERROR_DOMAIN = "hsmd"

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
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.DataLoss: grpc.StatusCode.DATA_LOSS,
    errors.BackendUnavailable: grpc.StatusCode.UNAVAILABLE,
    errors.RegionUnavailable: grpc.StatusCode.UNAVAILABLE,
    errors.StorageFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
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


def with_details(
    exc: BaseException,
    code: grpc.StatusCode,
    message: str,
    metadata: tuple[tuple[str, str], ...] = (),
) -> grpc.Status | None:
    """The status (code and message, as to_status gives them) with the google.rpc details of
    an error that has any (see rpc_status_of); None for the rest. `metadata` joins the details
    in the trailers (a status replaces the call's trailers: the request id would be lost
    otherwise)."""
    described = rpc_status_of(exc, code, message)
    if not described.details:
        return None
    status = rpc_status.to_status(described)
    detailed: grpc.Status = status._replace(  # a namedtuple, as grpc_status makes it
        trailing_metadata=(*status.trailing_metadata, *metadata)
    )
    return detailed


def rpc_status_of(exc: BaseException, code: grpc.StatusCode, message: str) -> status_pb2.Status:
    """The google.rpc.Status the caller gets for `exc` answered with code and message
    (to_status), with its details: an ErrorInfo with the user error's reason, if it has one,
    and a RetryInfo with the retry delay of a ResourceExhausted that names one (rounded up to
    the millisecond, so a caller that waits exactly that long finds the quota refilled). A
    batch item's error is this too."""
    status = status_pb2.Status(code=code.value[0], message=message)
    reason = getattr(exc, "reason", None) if isinstance(exc, errors.UserError) else None
    if reason is not None:
        status.details.add().Pack(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN))
    retry_info = _retry_info(exc)
    if retry_info is not None:
        status.details.add().Pack(retry_info)
    return status


def _retry_info(exc: BaseException) -> error_details_pb2.RetryInfo | None:
    retry_after = getattr(exc, "retry_after", None)
    if not isinstance(exc, errors.ResourceExhausted) or retry_after is None:
        return None
    milliseconds = max(1, math.ceil(retry_after * 1000))
    return error_details_pb2.RetryInfo(
        retry_delay=duration_pb2.Duration(
            seconds=milliseconds // 1000, nanos=(milliseconds % 1000) * 1_000_000
        )
    )
