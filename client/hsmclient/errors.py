"""The client's exceptions: one class per gRPC status the daemon answers with.

Callers catch the class that says what went wrong instead of comparing status codes, and the
server's message is kept verbatim. `from_rpc_error` is the one place a `grpc.RpcError` becomes
one of these.
"""

from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status


class ConfigurationError(ValueError):
    """A connection setting is missing or unreadable; `variable` names the setting."""

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(message)
        self.variable = variable


class HsmError(Exception):
    """Base of every error a call to the daemon can raise; `code` is the gRPC status.

    `reason` is the daemon's finer word for it (its google.rpc.ErrorInfo), or None:
    KEY_DISABLED, KEY_USAGE, UNSUPPORTED_OPERATION, INVALID_CIPHERTEXT, INVALID_ALIAS_NAME,
    MALFORMED_POLICY, INVALID_PAGE_TOKEN, INVALID_IMPORT_TOKEN, EXPIRED_IMPORT_TOKEN,
    INVALID_TAG (docs/api.md "Error reasons")."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    reason: str | None = None

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidArgumentError(HsmError):
    """A field is missing, malformed or out of range; also every decryption failure."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFoundError(HsmError):
    """No such key for this caller (a key of another tenant looks the same)."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(HsmError):
    """A resource with that name exists already."""

    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPreconditionError(HsmError):
    """The key's state or usage does not allow the operation."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDeniedError(HsmError):
    """The caller is known but may not do this."""

    code = grpc.StatusCode.PERMISSION_DENIED


class UnauthenticatedError(HsmError):
    """The client certificate names no identity the daemon accepts."""

    code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhaustedError(HsmError):
    """The daemon cannot take the call now: a rate quota of the tenant, the HSM's fair share,
    a resource limit, or its storage. `retry_after` is the delay in seconds the daemon asks
    for (google.rpc.RetryInfo), or None when waiting alone will not help (a resource limit:
    free some, or ask the operator for more)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def __str__(self) -> str:
        if self.retry_after is None:
            return self.message
        return f"{self.message} (retry after {self.retry_after:.3f}s)"


class UnavailableError(HsmError):
    """The daemon, or its HSM, cannot be reached; the call may be retried."""

    code = grpc.StatusCode.UNAVAILABLE


class UnimplementedError(HsmError):
    """The daemon does not offer this operation or key spec."""

    code = grpc.StatusCode.UNIMPLEMENTED


class DeadlineExceededError(HsmError):
    """No answer within the call's timeout; the operation may still have happened."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class InternalError(HsmError):
    """The daemon failed; its logs hold the details under the request id in the message."""

    code = grpc.StatusCode.INTERNAL


class AbortedError(HsmError):
    """The call conflicted with another in flight (the same client token); retry it."""

    code = grpc.StatusCode.ABORTED


class DataLossError(HsmError):
    """The key's stored record is damaged; the daemon's operator must restore it."""

    code = grpc.StatusCode.DATA_LOSS


class ChecksumMismatchError(DataLossError):
    """A CRC32C check by the client failed: the payload was corrupted between us and the HSM."""


_ERROR_BY_CODE: dict[grpc.StatusCode, type[HsmError]] = {
    cls.code: cls
    for cls in (
        InvalidArgumentError,
        NotFoundError,
        AlreadyExistsError,
        FailedPreconditionError,
        PermissionDeniedError,
        UnauthenticatedError,
        ResourceExhaustedError,
        UnavailableError,
        UnimplementedError,
        DeadlineExceededError,
        InternalError,
        AbortedError,
        DataLossError,
    )
}


def from_rpc_error(error: grpc.RpcError) -> HsmError:
    """Translate a failed call into the client's exception for its status.

    A status without a class of its own (CANCELLED, UNKNOWN, ...) becomes a plain HsmError that
    still carries the code.
    """
    code = error.code()
    status = _status_of(error)
    return _error(code, error.details() or code.name, status)


def from_status(status: status_pb2.Status) -> HsmError:
    """The exception for a google.rpc.Status, such as a batch item's error, as from_rpc_error
    gives it for a failed call with that status."""
    code = _CODE_OF_NUMBER.get(status.code, grpc.StatusCode.UNKNOWN)
    return _error(code, status.message or code.name, status)


def _error(code: grpc.StatusCode, message: str, status: status_pb2.Status | None) -> HsmError:
    """The exception for code and message, with the details of `status` (if it has any)."""
    error: HsmError
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        error = ResourceExhaustedError(message, _retry_delay(status))
    else:
        cls = _ERROR_BY_CODE.get(code)
        error = cls(message) if cls is not None else HsmError(message, code)
    error.reason = _reason(status)
    return error


_CODE_OF_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def _status_of(error: grpc.RpcError) -> status_pb2.Status | None:
    """The google.rpc.Status of a failed call's details, if it has any."""
    if not hasattr(error, "trailing_metadata"):  # only a failed call carries details
        return None
    try:
        return rpc_status.from_call(error)
    except ValueError:  # the details do not match the code and message
        return None


def _retry_delay(status: status_pb2.Status | None) -> float | None:
    """The RetryInfo delay in the status details, in seconds, if the daemon sent one."""
    for detail in _details(status):
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            delay: float = info.retry_delay.ToTimedelta().total_seconds()
            return delay
    return None


def _reason(status: status_pb2.Status | None) -> str | None:
    """The ErrorInfo reason in the status details, if the daemon sent one."""
    for detail in _details(status):
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            reason: str = info.reason
            return reason or None
    return None


def _details(status: status_pb2.Status | None) -> list[Any]:
    return list(status.details) if status is not None else []
