"""The one error-to-status table: user errors speak, internal errors only give a request id."""

from __future__ import annotations

import grpc
import pytest

from hsmd import errors
from hsmd.transport.status import to_status


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
