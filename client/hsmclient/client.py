"""Typed clients for hsmd's KeyManagementService and AdminService.

Methods take and return plain Python values, never protobuf messages; enum values travel as their
proto names ("AES_256", "ENABLED"), timestamps as aware datetimes (None where the daemon left one
unset), maps as read-only mappings. Every `key_id` argument also takes an alias, "alias/<name>";
the daemon resolves it. Encrypt and Decrypt check CRC32C checksums end to end, as Cloud KMS clients
do, and every failed call raises an `hsmclient.errors` exception.
"""

import dataclasses
import functools
import os
import random
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol, Self, TypeVar

import google_crc32c
import grpc
from cryptography.hazmat.primitives import serialization
from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from hsmclient import aws, keyimport
from hsmclient.channel import ConnectionSettings, secure_channel
from hsmclient.errors import (
    ChecksumMismatchError,
    HsmError,
    InternalError,
    ResourceExhaustedError,
    from_rpc_error,
    from_status,
)
from hsmd.v1 import admin_pb2, admin_pb2_grpc, resources_pb2, service_pb2, service_pb2_grpc

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

DEFAULT_TIMEOUT = 30.0
"""Seconds each call may take before it fails with DeadlineExceededError."""
# Pauses (each jittered by +-50%, and never shorter than a retry delay the daemon names)
# before the retries of a call that is safe to repeat: about 6 s in all, a daemon's restart
# with time to spare (about 1 s here).
RETRY_DELAYS = (0.1, 0.2, 0.4, 0.8, 1.6, 3.2)
# A RESOURCE_EXHAUSTED whose retry delay is longer than this (an audit volume used up for the
# hour) is the caller's to wait for, not the client's.
MAX_HONOURED_DELAY = 5.0
# Calls that change nothing, so a repeat is safe: retried when the daemon is unavailable or
# cut them off (it may be restarting) or asks them to wait (RESOURCE_EXHAUSTED with a delay).
SAFE_TO_REPEAT = frozenset(
    {
        *(
            prefix + operation
            for prefix in ("", "Batch")
            for operation in (
                "Encrypt",
                "Decrypt",
                "ReEncrypt",
                "GenerateDataKey",
                "Sign",
                "Verify",
                "GenerateMac",
                "VerifyMac",
            )
        ),
        "GenerateDataKeyWithoutPlaintext",
        "GenerateDataKeyPair",
        "GenerateDataKeyPairWithoutPlaintext",
        "GenerateRandom",
        "GetPublicKey",
        "DescribeKey",
        "ListKeys",
        "ListAliases",
        "ListQuarantinedObjects",
        "GetKeyPolicy",
        "GetKeyRotationStatus",
        "ListKeyRotations",
        "ListAuditEvents",
        "GetCapabilities",
        "ListTenants",
        "GetTenantQuota",
        "VerifyAuditLog",
    }
)
# CANCELLED: a call the daemon's stop cut off (this client never cancels one itself).
_SAFE_RETRIED = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
# A call that carries a client token: the daemon answers a repeat with what the first made, so
# a deadline passed or a first attempt still running (ABORTED) are retried too.
_TOKEN_RETRIED = _SAFE_RETRIED | {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED}

_T = TypeVar("_T")
_V = TypeVar("_V", bound=int)
_D = TypeVar("_D", bound="DataclassInstance")
_Item = TypeVar("_Item")


class _ProtoEnum(Protocol[_V]):
    """What the generated enum classes offer; lets one helper serve every enum type-safely."""

    DESCRIPTOR: EnumDescriptor

    def Name(self, number: _V) -> str: ...
    def Value(self, name: str) -> _V: ...
    def keys(self) -> list[str]: ...


def _enum_value(enum: _ProtoEnum[_V], name: str | None, prefix: str = "") -> _V:
    """The enum value called `prefix + name`, in hsmd's spelling or AWS KMS's (hsmclient.aws;
    None: the zero value, "not set"); refuses unknown names before any call is made.

    Raises:
        ValueError: `name` is not a value of the enum (the *_UNSPECIFIED value is none either).
    """
    if name is None:
        return enum.Value(enum.DESCRIPTOR.values[0].name)
    name = aws.hsmd_name(enum.DESCRIPTOR.name, name)
    names = [key.removeprefix(prefix) for key in enum.keys() if not key.endswith("_UNSPECIFIED")]
    if name not in names:
        raise ValueError(
            f"unknown {enum.DESCRIPTOR.name} {name!r} (expected one of: {', '.join(names)})"
        )
    return enum.Value(prefix + name)


class _Named(Protocol):
    """An enum value's descriptor, of either protobuf implementation."""

    @property
    def name(self) -> str: ...


def _python_value(enum_values: Mapping[int, _Named] | None, value: object) -> object:
    """An enum number as its name (as the number itself if a newer daemon sent one these stubs
    lack), a timestamp as an aware datetime, anything else as it is."""
    if enum_values is not None and isinstance(value, int):
        known = enum_values.get(value)
        return known.name if known is not None else str(value)
    if isinstance(value, Timestamp):
        return value.ToDatetime(tzinfo=UTC)
    if isinstance(value, Message) and value.DESCRIPTOR.full_name in _NESTED:
        return _from_message(_NESTED[value.DESCRIPTOR.full_name], value)
    return value


def _from_message(cls: type[_D], message: Message) -> _D:
    """`cls` built from the message fields of the same names as its own.

    Each result class mirrors its response, so this one function does every conversion: enum
    numbers become names, repeated fields tuples, maps read-only mappings, timestamps aware
    datetimes and an unset timestamp None. No method can forget one, and a field the message
    lacks fails every test that builds the class.
    """
    by_name = message.DESCRIPTOR.fields_by_name
    values: dict[str, object] = {}
    for name in (f.name for f in dataclasses.fields(cls)):
        descriptor, value = by_name[name], getattr(message, name)
        enum = descriptor.enum_type.values_by_number if descriptor.enum_type else None
        if descriptor.has_presence and not message.HasField(name):
            values[name] = None
        elif descriptor.message_type is not None and descriptor.message_type.GetOptions().map_entry:
            values[name] = MappingProxyType(dict(value))
        elif descriptor.is_repeated:
            values[name] = tuple(_python_value(enum, item) for item in value)
        else:
            values[name] = _python_value(enum, value)
    return cls(**values)


def _every_page(list_page: Callable[[str], tuple[list[_T], str]], page_token: str) -> Iterator[_T]:
    """Every item from `page_token` on, calling `list_page(token)` as the iteration reaches the
    next page; the call is made lazily, so errors surface while iterating."""
    while True:
        items, page_token = list_page(page_token)
        yield from items
        if not page_token:
            return


def _count(name: str, value: int | None) -> int:
    """A request count where 0 means "the daemon's default": None gives 0, and 0 or less is
    refused, so that it cannot silently become the default.

    Raises:
        ValueError: `value` is not positive.
    """
    if value is None:
        return 0
    if value < 1:
        raise ValueError(f"{name} must be positive, not {value}")
    return value


def _strings(name: str, values: Iterable[str]) -> list[str]:
    """A repeated string argument; a bare string, which would travel as its characters, is
    refused.

    Raises:
        ValueError: `values` is a string.
    """
    if isinstance(values, str):
        raise ValueError(f"{name} must be a list of strings, not the string {values!r}")
    return list(values)


def _wrapping_algorithm(name: str) -> resources_pb2.WrappingAlgorithm.ValueType:
    """The one mapping of the client's wrapping algorithm names, AWS's ("RSAES_OAEP_SHA_1"), to
    the proto's, which carry a WRAP_ prefix.

    Raises:
        ValueError: `name` is no wrapping algorithm (a WRAP_ name is none either).
    """
    return _enum_value(resources_pb2.WrappingAlgorithm, name, prefix="WRAP_")


def _timestamp(name: str, value: datetime | None) -> Timestamp | None:
    """An optional request time; a naive datetime is refused, since its zone is a guess.

    Raises:
        ValueError: `value` has no time zone.
    """
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError(f"{name} must be an aware datetime (with tzinfo), not {value!r}")
    timestamp = Timestamp()
    timestamp.FromDatetime(value)
    return timestamp


def _new_client_token() -> str:
    return uuid.uuid4().hex


def _crc32c(data: bytes) -> int:
    return int(google_crc32c.value(data))


def _verify_checksums(
    sent_verified: bool, sent: str, received: bytes, received_crc32c: int
) -> None:
    """Check that the daemon checked what we sent and that what it sent arrived intact.

    Raises:
        ChecksumMismatchError: either check failed; the result must not be used.
    """
    if not sent_verified:
        raise ChecksumMismatchError(f"the daemon did not verify the {sent} checksum")
    if _crc32c(received) != received_crc32c:
        raise ChecksumMismatchError("the response does not match its CRC32C checksum")


_DataKeyRequest = TypeVar(
    "_DataKeyRequest",
    service_pb2.GenerateDataKeyRequest,
    service_pb2.GenerateDataKeyWithoutPlaintextRequest,
)
_KeyPairRequest = TypeVar(
    "_KeyPairRequest",
    service_pb2.GenerateDataKeyPairRequest,
    service_pb2.GenerateDataKeyPairWithoutPlaintextRequest,
)


def _data_key_request(
    request_type: type[_DataKeyRequest],
    key_id: str,
    key_spec: str | None,
    number_of_bytes: int | None,
    encryption_context: Mapping[str, str] | None,
) -> _DataKeyRequest:
    """Either GenerateDataKey request; exactly one of key_spec and number_of_bytes is set, the
    spec AES_256 if neither is given.

    Raises:
        ValueError: both are given, the spec is unknown, or the length is not positive (0 would
            reach the daemon as "not set" and silently give a 32-byte key).
    """
    if number_of_bytes is None:
        spec = _enum_value(resources_pb2.DataKeySpec, key_spec or "AES_256", prefix="DATA_KEY_")
        return request_type(key_id=key_id, key_spec=spec, encryption_context=encryption_context)
    if key_spec is not None:
        raise ValueError("pass key_spec or number_of_bytes, not both")
    return request_type(
        key_id=key_id,
        number_of_bytes=_count("number_of_bytes", number_of_bytes),
        encryption_context=encryption_context,
    )


def _key_pair_request(
    request_type: type[_KeyPairRequest],
    key_id: str,
    key_pair_spec: str,
    encryption_context: Mapping[str, str] | None,
) -> _KeyPairRequest:
    """Either GenerateDataKeyPair request."""
    return request_type(
        key_id=key_id,
        key_pair_spec=_enum_value(resources_pb2.KeySpec, key_pair_spec),
        encryption_context=encryption_context,
    )


# Each result class mirrors the response message it comes from, field for field by name (see
# _from_message); enum fields hold proto names such as "AES_256", repeated fields tuples.


@dataclass(frozen=True)
class MultiRegionConfiguration:
    """Where a multi-region key lives: `multi_region_key_type` PRIMARY or REPLICA says which
    copy this is and `region` where it is; `replica_regions` (at a replica: as its primary
    last told it)."""

    multi_region_key_type: str
    region: str
    primary_region: str
    replica_regions: tuple[str, ...]


# Nested result messages, converted by _from_message too.
_NESTED: dict[str, type[Any]] = {"hsmd.v1.MultiRegionConfiguration": MultiRegionConfiguration}


@dataclass(frozen=True)
class KeyMetadata:
    """A key's metadata; the *_algorithms tuples say what the key accepts, empty for the others.

    `tags` is a read-only mapping (types.MappingProxyType) from tag key to value, so that
    `key.tags["env"]` and `key.tags == {"env": "prod"}` work; being a mapping, it makes a
    KeyMetadata unhashable (compare key ids instead). `deletion_date` is set only while the key
    is PENDING_DELETION. `exportable` says whether wrap_key may export the key (wrapped);
    `valid_to`, set only for imported material that expires, when the key returns to
    PENDING_IMPORT. `tenancy_mode` is "DEDICATED" when the instance holding the key serves
    its tenant alone, "SHARED" when it serves other tenants too. `multi_region_configuration`
    is set only for a multi-region key (`multi_region`): where its primary and replicas are.
    """

    key_id: str
    tenant: str
    name: str
    description: str
    key_spec: str
    key_usage: str
    origin: str
    key_state: str
    creation_time: datetime
    primary_version: int
    encryption_algorithms: tuple[str, ...]
    signing_algorithms: tuple[str, ...]
    mac_algorithms: tuple[str, ...]
    tags: Mapping[str, str]
    deletion_date: datetime | None
    exportable: bool
    valid_to: datetime | None
    tenancy_mode: str
    multi_region: bool
    multi_region_configuration: MultiRegionConfiguration | None


@dataclass(frozen=True)
class WrappedKey:
    """A key exported by wrap_key: `wrapped_key` is the blob of docs/formats.md, which only
    unwrap_key with the same wrapping key opens; `key_version` is the version wrapped."""

    wrapped_key: bytes
    key_id: str
    key_version: int
    wrapping_key_id: str


@dataclass(frozen=True)
class ImportParameters:
    """What import_key_material needs: `public_key` (DER SubjectPublicKeyInfo, RSA) to wrap the
    material under, and `import_token`, which names these parameters and expires at
    `parameters_valid_to`."""

    key_id: str
    import_token: bytes
    public_key: bytes
    parameters_valid_to: datetime


@dataclass(frozen=True)
class KeyPolicy:
    """Who may manage (`administrators`) and who may use (`users`) a key: principal names of the
    key's tenant, or globs of them with `*` and `?`. Both an argument and a result."""

    administrators: tuple[str, ...]
    users: tuple[str, ...] = ()


@dataclass(frozen=True)
class KeyRotationStatus:
    """Whether a key rotates automatically; the period and next date are set only while it does,
    `on_demand_rotation_start_date` only once a rotation on demand ran."""

    key_id: str
    key_rotation_enabled: bool
    rotation_period_in_days: int
    next_rotation_date: datetime | None
    on_demand_rotation_start_date: datetime | None


@dataclass(frozen=True)
class RotateKeyOnDemandResult:
    """The key rotated and its new primary version."""

    key_id: str
    key_version: int


@dataclass(frozen=True)
class KeyRotation:
    """One rotation of a key: the version it made, when, and AUTOMATIC or ON_DEMAND."""

    key_id: str
    key_version: int
    rotation_date: datetime
    rotation_type: str


@dataclass(frozen=True)
class Alias:
    """A friendly name, "alias/<name>", for a key of the tenant."""

    alias_name: str
    target_key_id: str
    creation_time: datetime
    last_updated_time: datetime


@dataclass(frozen=True)
class AuditEvent:
    """One entry of the audit trail: the outcome (a gRPC status name) of one call. It holds the
    encryption-context keys, never their values, and never plaintext or key material.
    `regions` names both regions of a multi-region key's replication (empty otherwise)."""

    sequence: int
    time: datetime
    request_id: str
    tenant: str
    principal: str
    operation: str
    key_id: str
    key_version: int
    encryption_context_keys: tuple[str, ...]
    outcome: str
    peer: str
    previous_hash: str
    hash: str
    regions: tuple[str, ...]


@dataclass(frozen=True)
class TimeReversal:
    """Line `position` of the audit log has a time before that of the line before it."""

    position: int
    time: datetime
    previous_position: int
    previous_time: datetime


@dataclass(frozen=True)
class Backup:
    """A snapshot AdminClient.backup made: its directory on the daemon's host, when it was
    taken, its files and their bytes in all, the last audit event and the tokens it holds."""

    directory: str
    create_time: datetime
    files: int
    bytes: int
    audit_sequence: int
    tokens: int


@dataclass(frozen=True)
class AuditVerification:
    """The result of walking the audit log's hash chain and checking its signed checkpoints;
    when not `valid`, the 1-based line that breaks it (0: the checkpoint file itself) and what
    is wrong there. Times that go backwards are findings, listed apart."""

    valid: bool
    events_checked: int
    first_broken_position: int
    problem: str
    checkpoints_verified: int = 0
    last_checkpoint_position: int = 0
    last_checkpoint_time: datetime | None = None
    last_checkpoint_head: int = 0
    checkpoint_file_position: int = 0
    time_reversals: tuple[TimeReversal, ...] = ()
    time_reversal_count: int = 0
    previous_log: str = ""
    previous_log_position: int = 0
    previous_log_hash: str = ""


@dataclass(frozen=True)
class EncryptResult:
    ciphertext_blob: bytes
    key_id: str
    key_version: int
    encryption_algorithm: str


@dataclass(frozen=True)
class DecryptResult:
    """The plaintext is left out of repr() so that logging a result leaks no secret."""

    plaintext: bytes = field(repr=False)
    key_id: str
    key_version: int
    encryption_algorithm: str


@dataclass(frozen=True)
class ReEncryptResult:
    """Where the blob came from and where it went: key, version and algorithm of each side."""

    ciphertext_blob: bytes
    source_key_id: str
    source_key_version: int
    key_id: str
    key_version: int
    source_encryption_algorithm: str
    destination_encryption_algorithm: str


@dataclass(frozen=True)
class DataKey:
    """A data key in plaintext (hidden from repr()) and encrypted under `key_id`."""

    plaintext: bytes = field(repr=False)
    ciphertext_blob: bytes
    key_id: str
    key_version: int


@dataclass(frozen=True)
class EncryptedDataKey:
    ciphertext_blob: bytes
    key_id: str
    key_version: int


@dataclass(frozen=True)
class DataKeyPair:
    """A key pair: DER public key, DER PKCS#8 private key in plaintext (hidden from repr()) and
    encrypted under `key_id` (Decrypt returns the plaintext)."""

    public_key: bytes
    private_key_plaintext: bytes = field(repr=False)
    private_key_ciphertext_blob: bytes
    key_id: str
    key_version: int
    key_pair_spec: str


@dataclass(frozen=True)
class EncryptedDataKeyPair:
    public_key: bytes
    private_key_ciphertext_blob: bytes
    key_id: str
    key_version: int
    key_pair_spec: str


@dataclass(frozen=True)
class SignResult:
    signature: bytes
    key_id: str
    key_version: int
    signing_algorithm: str


@dataclass(frozen=True)
class VerifyResult:
    """A bad signature is an answer, not an error: check `signature_valid`."""

    signature_valid: bool
    key_id: str
    key_version: int
    signing_algorithm: str


@dataclass(frozen=True)
class PublicKey:
    """The public half of an asymmetric key; `public_key` is DER SubjectPublicKeyInfo."""

    public_key: bytes
    key_id: str
    key_version: int
    key_spec: str
    key_usage: str
    encryption_algorithms: tuple[str, ...]
    signing_algorithms: tuple[str, ...]

    def pem(self) -> bytes:
        """The key as PEM, the form openssl and most libraries read.

        Raises:
            ValueError: `public_key` is not a DER SubjectPublicKeyInfo that cryptography reads.
        """
        key = serialization.load_der_public_key(self.public_key)
        return key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


@dataclass(frozen=True)
class MacResult:
    mac: bytes
    key_id: str
    key_version: int
    mac_algorithm: str


@dataclass(frozen=True)
class VerifyMacResult:
    """A wrong MAC is an answer, not an error: check `mac_valid`."""

    mac_valid: bool
    key_id: str
    key_version: int
    mac_algorithm: str


# Batch items: the arguments of one unary call each, for the batch_* methods (a batch holds
# 1 to MAX_BATCH_ITEMS of them). The unary methods build the same requests from them.

MAX_BATCH_ITEMS = 1000


@dataclass(frozen=True)
class EncryptItem:
    """The arguments of encrypt."""

    key_id: str
    plaintext: bytes = field(repr=False)
    encryption_context: Mapping[str, str] | None = None
    encryption_algorithm: str = "SYMMETRIC_DEFAULT"


@dataclass(frozen=True)
class DecryptItem:
    """The arguments of decrypt."""

    ciphertext_blob: bytes
    encryption_context: Mapping[str, str] | None = None
    key_id: str | None = None
    encryption_algorithm: str | None = None


@dataclass(frozen=True)
class ReEncryptItem:
    """The arguments of re_encrypt."""

    ciphertext_blob: bytes
    destination_key_id: str
    source_encryption_context: Mapping[str, str] | None = None
    destination_encryption_context: Mapping[str, str] | None = None
    source_key_id: str | None = None
    source_encryption_algorithm: str | None = None
    destination_encryption_algorithm: str | None = None


@dataclass(frozen=True)
class GenerateDataKeyItem:
    """The arguments of generate_data_key."""

    key_id: str
    key_spec: str | None = None
    number_of_bytes: int | None = None
    encryption_context: Mapping[str, str] | None = None


@dataclass(frozen=True)
class SignItem:
    """The arguments of sign."""

    key_id: str
    message: bytes
    signing_algorithm: str
    message_type: str = "RAW"


@dataclass(frozen=True)
class VerifyItem:
    """The arguments of verify."""

    key_id: str
    message: bytes
    signature: bytes
    signing_algorithm: str
    message_type: str = "RAW"


@dataclass(frozen=True)
class GenerateMacItem:
    """The arguments of generate_mac."""

    key_id: str
    message: bytes
    mac_algorithm: str


@dataclass(frozen=True)
class VerifyMacItem:
    """The arguments of verify_mac."""

    key_id: str
    message: bytes
    mac: bytes
    mac_algorithm: str


def _encrypt_request(item: EncryptItem) -> service_pb2.EncryptRequest:
    return service_pb2.EncryptRequest(
        key_id=item.key_id,
        plaintext=item.plaintext,
        encryption_context=item.encryption_context,
        plaintext_crc32c=_crc32c(item.plaintext),
        encryption_algorithm=_enum_value(
            resources_pb2.EncryptionAlgorithm, item.encryption_algorithm
        ),
    )


def _encrypt_result(response: service_pb2.EncryptResponse) -> EncryptResult:
    """Raises ChecksumMismatchError: the plaintext or the ciphertext was corrupted."""
    _verify_checksums(
        response.verified_plaintext_crc32c,
        "plaintext",
        response.ciphertext_blob,
        response.ciphertext_crc32c,
    )
    return _from_message(EncryptResult, response)


def _decrypt_request(item: DecryptItem) -> service_pb2.DecryptRequest:
    return service_pb2.DecryptRequest(
        ciphertext_blob=item.ciphertext_blob,
        encryption_context=item.encryption_context,
        key_id=item.key_id or "",
        ciphertext_crc32c=_crc32c(item.ciphertext_blob),
        encryption_algorithm=_enum_value(
            resources_pb2.EncryptionAlgorithm, item.encryption_algorithm
        ),
    )


def _decrypt_result(response: service_pb2.DecryptResponse) -> DecryptResult:
    """Raises ChecksumMismatchError: the ciphertext or the plaintext was corrupted."""
    _verify_checksums(
        response.verified_ciphertext_crc32c,
        "ciphertext",
        response.plaintext,
        response.plaintext_crc32c,
    )
    return _from_message(DecryptResult, response)


def _re_encrypt_request(item: ReEncryptItem) -> service_pb2.ReEncryptRequest:
    algorithm = resources_pb2.EncryptionAlgorithm
    return service_pb2.ReEncryptRequest(
        ciphertext_blob=item.ciphertext_blob,
        source_encryption_context=item.source_encryption_context,
        source_key_id=item.source_key_id or "",
        source_encryption_algorithm=_enum_value(algorithm, item.source_encryption_algorithm),
        destination_key_id=item.destination_key_id,
        destination_encryption_context=item.destination_encryption_context,
        destination_encryption_algorithm=_enum_value(
            algorithm, item.destination_encryption_algorithm
        ),
    )


def _generate_data_key_request(item: GenerateDataKeyItem) -> service_pb2.GenerateDataKeyRequest:
    return _data_key_request(
        service_pb2.GenerateDataKeyRequest,
        item.key_id,
        item.key_spec,
        item.number_of_bytes,
        item.encryption_context,
    )


def _sign_request(item: SignItem) -> service_pb2.SignRequest:
    return service_pb2.SignRequest(
        key_id=item.key_id,
        message=item.message,
        message_type=_enum_value(resources_pb2.MessageType, item.message_type),
        signing_algorithm=_enum_value(resources_pb2.SigningAlgorithm, item.signing_algorithm),
    )


def _verify_request(item: VerifyItem) -> service_pb2.VerifyRequest:
    return service_pb2.VerifyRequest(
        key_id=item.key_id,
        message=item.message,
        message_type=_enum_value(resources_pb2.MessageType, item.message_type),
        signing_algorithm=_enum_value(resources_pb2.SigningAlgorithm, item.signing_algorithm),
        signature=item.signature,
    )


def _generate_mac_request(item: GenerateMacItem) -> service_pb2.GenerateMacRequest:
    return service_pb2.GenerateMacRequest(
        key_id=item.key_id,
        message=item.message,
        mac_algorithm=_enum_value(resources_pb2.MacAlgorithm, item.mac_algorithm),
    )


def _verify_mac_request(item: VerifyMacItem) -> service_pb2.VerifyMacRequest:
    return service_pb2.VerifyMacRequest(
        key_id=item.key_id,
        message=item.message,
        mac_algorithm=_enum_value(resources_pb2.MacAlgorithm, item.mac_algorithm),
        mac=item.mac,
    )


@dataclass(frozen=True)
class Capabilities:
    """What this daemon's backend supports; `notes` say what is missing and why.
    `tenancy_mode`: "DEDICATED" if the instance serves the caller's tenant alone, "SHARED"
    if it serves other tenants too."""

    key_specs: tuple[str, ...]
    encryption_algorithms: tuple[str, ...]
    signing_algorithms: tuple[str, ...]
    mac_algorithms: tuple[str, ...]
    notes: tuple[str, ...]
    tenancy_mode: str


@dataclass(frozen=True)
class TenantQuota:
    """A tenant's quotas: requests per second per operation class, and resource limits. In
    `overrides` a field None follows the daemon's default; in `effective` every field is set.
    docs/operations.md#quotas says which calls each class counts."""

    symmetric_requests_per_second: float | None = None
    asymmetric_requests_per_second: float | None = None
    key_generation_requests_per_second: float | None = None
    management_requests_per_second: float | None = None
    audit_requests_per_second: float | None = None
    max_keys: int | None = None
    max_aliases: int | None = None
    max_tags_per_key: int | None = None
    max_pending_imports: int | None = None
    audit_bytes_per_period: int | None = None


@dataclass(frozen=True)
class TenantUsage:
    """What a tenant uses of its quotas; `audit_bytes` in the current audit period."""

    keys: int
    aliases: int
    pending_imports: int
    audit_bytes: int


@dataclass(frozen=True)
class TenantQuotas:
    """GetTenantQuota's answer: the fields set for the tenant, and what applies."""

    tenant: str
    overrides: TenantQuota
    effective: TenantQuota


@dataclass(frozen=True)
class Tenant:
    """A tenant; `admin_principals` administer every new key of it by default. `state` is
    "ACTIVE", "DISABLED", "PENDING_DELETION" or "DELETING"; `deletion_time` is set while it
    is PENDING_DELETION or DELETING. ListTenants fills `quota` (what applies) and `usage`;
    CreateTenant leaves them None."""

    name: str
    token_label: str
    token_serial: str
    creation_time: datetime
    admin_principals: tuple[str, ...]
    state: str
    deletion_time: datetime | None
    quota: TenantQuota | None = None
    usage: TenantUsage | None = None


@dataclass(frozen=True)
class QuarantinedObject:
    """A token object that start-up found and no key of the daemon's database names: kept,
    never used, until an operator destroys or adopts it. `object_id` is its CKA_ID in hex."""

    tenant: str
    object_id: str
    reason: str
    found_time: datetime


def _policy_message(policy: KeyPolicy) -> resources_pb2.KeyPolicy:
    return resources_pb2.KeyPolicy(
        administrators=_strings("administrators", policy.administrators),
        users=_strings("users", policy.users),
    )


class _Client:
    """Channel ownership, construction and error translation shared by both services."""

    def __init__(
        self,
        channel: grpc.Channel,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        retries: bool = True,
    ) -> None:
        """timeout: each attempt's deadline in seconds (None: none). retries: False makes one
        attempt of every call, for callers that want each refusal as the daemon gives it (a
        load generator, a latency probe)."""
        self._channel = channel
        self._timeout = timeout
        self._retries = retries
        self._bind(channel)

    def _bind(self, channel: grpc.Channel) -> None:
        """Makes the service's stub on the channel (each client's own service)."""
        raise NotImplementedError

    @classmethod
    def connect(
        cls,
        endpoint: str,
        *,
        ca_cert: bytes,
        client_cert: bytes,
        client_key: bytes,
        server_name: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> Self:
        """Connect over mutual TLS; the certificates and key are PEM bytes."""
        channel = secure_channel(endpoint, ca_cert, client_cert, client_key, server_name)
        return cls(channel, timeout=timeout)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] = os.environ, *, timeout: float | None = DEFAULT_TIMEOUT
    ) -> Self:
        """Connect as the HSM_* environment variables say (see ConnectionSettings).

        Raises:
            ConfigurationError: a variable is missing or names an unreadable file.
        """
        return cls(ConnectionSettings.from_env(environ).open_channel(), timeout=timeout)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, method: Callable[..., _T], request: object) -> _T:
        """One call, retried as RETRY_DELAYS says if it is safe to repeat (SAFE_TO_REPEAT)."""
        safe = type(request).__name__.removesuffix("Request") in SAFE_TO_REPEAT
        return self._attempts(method, request, _SAFE_RETRIED if safe else frozenset())

    def _call_with_retries(self, method: Callable[..., _T], request: object) -> _T:
        """A creating call that carries a client token, retried with the same token."""
        return self._attempts(method, request, _TOKEN_RETRIED)

    def _attempts(
        self, method: Callable[..., _T], request: object, retried: frozenset[grpc.StatusCode]
    ) -> _T:
        """Calls until an answer, a failure not in `retried`, or RETRY_DELAYS run out; each
        attempt has the full timeout."""
        for delay in (*(RETRY_DELAYS if self._retries else ()), None):
            try:
                return method(request, timeout=self._timeout)
            except grpc.RpcError as error:
                failure = from_rpc_error(error)
                asked = failure.retry_after if isinstance(failure, ResourceExhaustedError) else 0
                if (
                    delay is None
                    or error.code() not in retried
                    or asked is None  # a resource limit: waiting will not lift it
                    or asked > MAX_HONOURED_DELAY
                ):
                    raise failure from error
            jittered = delay * random.uniform(0.5, 1.5)  # noqa: S311 - jitter, not a secret
            time.sleep(max(jittered, asked))
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _result(
        self, method: Callable[..., Message], request: object, cls: type[_D], part: str = ""
    ) -> _D:
        """Call `method` and return its response, or the response's message field `part`, as
        `cls`; for calls with nothing to check."""
        response = self._call(method, request)
        return _from_message(cls, getattr(response, part) if part else response)

    def _page(
        self, method: Callable[..., Message], request: object, items: str, cls: type[_D]
    ) -> tuple[list[_D], str]:
        """Call a List method: its repeated field `items` as `cls`, and the next page's token."""
        response = self._call(method, request)
        page = [_from_message(cls, item) for item in getattr(response, items)]
        return page, getattr(response, "next_page_token")  # noqa: B009 - every List response

    def _audit_page(
        self,
        method: Callable[..., Message],
        page_size: int,
        page_token: str,
        key_id: str | None,
        tenant: str | None = None,
    ) -> tuple[list[AuditEvent], str]:
        """One page of either service's ListAuditEvents."""
        request = service_pb2.ListAuditEventsRequest(
            page_size=page_size, page_token=page_token, key_id=key_id or "", tenant=tenant or ""
        )
        return self._page(method, request, "events", AuditEvent)


class HsmClient(_Client):
    """Keys and cryptography in the tenant that the client certificate names.

    Every method raises an `hsmclient.errors.HsmError` subclass when the daemon refuses the call,
    and ValueError for arguments it can reject without asking the daemon.
    """

    def _bind(self, channel: grpc.Channel) -> None:
        self._stub = service_pb2_grpc.KeyManagementServiceStub(channel)

    def _metadata(self, method: Callable[..., Message], request: object) -> KeyMetadata:
        """Call a method whose response holds the key's metadata, and return that."""
        return self._result(method, request, KeyMetadata, "key_metadata")

    def create_key(
        self,
        key_spec: str = "AES_256",
        key_usage: str | None = None,
        description: str = "",
        policy: KeyPolicy | None = None,
        tags: Mapping[str, str] | None = None,
        exportable: bool = False,
        origin: str = "GENERATED",
        client_token: str | None = None,
        multi_region: bool = False,
    ) -> KeyMetadata:
        """A new key. Without `key_usage` the daemon gives the spec's only usage (HMAC_256:
        GENERATE_VERIFY_MAC), else ENCRYPT_DECRYPT; it refuses a usage the spec cannot have.
        Without `policy` the caller and the tenant's admin principals administer the key and the
        caller uses it. An `exportable` key can be exported, wrapped, by wrap_key; that cannot
        change later. Origin EXTERNAL makes a key without material, PENDING_IMPORT until
        import_key (or import_key_material) gives it some. `multi_region` makes the primary of
        a multi-region key (its id starts "mrk-"), which replicate_key copies to other regions.

        The call carries a client token (a new one unless `client_token` is given) and is
        retried with it when the daemon is unavailable or slow: it makes one key at most."""
        request = service_pb2.CreateKeyRequest(
            key_spec=_enum_value(resources_pb2.KeySpec, key_spec),
            key_usage=_enum_value(resources_pb2.KeyUsage, key_usage),
            description=description,
            policy=None if policy is None else _policy_message(policy),
            tags=tags,
            exportable=exportable,
            origin=_enum_value(resources_pb2.KeyOrigin, origin),
            client_token=client_token or _new_client_token(),
            multi_region=multi_region,
        )
        response = self._call_with_retries(self._stub.CreateKey, request)
        return _from_message(KeyMetadata, response.key_metadata)

    def describe_key(self, key_id: str) -> KeyMetadata:
        return self._metadata(self._stub.DescribeKey, service_pb2.DescribeKeyRequest(key_id=key_id))

    def list_keys(
        self, page_size: int = 0, page_token: str = "", tag_filter: Mapping[str, str] | None = None
    ) -> tuple[list[KeyMetadata], str]:
        """One page of keys, oldest first, and the token of the next page ("" after the last);
        with `tag_filter`, only the keys that carry all of those tags with those values."""
        request = service_pb2.ListKeysRequest(
            page_size=page_size, page_token=page_token, tag_filter=tag_filter
        )
        return self._page(self._stub.ListKeys, request, "keys", KeyMetadata)

    def iter_keys(
        self, page_size: int = 0, page_token: str = "", tag_filter: Mapping[str, str] | None = None
    ) -> Iterator[KeyMetadata]:
        """Every key from `page_token` on, fetching pages as the iteration reaches them."""
        return _every_page(lambda token: self.list_keys(page_size, token, tag_filter), page_token)

    # --- lifecycle -----------------------------------------------------------------------------

    def enable_key(self, key_id: str) -> KeyMetadata:
        """Make a DISABLED key usable again."""
        return self._metadata(self._stub.EnableKey, service_pb2.EnableKeyRequest(key_id=key_id))

    def disable_key(self, key_id: str) -> KeyMetadata:
        """Make a key unusable until enable_key; nothing is destroyed."""
        return self._metadata(self._stub.DisableKey, service_pb2.DisableKeyRequest(key_id=key_id))

    def schedule_key_deletion(
        self, key_id: str, pending_window_in_days: int | None = None
    ) -> KeyMetadata:
        """Schedule the key's destruction after 7-30 days (the daemon's default: 30); the result
        is PENDING_DELETION and its `deletion_date` says when.

        Raises:
            ValueError: `pending_window_in_days` is not positive.
        """
        request = service_pb2.ScheduleKeyDeletionRequest(
            key_id=key_id,
            pending_window_in_days=_count("pending_window_in_days", pending_window_in_days),
        )
        return self._metadata(self._stub.ScheduleKeyDeletion, request)

    def cancel_key_deletion(self, key_id: str) -> KeyMetadata:
        """Cancel a scheduled deletion; the key becomes DISABLED (enable_key it to use it)."""
        request = service_pb2.CancelKeyDeletionRequest(key_id=key_id)
        return self._metadata(self._stub.CancelKeyDeletion, request)

    def update_key_description(self, key_id: str, description: str) -> KeyMetadata:
        """Replace the key's description; "" clears it."""
        request = service_pb2.UpdateKeyDescriptionRequest(key_id=key_id, description=description)
        return self._metadata(self._stub.UpdateKeyDescription, request)

    def tag_key(self, key_id: str, tags: Mapping[str, str]) -> KeyMetadata:
        """Add tags to the key, replacing the values of tag keys it has already."""
        request = service_pb2.TagKeyRequest(key_id=key_id, tags=tags)
        return self._metadata(self._stub.TagKey, request)

    def untag_key(self, key_id: str, tag_keys: Iterable[str]) -> KeyMetadata:
        """Remove the tags of these keys; keys the key lacks are ignored.

        Raises:
            ValueError: `tag_keys` is a single string.
        """
        request = service_pb2.UntagKeyRequest(
            key_id=key_id, tag_keys=_strings("tag_keys", tag_keys)
        )
        return self._metadata(self._stub.UntagKey, request)

    def get_key_policy(self, key_id: str) -> KeyPolicy:
        request = service_pb2.GetKeyPolicyRequest(key_id=key_id)
        return self._result(self._stub.GetKeyPolicy, request, KeyPolicy, "policy")

    def put_key_policy(self, key_id: str, policy: KeyPolicy) -> KeyPolicy:
        """Replace the key's policy; the daemon refuses one that leaves the key without an
        administrator or locks the caller out of managing it.

        Raises:
            ValueError: a field of `policy` is a single string.
        """
        request = service_pb2.PutKeyPolicyRequest(key_id=key_id, policy=_policy_message(policy))
        return self._result(self._stub.PutKeyPolicy, request, KeyPolicy, "policy")

    # --- rotation ------------------------------------------------------------------------------

    def enable_key_rotation(
        self, key_id: str, rotation_period_in_days: int | None = None
    ) -> KeyRotationStatus:
        """Rotate an AES_256 key automatically every 90-2,560 days (the daemon's default: 365).

        Raises:
            ValueError: `rotation_period_in_days` is not positive.
        """
        request = service_pb2.EnableKeyRotationRequest(
            key_id=key_id,
            rotation_period_in_days=_count("rotation_period_in_days", rotation_period_in_days),
        )
        return self._result(self._stub.EnableKeyRotation, request, KeyRotationStatus, "status")

    def disable_key_rotation(self, key_id: str) -> KeyRotationStatus:
        request = service_pb2.DisableKeyRotationRequest(key_id=key_id)
        return self._result(self._stub.DisableKeyRotation, request, KeyRotationStatus, "status")

    def get_key_rotation_status(self, key_id: str) -> KeyRotationStatus:
        request = service_pb2.GetKeyRotationStatusRequest(key_id=key_id)
        return self._result(self._stub.GetKeyRotationStatus, request, KeyRotationStatus)

    # --- multi-region keys (docs/regions.md) ------------------------------------------------

    def replicate_key(
        self,
        key_id: str,
        replica_region: str,
        description: str = "",
        policy: KeyPolicy | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> KeyMetadata:
        """A replica of the multi-region primary `key_id` in `replica_region`, with the same
        id and material; returns the replica as its region holds it. Its description defaults
        to the primary's."""
        request = service_pb2.ReplicateKeyRequest(
            key_id=key_id,
            replica_region=replica_region,
            description=description,
            policy=None if policy is None else _policy_message(policy),
            tags=tags,
        )
        return self._result(self._stub.ReplicateKey, request, KeyMetadata, "replica_key_metadata")

    def update_primary_region(self, key_id: str, primary_region: str) -> KeyMetadata:
        """Makes the key's replica in `primary_region` its primary; returns this region's copy,
        now a replica."""
        request = service_pb2.UpdatePrimaryRegionRequest(
            key_id=key_id, primary_region=primary_region
        )
        return self._metadata(self._stub.UpdatePrimaryRegion, request)

    def rotate_key_on_demand(self, key_id: str) -> RotateKeyOnDemandResult:
        """Rotate now: a new version becomes primary; older versions still decrypt."""
        request = service_pb2.RotateKeyOnDemandRequest(key_id=key_id)
        return self._result(self._stub.RotateKeyOnDemand, request, RotateKeyOnDemandResult)

    def list_key_rotations(
        self, key_id: str, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[KeyRotation], str]:
        """One page of the key's rotations, oldest first, and the next page's token."""
        request = service_pb2.ListKeyRotationsRequest(
            key_id=key_id, page_size=page_size, page_token=page_token
        )
        return self._page(self._stub.ListKeyRotations, request, "rotations", KeyRotation)

    def iter_key_rotations(
        self, key_id: str, page_size: int = 0, page_token: str = ""
    ) -> Iterator[KeyRotation]:
        return _every_page(
            lambda token: self.list_key_rotations(key_id, page_size, token), page_token
        )

    # --- aliases -------------------------------------------------------------------------------

    def create_alias(self, alias_name: str, target_key_id: str) -> Alias:
        """Name a key "alias/<name>"; `target_key_id` must be a key id, not an alias."""
        request = service_pb2.CreateAliasRequest(alias_name=alias_name, target_key_id=target_key_id)
        return self._result(self._stub.CreateAlias, request, Alias, "alias")

    def update_alias(self, alias_name: str, target_key_id: str) -> Alias:
        """Point an alias at another key of the same spec and usage."""
        request = service_pb2.UpdateAliasRequest(alias_name=alias_name, target_key_id=target_key_id)
        return self._result(self._stub.UpdateAlias, request, Alias, "alias")

    def delete_alias(self, alias_name: str) -> None:
        """Delete an alias; its key is untouched."""
        self._call(self._stub.DeleteAlias, service_pb2.DeleteAliasRequest(alias_name=alias_name))

    def list_aliases(
        self, key_id: str | None = None, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[Alias], str]:
        """One page of the tenant's aliases (only `key_id`'s, if given) and the next page's
        token."""
        request = service_pb2.ListAliasesRequest(
            key_id=key_id or "", page_size=page_size, page_token=page_token
        )
        return self._page(self._stub.ListAliases, request, "aliases", Alias)

    def iter_aliases(
        self, key_id: str | None = None, page_size: int = 0, page_token: str = ""
    ) -> Iterator[Alias]:
        return _every_page(lambda token: self.list_aliases(key_id, page_size, token), page_token)

    # --- wrapping and import ------------------------------------------------------------------

    def wrap_key(self, key_id: str, wrapping_key_id: str) -> WrappedKey:
        """Export an exportable key's primary version, wrapped under a WRAP_UNWRAP key of the
        tenant; a key created without `exportable` can never be wrapped."""
        request = service_pb2.WrapKeyRequest(key_id=key_id, wrapping_key_id=wrapping_key_id)
        return self._result(self._stub.WrapKey, request, WrappedKey)

    def unwrap_key(
        self,
        wrapped_key: bytes,
        wrapping_key_id: str,
        description: str = "",
        policy: KeyPolicy | None = None,
        tags: Mapping[str, str] | None = None,
        exportable: bool = False,
        client_token: str | None = None,
    ) -> KeyMetadata:
        """A new key (origin UNWRAPPED) from a blob of wrap_key, unwrapped inside the daemon with
        the key that wrapped it; not exportable unless asked. `description`, `policy`, `tags`
        and `client_token` as for create_key (retries make one key at most)."""
        request = service_pb2.UnwrapKeyRequest(
            wrapped_key=wrapped_key,
            wrapping_key_id=wrapping_key_id,
            description=description,
            policy=None if policy is None else _policy_message(policy),
            tags=tags,
            exportable=exportable,
            client_token=client_token or _new_client_token(),
        )
        response = self._call_with_retries(self._stub.UnwrapKey, request)
        return _from_message(KeyMetadata, response.key_metadata)

    def get_parameters_for_import(
        self, key_id: str, wrapping_algorithm: str, wrapping_key_spec: str = "RSA_2048"
    ) -> ImportParameters:
        """An RSA public key (RSA_2048, RSA_3072 or RSA_4096) to wrap key material under with
        `wrapping_algorithm` (see hsmclient.keyimport), and the import token that goes with it,
        for a key of origin EXTERNAL.

        Raises:
            ValueError: the algorithm is unknown, or the spec is not an RSA one.
        """
        if not wrapping_key_spec.startswith("RSA_"):
            raise ValueError(f"the wrapping key spec must be RSA_*, not {wrapping_key_spec!r}")
        request = service_pb2.GetParametersForImportRequest(
            key_id=key_id,
            wrapping_algorithm=_wrapping_algorithm(wrapping_algorithm),
            wrapping_key_spec=_enum_value(resources_pb2.KeySpec, wrapping_key_spec),
        )
        return self._result(self._stub.GetParametersForImport, request, ImportParameters)

    def import_key_material(
        self,
        key_id: str,
        import_token: bytes,
        encrypted_key_material: bytes,
        valid_to: datetime | None = None,
        public_key: bytes | None = None,
    ) -> KeyMetadata:
        """Give a PENDING_IMPORT key its material, wrapped as get_parameters_for_import said; the
        key becomes ENABLED, until `valid_to` if given. `public_key`, the DER
        SubjectPublicKeyInfo of an imported private key, is checked against it (required for
        EC keys). Re-importing accepts only the same material.

        Raises:
            ValueError: `valid_to` is a naive datetime.
        """
        request = service_pb2.ImportKeyMaterialRequest(
            key_id=key_id,
            import_token=import_token,
            encrypted_key_material=encrypted_key_material,
            valid_to=_timestamp("valid_to", valid_to),
            public_key=public_key or b"",
        )
        return self._metadata(self._stub.ImportKeyMaterial, request)

    def delete_imported_key_material(self, key_id: str) -> KeyMetadata:
        """Destroy a key's imported material; the key returns to PENDING_IMPORT."""
        request = service_pb2.DeleteImportedKeyMaterialRequest(key_id=key_id)
        return self._metadata(self._stub.DeleteImportedKeyMaterial, request)

    def import_key(
        self,
        key_id: str,
        key_file: bytes | str | os.PathLike[str],
        key_spec: str,
        wrapping_algorithm: str | None = None,
        valid_to: datetime | None = None,
    ) -> KeyMetadata:
        """Import a key file into a PENDING_IMPORT key of `key_spec`, as AWS's import flow does:
        get parameters, wrap the material here (hsmclient.keyimport), import it. The key file
        is its bytes or its path (see keyimport.material_from_key_file). Without
        `wrapping_algorithm`, RSAES_OAEP_SHA_1 for a raw key, RSA_AES_KEY_WRAP_SHA_1 for a
        private key.

        Raises:
            ValueError: the key file does not fit `key_spec`, the algorithm is unknown, or
                `valid_to` is a naive datetime; nothing was asked of the daemon.
            OSError: the key file cannot be read.
        """
        _timestamp("valid_to", valid_to)  # refuse a naive time before any call
        spec = aws.hsmd_name("KeySpec", key_spec)
        material, public_key = keyimport.material_from_key_file(key_file, spec)
        algorithm = wrapping_algorithm or keyimport.default_wrapping_algorithm(material, public_key)
        parameters = self.get_parameters_for_import(key_id, algorithm)
        encrypted = keyimport.wrap_for_import(material, parameters.public_key, algorithm)
        return self.import_key_material(
            parameters.key_id, parameters.import_token, encrypted, valid_to, public_key
        )

    # --- audit ---------------------------------------------------------------------------------

    def list_audit_events(
        self, page_size: int = 0, page_token: str = "", key_id: str | None = None
    ) -> tuple[list[AuditEvent], str]:
        """One page of the caller's tenant's audit events (only those about `key_id`, if given),
        oldest first, and the next page's token."""
        return self._audit_page(self._stub.ListAuditEvents, page_size, page_token, key_id)

    def iter_audit_events(
        self, page_size: int = 0, page_token: str = "", key_id: str | None = None
    ) -> Iterator[AuditEvent]:
        return _every_page(
            lambda token: self.list_audit_events(page_size, token, key_id), page_token
        )

    def encrypt(
        self,
        key_id: str,
        plaintext: bytes,
        encryption_context: Mapping[str, str] | None = None,
        encryption_algorithm: str = "SYMMETRIC_DEFAULT",
    ) -> EncryptResult:
        """Encrypt up to 4,096 bytes; Decrypt needs the same encryption context and algorithm.

        Raises:
            ChecksumMismatchError: the plaintext or the ciphertext was corrupted in transit.
        """
        item = EncryptItem(key_id, plaintext, encryption_context, encryption_algorithm)
        return _encrypt_result(self._call(self._stub.Encrypt, _encrypt_request(item)))

    def decrypt(
        self,
        ciphertext_blob: bytes,
        encryption_context: Mapping[str, str] | None = None,
        key_id: str | None = None,
        encryption_algorithm: str | None = None,
    ) -> DecryptResult:
        """Decrypt a blob of Encrypt or GenerateDataKey; `key_id`, if given, must have made it.

        An RSA ciphertext names no key: pass `key_id` and the RSAES_OAEP_* it was made with.

        Raises:
            ChecksumMismatchError: the ciphertext or the plaintext was corrupted in transit.
        """
        item = DecryptItem(ciphertext_blob, encryption_context, key_id, encryption_algorithm)
        return _decrypt_result(self._call(self._stub.Decrypt, _decrypt_request(item)))

    def re_encrypt(
        self,
        ciphertext_blob: bytes,
        destination_key_id: str,
        source_encryption_context: Mapping[str, str] | None = None,
        destination_encryption_context: Mapping[str, str] | None = None,
        source_key_id: str | None = None,
        source_encryption_algorithm: str | None = None,
        destination_encryption_algorithm: str | None = None,
    ) -> ReEncryptResult:
        """Move a blob under another key (or context) without its plaintext leaving the daemon.

        An RSA ciphertext names no key: pass `source_key_id` and its algorithm.
        """
        item = ReEncryptItem(
            ciphertext_blob,
            destination_key_id,
            source_encryption_context,
            destination_encryption_context,
            source_key_id,
            source_encryption_algorithm,
            destination_encryption_algorithm,
        )
        return self._result(self._stub.ReEncrypt, _re_encrypt_request(item), ReEncryptResult)

    def generate_data_key(
        self,
        key_id: str,
        key_spec: str | None = None,
        number_of_bytes: int | None = None,
        encryption_context: Mapping[str, str] | None = None,
    ) -> DataKey:
        """A fresh data key, sized by `key_spec` or `number_of_bytes` (AES_256 if neither)."""
        item = GenerateDataKeyItem(key_id, key_spec, number_of_bytes, encryption_context)
        return self._result(self._stub.GenerateDataKey, _generate_data_key_request(item), DataKey)

    def generate_data_key_without_plaintext(
        self,
        key_id: str,
        key_spec: str | None = None,
        number_of_bytes: int | None = None,
        encryption_context: Mapping[str, str] | None = None,
    ) -> EncryptedDataKey:
        """As generate_data_key, for a party that stores the key now and decrypts it later."""
        request = _data_key_request(
            service_pb2.GenerateDataKeyWithoutPlaintextRequest,
            key_id,
            key_spec,
            number_of_bytes,
            encryption_context,
        )
        return self._result(self._stub.GenerateDataKeyWithoutPlaintext, request, EncryptedDataKey)

    def generate_data_key_pair(
        self,
        key_id: str,
        key_pair_spec: str,
        encryption_context: Mapping[str, str] | None = None,
    ) -> DataKeyPair:
        """A fresh key pair (RSA_* or EC_*), its private key also encrypted under `key_id`."""
        request = _key_pair_request(
            service_pb2.GenerateDataKeyPairRequest, key_id, key_pair_spec, encryption_context
        )
        return self._result(self._stub.GenerateDataKeyPair, request, DataKeyPair)

    def generate_data_key_pair_without_plaintext(
        self,
        key_id: str,
        key_pair_spec: str,
        encryption_context: Mapping[str, str] | None = None,
    ) -> EncryptedDataKeyPair:
        """As generate_data_key_pair, for a party that only needs the public key now."""
        request = _key_pair_request(
            service_pb2.GenerateDataKeyPairWithoutPlaintextRequest,
            key_id,
            key_pair_spec,
            encryption_context,
        )
        return self._result(
            self._stub.GenerateDataKeyPairWithoutPlaintext, request, EncryptedDataKeyPair
        )

    def sign(
        self, key_id: str, message: bytes, signing_algorithm: str, message_type: str = "RAW"
    ) -> SignResult:
        """Sign a message (at most 4,096 bytes), or a digest with message_type="DIGEST"."""
        item = SignItem(key_id, message, signing_algorithm, message_type)
        return self._result(self._stub.Sign, _sign_request(item), SignResult)

    def verify(
        self,
        key_id: str,
        message: bytes,
        signature: bytes,
        signing_algorithm: str,
        message_type: str = "RAW",
    ) -> VerifyResult:
        """Check a signature; an invalid one gives signature_valid=False, not an exception."""
        item = VerifyItem(key_id, message, signature, signing_algorithm, message_type)
        return self._result(self._stub.Verify, _verify_request(item), VerifyResult)

    def get_public_key(self, key_id: str) -> PublicKey:
        """The public half of an asymmetric key, to verify or encrypt without the daemon."""
        request = service_pb2.GetPublicKeyRequest(key_id=key_id)
        return self._result(self._stub.GetPublicKey, request, PublicKey)

    def generate_mac(self, key_id: str, message: bytes, mac_algorithm: str) -> MacResult:
        item = GenerateMacItem(key_id, message, mac_algorithm)
        return self._result(self._stub.GenerateMac, _generate_mac_request(item), MacResult)

    def verify_mac(
        self, key_id: str, message: bytes, mac: bytes, mac_algorithm: str
    ) -> VerifyMacResult:
        """Check a MAC in the daemon (in constant time); a wrong one gives mac_valid=False."""
        item = VerifyMacItem(key_id, message, mac, mac_algorithm)
        return self._result(self._stub.VerifyMac, _verify_mac_request(item), VerifyMacResult)

    def get_capabilities(self) -> Capabilities:
        """What the backend supports: a spec or algorithm missing here will be refused."""
        request = service_pb2.GetCapabilitiesRequest()
        return self._result(self._stub.GetCapabilities, request, Capabilities)

    def generate_random(self, number_of_bytes: int) -> bytes:
        """1 to 1,024 random bytes from the tenant's token."""
        request = service_pb2.GenerateRandomRequest(number_of_bytes=number_of_bytes)
        response: service_pb2.GenerateRandomResponse = self._call(
            self._stub.GenerateRandom, request
        )
        return response.plaintext

    # Batches: many items of one operation in one call, each answered on its own, in order.
    # Each returns a list with, per item, what the unary method returns or the HsmError it
    # would raise (returned, not raised; ChecksumMismatchError too). The list is never split:
    # more than MAX_BATCH_ITEMS items is a ValueError, as is none.

    def batch_encrypt(self, items: Sequence[EncryptItem]) -> list[EncryptResult | HsmError]:
        return self._batch(
            self._stub.BatchEncrypt,
            service_pb2.BatchEncryptRequest,
            items,
            _encrypt_request,
            _encrypt_result,
        )

    def batch_decrypt(self, items: Sequence[DecryptItem]) -> list[DecryptResult | HsmError]:
        return self._batch(
            self._stub.BatchDecrypt,
            service_pb2.BatchDecryptRequest,
            items,
            _decrypt_request,
            _decrypt_result,
        )

    def batch_re_encrypt(self, items: Sequence[ReEncryptItem]) -> list[ReEncryptResult | HsmError]:
        return self._batch(
            self._stub.BatchReEncrypt,
            service_pb2.BatchReEncryptRequest,
            items,
            _re_encrypt_request,
            functools.partial(_from_message, ReEncryptResult),
        )

    def batch_generate_data_key(
        self, items: Sequence[GenerateDataKeyItem]
    ) -> list[DataKey | HsmError]:
        return self._batch(
            self._stub.BatchGenerateDataKey,
            service_pb2.BatchGenerateDataKeyRequest,
            items,
            _generate_data_key_request,
            functools.partial(_from_message, DataKey),
        )

    def batch_sign(self, items: Sequence[SignItem]) -> list[SignResult | HsmError]:
        return self._batch(
            self._stub.BatchSign,
            service_pb2.BatchSignRequest,
            items,
            _sign_request,
            functools.partial(_from_message, SignResult),
        )

    def batch_verify(self, items: Sequence[VerifyItem]) -> list[VerifyResult | HsmError]:
        return self._batch(
            self._stub.BatchVerify,
            service_pb2.BatchVerifyRequest,
            items,
            _verify_request,
            functools.partial(_from_message, VerifyResult),
        )

    def batch_generate_mac(self, items: Sequence[GenerateMacItem]) -> list[MacResult | HsmError]:
        return self._batch(
            self._stub.BatchGenerateMac,
            service_pb2.BatchGenerateMacRequest,
            items,
            _generate_mac_request,
            functools.partial(_from_message, MacResult),
        )

    def batch_verify_mac(self, items: Sequence[VerifyMacItem]) -> list[VerifyMacResult | HsmError]:
        return self._batch(
            self._stub.BatchVerifyMac,
            service_pb2.BatchVerifyMacRequest,
            items,
            _verify_mac_request,
            functools.partial(_from_message, VerifyMacResult),
        )

    def _batch(
        self,
        method: Callable[..., Any],
        request_type: Callable[..., Message],
        items: Sequence[_Item],
        build: Callable[[_Item], Message],
        convert: Callable[[Any], _T],
    ) -> list[_T | HsmError]:
        """One batch call: the items' requests as the unary methods build them, and each
        result converted (and checked) as the unary method does, or its error.

        Raises:
            ValueError: no items, more than MAX_BATCH_ITEMS, or an item the unary method
                would refuse.
            HsmError: the daemon refused the batch as a whole.
        """
        if not 1 <= len(items) <= MAX_BATCH_ITEMS:
            raise ValueError(f"a batch holds 1 to {MAX_BATCH_ITEMS} items, not {len(items)}")
        response = self._call(method, request_type(requests=[build(item) for item in items]))
        if len(response.results) != len(items):
            raise InternalError(
                f"the daemon answered {len(response.results)} results for {len(items)} items"
            )
        answers: list[_T | HsmError] = []
        for result in response.results:
            if result.WhichOneof("outcome") == "error":
                answers.append(from_status(result.error))
                continue
            try:
                answers.append(convert(result.response))
            except HsmError as error:  # a checksum that does not match
                answers.append(error)
        return answers


class AdminClient(_Client):
    """Tenant administration; needs an operator's client certificate."""

    def _bind(self, channel: grpc.Channel) -> None:
        self._stub = admin_pb2_grpc.AdminServiceStub(channel)

    def create_tenant(
        self,
        name: str,
        admin_principals: Iterable[str] | None = None,
        client_token: str | None = None,
    ) -> Tenant:
        """Create a tenant and its token; the daemon serves it at once. `admin_principals`
        (principal names or globs; the daemon's default: ["admin"]) administer every new key.
        Retried like create_key, with a client token.

        Raises:
            ValueError: `admin_principals` is a single string.
        """
        request = admin_pb2.CreateTenantRequest(
            name=name,
            admin_principals=_strings("admin_principals", admin_principals or ()),
            client_token=client_token or _new_client_token(),
        )
        response = self._call_with_retries(self._stub.CreateTenant, request)
        return _tenant(response.tenant)

    def list_tenants(self) -> list[Tenant]:
        """Every tenant, with the quotas that apply to it and its usage."""
        request = admin_pb2.ListTenantsRequest()
        response: admin_pb2.ListTenantsResponse = self._call(self._stub.ListTenants, request)
        return [_tenant(tenant) for tenant in response.tenants]

    def get_tenant_quota(self, tenant: str) -> TenantQuotas:
        request = admin_pb2.GetTenantQuotaRequest(tenant=tenant)
        return _tenant_quotas(self._call(self._stub.GetTenantQuota, request))

    def set_tenant_quota(self, tenant: str, quota: TenantQuota) -> TenantQuotas:
        """Set the fields of `quota` that are not None for the tenant; the others follow the
        daemon's defaults (TenantQuota() restores all of them). Applies at the tenant's next
        call."""
        fields = {
            name: value for name, value in dataclasses.asdict(quota).items() if value is not None
        }
        request = admin_pb2.SetTenantQuotaRequest(
            tenant=tenant, quota=admin_pb2.TenantQuota(**fields)
        )
        response = self._call(self._stub.SetTenantQuota, request)
        return _tenant_quotas(response.tenant_quota)

    def disable_tenant(self, name: str) -> Tenant:
        """Refuse every call of the tenant's principals (FailedPreconditionError) until
        enable_tenant; its keys are untouched."""
        request = admin_pb2.DisableTenantRequest(name=name)
        return self._tenant_call(self._stub.DisableTenant, request)

    def enable_tenant(self, name: str) -> Tenant:
        """Serve a disabled tenant again."""
        request = admin_pb2.EnableTenantRequest(name=name)
        return self._tenant_call(self._stub.EnableTenant, request)

    def delete_tenant(self, name: str, pending_window_in_days: int | None = None) -> Tenant:
        """Schedule the tenant's destruction (its token, every key, all its metadata) after
        7-30 days (the daemon's default: 30); it is refused like a disabled tenant meanwhile.

        Raises:
            ValueError: `pending_window_in_days` is not positive.
        """
        request = admin_pb2.DeleteTenantRequest(
            name=name,
            pending_window_in_days=_count("pending_window_in_days", pending_window_in_days),
        )
        return self._tenant_call(self._stub.DeleteTenant, request)

    def cancel_tenant_deletion(self, name: str) -> Tenant:
        """Keep a tenant pending deletion; it becomes DISABLED (enable_tenant serves it)."""
        request = admin_pb2.CancelTenantDeletionRequest(name=name)
        return self._tenant_call(self._stub.CancelTenantDeletion, request)

    def _tenant_call(self, method: Callable[..., Any], request: Message) -> Tenant:
        return _from_message(Tenant, self._call(method, request).tenant)

    def list_audit_events(
        self,
        page_size: int = 0,
        page_token: str = "",
        key_id: str | None = None,
        tenant: str | None = None,
    ) -> tuple[list[AuditEvent], str]:
        """One page of every tenant's audit events (only `tenant`'s, or `key_id`'s, if given),
        oldest first, and the next page's token."""
        return self._audit_page(self._stub.ListAuditEvents, page_size, page_token, key_id, tenant)

    def iter_audit_events(
        self,
        page_size: int = 0,
        page_token: str = "",
        key_id: str | None = None,
        tenant: str | None = None,
    ) -> Iterator[AuditEvent]:
        return _every_page(
            lambda token: self.list_audit_events(page_size, token, key_id, tenant), page_token
        )

    def backup(self) -> Backup:
        """Make the daemon write a consistent snapshot of its state while it serves (database,
        tokens, audit log; not the master secret) into its backup directory; `hsmd restore`
        brings it back. Not retried: each call makes a snapshot."""
        return _from_message(Backup, self._call(self._stub.Backup, admin_pb2.BackupRequest()))

    def verify_audit_log(self) -> AuditVerification:
        """Walk the whole audit log's hash chain and check its checkpoints; a broken chain is
        an answer, not an error (after it, the daemon refuses every call until an operator
        acts)."""
        response = self._call(self._stub.VerifyAuditLog, admin_pb2.VerifyAuditLogRequest())
        return dataclasses.replace(
            _from_message(AuditVerification, response),
            time_reversals=tuple(
                _from_message(TimeReversal, reversal) for reversal in response.time_reversals
            ),
        )

    def list_quarantined_objects(
        self, tenant: str | None = None, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[QuarantinedObject], str]:
        """One page of quarantined token objects (of one tenant, or all), oldest first, and
        the next page's token."""
        request = admin_pb2.ListQuarantinedObjectsRequest(
            tenant=tenant or "", page_size=page_size, page_token=page_token
        )
        return self._page(self._stub.ListQuarantinedObjects, request, "objects", QuarantinedObject)

    def iter_quarantined_objects(self, tenant: str | None = None) -> Iterator[QuarantinedObject]:
        return _every_page(
            lambda token: self.list_quarantined_objects(tenant, page_token=token), ""
        )

    def destroy_quarantined_object(self, tenant: str, object_id: str) -> None:
        """Destroy a quarantined object (CKA_ID in hex) in the tenant's token."""
        request = admin_pb2.DestroyQuarantinedObjectRequest(tenant=tenant, object_id=object_id)
        self._call(self._stub.DestroyQuarantinedObject, request)

    def adopt_quarantined_object(
        self, tenant: str, object_id: str, key_id: str, key_version: int
    ) -> KeyMetadata:
        """Make a quarantined object the object of a key version whose own object is lost."""
        request = admin_pb2.AdoptQuarantinedObjectRequest(
            tenant=tenant, object_id=object_id, key_id=key_id, key_version=key_version
        )
        return self._result(self._stub.AdoptQuarantinedObject, request, KeyMetadata, "key_metadata")


def _tenant(message: admin_pb2.Tenant) -> Tenant:
    return dataclasses.replace(
        _from_message(Tenant, message),
        quota=_from_message(TenantQuota, message.quota) if message.HasField("quota") else None,
        usage=_from_message(TenantUsage, message.usage) if message.HasField("usage") else None,
    )


def _tenant_quotas(message: admin_pb2.GetTenantQuotaResponse) -> TenantQuotas:
    return TenantQuotas(
        message.tenant,
        _from_message(TenantQuota, message.overrides),
        _from_message(TenantQuota, message.effective),
    )
