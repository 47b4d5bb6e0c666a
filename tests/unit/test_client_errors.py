"""hsmclient's error table and connection settings, without a daemon."""

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
from hsmclient import errors
from hsmclient.channel import ConnectionSettings


class _FailedCall(grpc.RpcError):
    """What a failed unary call raises: an RpcError that tells its status."""

    def __init__(self, code: grpc.StatusCode, details: str | None) -> None:
        super().__init__()
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str | None:
        return self._details


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidArgumentError),
        (grpc.StatusCode.NOT_FOUND, errors.NotFoundError),
        (grpc.StatusCode.ALREADY_EXISTS, errors.AlreadyExistsError),
        (grpc.StatusCode.FAILED_PRECONDITION, errors.FailedPreconditionError),
        (grpc.StatusCode.PERMISSION_DENIED, errors.PermissionDeniedError),
        (grpc.StatusCode.UNAUTHENTICATED, errors.UnauthenticatedError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, errors.ResourceExhaustedError),
        (grpc.StatusCode.UNAVAILABLE, errors.UnavailableError),
        (grpc.StatusCode.UNIMPLEMENTED, errors.UnimplementedError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, errors.DeadlineExceededError),
        (grpc.StatusCode.INTERNAL, errors.InternalError),
    ],
)
def test_each_status_becomes_its_own_class(code: grpc.StatusCode, cls: type) -> None:
    error = errors.from_rpc_error(_FailedCall(code, "what the server said"))
    assert type(error) is cls
    assert error.code is code
    assert error.message == "what the server said"
    assert str(error) == "what the server said"


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN, grpc.StatusCode.OUT_OF_RANGE]
)
def test_a_status_without_a_class_is_a_plain_hsm_error_with_its_code(
    code: grpc.StatusCode,
) -> None:
    error = errors.from_rpc_error(_FailedCall(code, "boom"))
    assert type(error) is errors.HsmError
    assert error.code is code


def test_missing_details_fall_back_to_the_status_name() -> None:
    error = errors.from_rpc_error(_FailedCall(grpc.StatusCode.NOT_FOUND, None))
    assert error.message == "NOT_FOUND"


def test_every_status_class_has_a_distinct_code() -> None:
    classes = errors.HsmError.__subclasses__()
    assert len({cls.code for cls in classes}) == len(classes)
    assert errors.ChecksumMismatchError.code is grpc.StatusCode.DATA_LOSS


_ENV = {
    "HSM_ENDPOINT": "hsmd.example:8443",
    "HSM_CA_CERT": "/etc/hsm/ca.pem",
    "HSM_CLIENT_CERT": "/etc/hsm/client.pem",
    "HSM_CLIENT_KEY": "/etc/hsm/client.key",
}


def test_settings_from_env() -> None:
    settings = ConnectionSettings.from_env({**_ENV, "HSM_SERVER_NAME": "hsmd.internal"})
    assert settings.endpoint == "hsmd.example:8443"
    assert str(settings.ca_cert_path) == "/etc/hsm/ca.pem"
    assert str(settings.client_cert_path) == "/etc/hsm/client.pem"
    assert str(settings.client_key_path) == "/etc/hsm/client.key"
    assert settings.server_name == "hsmd.internal"


def test_server_name_is_optional() -> None:
    assert ConnectionSettings.from_env(_ENV).server_name is None
    assert ConnectionSettings.from_env({**_ENV, "HSM_SERVER_NAME": ""}).server_name is None


@pytest.mark.parametrize("variable", sorted(_ENV))
@pytest.mark.parametrize("value", [None, ""])
def test_a_missing_variable_is_named(variable: str, value: str | None) -> None:
    environ = {name: v for name, v in _ENV.items() if name != variable}
    if value is not None:
        environ[variable] = value
    with pytest.raises(errors.ConfigurationError, match=variable) as raised:
        ConnectionSettings.from_env(environ)
    assert isinstance(raised.value, ValueError)
    assert raised.value.variable == variable


def test_an_unreadable_pem_file_is_named(tmp_path) -> None:
    for name in ("ca.pem", "client.pem"):
        (tmp_path / name).write_bytes(b"-----BEGIN CERTIFICATE-----\n")
    settings = ConnectionSettings.from_env(
        {
            **_ENV,
            "HSM_CA_CERT": str(tmp_path / "ca.pem"),
            "HSM_CLIENT_CERT": str(tmp_path / "client.pem"),
            "HSM_CLIENT_KEY": str(tmp_path / "absent.key"),
        }
    )
    with pytest.raises(errors.ConfigurationError, match=r"absent\.key") as raised:
        settings.open_channel()
    assert raised.value.variable == "HSM_CLIENT_KEY"


def test_a_batch_items_status_becomes_the_exception_of_its_code() -> None:
    throttled = status_pb2.Status(code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], message="m")
    throttled.details.add().Pack(
        error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(nanos=250_000_000))
    )
    error = errors.from_status(throttled)
    assert isinstance(error, errors.ResourceExhaustedError) and error.retry_after == 0.25
    missing = errors.from_status(status_pb2.Status(code=5, message="key 'k' not found"))
    assert isinstance(missing, errors.NotFoundError) and missing.message == "key 'k' not found"
    cancelled = errors.from_status(status_pb2.Status(code=1))
    assert type(cancelled) is errors.HsmError and cancelled.code is grpc.StatusCode.CANCELLED
