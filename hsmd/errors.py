"""The one domain error hierarchy of hsmd.

User errors say what the caller did wrong and may be shown to the caller. Internal errors are
never shown: the transport answers "internal error" with the request id and logs the rest.
This module imports nothing; `hsmd.transport.status` is the only place that maps these to gRPC.
"""


class HsmdError(Exception):
    """Base of every error hsmd raises on purpose."""


class UserError(HsmdError):
    """The request cannot be served as asked; the message is safe to show the caller.

    `reason` says what went wrong more finely than the status code (a disabled key, a
    ciphertext that does not decrypt, ...): it reaches the caller as a google.rpc.ErrorInfo,
    so that a client can name the error as AWS KMS does (DisabledException) without parsing
    messages. None: the status code says it all. The REASON_* values are the whole set."""

    reason: str | None = None

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


# The ErrorInfo reasons (docs/api.md "Error reasons"); each error is one of a status code's.
REASON_KEY_DISABLED = "KEY_DISABLED"  # FAILED_PRECONDITION
REASON_KEY_USAGE = "KEY_USAGE"  # FAILED_PRECONDITION: the key's spec or usage cannot do it
REASON_UNSUPPORTED_OPERATION = "UNSUPPORTED_OPERATION"  # FAILED_PRECONDITION: nor can its kind
REASON_INVALID_CIPHERTEXT = "INVALID_CIPHERTEXT"  # INVALID_ARGUMENT
REASON_INVALID_ALIAS_NAME = "INVALID_ALIAS_NAME"  # INVALID_ARGUMENT
REASON_MALFORMED_POLICY = "MALFORMED_POLICY"  # INVALID_ARGUMENT
REASON_INVALID_PAGE_TOKEN = "INVALID_PAGE_TOKEN"  # noqa: S105 (INVALID_ARGUMENT; not a secret)
REASON_INVALID_IMPORT_TOKEN = "INVALID_IMPORT_TOKEN"  # noqa: S105 (INVALID_ARGUMENT; not a secret)
REASON_EXPIRED_IMPORT_TOKEN = "EXPIRED_IMPORT_TOKEN"  # noqa: S105 (INVALID_ARGUMENT; not a secret)
REASON_INVALID_TAG = "INVALID_TAG"  # INVALID_ARGUMENT


class InvalidArgument(UserError):
    """A field is missing, malformed or out of range."""


class NotFound(UserError):
    """No such resource for this caller (also: it belongs to another tenant)."""


class AlreadyExists(UserError):
    """A resource with that name exists already."""


class FailedPrecondition(UserError):
    """The resource's state or usage does not allow the operation."""


class PermissionDenied(UserError):
    """The caller is known but may not do this."""


class Unauthenticated(UserError):
    """The caller's certificate names no identity hsmd accepts."""


class Unimplemented(UserError):
    """The backend cannot do what was asked (a key spec or mechanism it lacks)."""


class Aborted(UserError):
    """The request conflicts with another in flight (the same client token); retry it."""


class DeadlineExceeded(UserError):
    """The caller's deadline passed, or it cancelled, before the work began: nothing was done
    (the items of a batch left when its caller is gone)."""


class ResourceExhausted(UserError):
    """A quota or limit of the caller's tenant is reached (AWS: LimitExceededException,
    ThrottlingException). retry_after, in seconds, is when a retry can succeed: set for rates
    and the scheduler's wait, None for resource limits that only freeing a resource lifts."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DataLoss(UserError):
    """A stored record or token object is damaged. The message names only the caller's own
    resource; the log line names tenant, key and file for the operator."""


class DecryptionFailed(UserError):
    """One opaque answer for every decryption failure: tamper, wrong context, key or tenant."""

    MESSAGE = "ciphertext is invalid, or does not match the key and encryption context"
    reason = REASON_INVALID_CIPHERTEXT

    def __init__(self) -> None:
        super().__init__(self.MESSAGE)


class UnwrapFailed(InvalidArgument):
    """One answer for every wrapped key or key material that does not unwrap: wrong wrapping
    key, truncated, flipped, or of the wrong size for its key spec."""

    MESSAGE = "the wrapped key material does not unwrap under this wrapping key into this key"
    reason = REASON_INVALID_CIPHERTEXT

    def __init__(self) -> None:
        super().__init__(self.MESSAGE)


class RegionUnavailable(UserError):
    """A peer region (multi-region keys) cannot be reached now; nothing was changed there."""


class InternalError(HsmdError):
    """Something hsmd or its dependencies got wrong; details go to the log only."""


class BackendError(InternalError):
    """The PKCS#11 backend failed in an unexpected way."""


class BackendUnavailable(InternalError):
    """The token or its session is gone; the caller may retry."""


class StoreError(InternalError):
    """The metadata store failed."""


class StorageFull(InternalError):
    """The disk under the metadata store or the token directory is full; retry later."""


class StorageUnavailable(BackendUnavailable):
    """The metadata store or the token directory cannot be written (read-only, I/O error)."""


class StartupRefused(HsmdError):
    """The daemon will not start on this state; the message says why and what to do."""


class ConfigError(HsmdError):
    """The settings file is invalid; the message names the field."""
