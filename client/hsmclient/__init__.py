"""The client of hsmd: typed gRPC clients over mutual TLS, their errors, and the `hsm` CLI.

It needs none of the daemon's dependencies and imports nothing of hsmd but the generated stubs,
so services install it alone.
"""

from hsmclient.channel import ConnectionSettings, secure_channel
from hsmclient.client import (
    DEFAULT_TIMEOUT,
    AdminClient,
    DataKey,
    DecryptResult,
    EncryptedDataKey,
    EncryptResult,
    HsmClient,
    KeyMetadata,
    Tenant,
)
from hsmclient.errors import (
    AlreadyExistsError,
    ChecksumMismatchError,
    ConfigurationError,
    DeadlineExceededError,
    FailedPreconditionError,
    HsmError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
    from_rpc_error,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "AdminClient",
    "AlreadyExistsError",
    "ChecksumMismatchError",
    "ConfigurationError",
    "ConnectionSettings",
    "DataKey",
    "DeadlineExceededError",
    "DecryptResult",
    "EncryptResult",
    "EncryptedDataKey",
    "FailedPreconditionError",
    "HsmClient",
    "HsmError",
    "InternalError",
    "InvalidArgumentError",
    "KeyMetadata",
    "NotFoundError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "Tenant",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "from_rpc_error",
    "secure_channel",
]
