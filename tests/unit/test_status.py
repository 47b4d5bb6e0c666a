"""The one error-to-status table: user errors speak, internal errors only give a request id."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from hsmclient import aws

from hsmd import errors
from hsmd.transport.status import rpc_status_of, to_status, with_details


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.InvalidArgument("bad"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.DecryptionFailed(), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.NotFound("bad"), grpc.StatusCode.NOT_FOUND),
        (errors.AlreadyExists("bad"), grpc.StatusCode.ALREADY_EXISTS),
        (errors.FailedPrecondition("bad"), grpc.StatusCode.FAILED_PRECONDITION),
        (errors.PermissionDenied("bad"), grpc.StatusCode.PERMISSION_DENIED),
        (errors.Unauthenticated("bad"), grpc.StatusCode.UNAUTHENTICATED),
        (errors.Unimplemented("bad"), grpc.StatusCode.UNIMPLEMENTED),
        (errors.Aborted("bad"), grpc.StatusCode.ABORTED),
        (errors.DataLoss("bad"), grpc.StatusCode.DATA_LOSS),
    ],
)
def test_user_errors_keep_their_message(error: errors.HsmdError, code: grpc.StatusCode) -> None:
    assert to_status(error, "rid") == (code, str(error))


@pytest.mark.parametrize(
    "error",
    [
        errors.BackendError("CKR_DEVICE_ERROR in slot 3, PIN abc"),
        errors.StoreError("database is locked: /var/lib/hsmd.db"),
        KeyError("secret detail"),
        RuntimeError("secret detail"),
    ],
)
def test_internal_errors_say_only_internal_error_and_the_request_id(error: Exception) -> None:
    code, message = to_status(error, "rid42")
    assert code is grpc.StatusCode.INTERNAL
    assert message == "internal error (request_id=rid42)"


def test_an_unavailable_backend_is_retryable_without_details() -> None:
    code, message = to_status(errors.BackendUnavailable("token hsmd/acme serial 1234 missing"), "r")
    assert code is grpc.StatusCode.UNAVAILABLE
    assert "hsmd/acme" not in message and "request_id=r" in message


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.StorageFull("/var/lib/hsmd/tokens: no space"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.StorageUnavailable("/var/lib/hsmd: read-only"), grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_storage_faults_are_retryable_statuses_without_paths(
    error: errors.HsmdError, code: grpc.StatusCode
) -> None:
    got, message = to_status(error, "r7")
    assert got is code
    assert "/var/lib" not in message and "request_id=r7" in message


def _details(status: status_pb2.Status) -> list[object]:
    found: list[object] = []
    for detail in status.details:
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.RetryInfo):
            message = kind()
            if detail.Unpack(message):
                found.append(message)
    return found


def test_a_user_error_with_a_reason_carries_an_error_info() -> None:
    status = rpc_status_of(errors.DecryptionFailed(), grpc.StatusCode.INVALID_ARGUMENT, "m")
    assert _details(status) == [
        error_details_pb2.ErrorInfo(reason=errors.REASON_INVALID_CIPHERTEXT, domain="hsmd")
    ]
    detailed = with_details(errors.DecryptionFailed(), grpc.StatusCode.INVALID_ARGUMENT, "m")
    assert detailed is not None and detailed.code is grpc.StatusCode.INVALID_ARGUMENT


def test_an_error_without_a_reason_has_no_details() -> None:
    code = grpc.StatusCode.FAILED_PRECONDITION
    assert _details(rpc_status_of(errors.FailedPrecondition("m"), code, "m")) == []
    assert with_details(errors.FailedPrecondition("m"), code, "m") is None
    # An internal error never says more than its status, whatever it carries.
    internal = errors.BackendError("m")
    internal.reason = "KEY_DISABLED"  # type: ignore[attr-defined]
    assert _details(rpc_status_of(internal, grpc.StatusCode.INTERNAL, "m")) == []


def test_every_reason_has_an_aws_exception_in_the_client() -> None:
    reasons = {value for name, value in vars(errors).items() if name.startswith("REASON_")}
    assert reasons == set(aws.ERROR_NAMES)
