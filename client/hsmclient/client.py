"""Typed clients for hsmd's KeyManagementService and AdminService.

Methods take and return plain Python values, never protobuf messages; enum values travel as their
proto names ("AES_256", "ENABLED"). Encrypt and Decrypt check CRC32C checksums end to end, as Cloud
KMS clients do, and every failed call raises an `hsmclient.errors` exception.
"""

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol, Self, TypeVar

import google_crc32c
import grpc
from google.protobuf.descriptor import EnumDescriptor

from hsmclient.channel import ConnectionSettings, secure_channel
from hsmclient.errors import ChecksumMismatchError, from_rpc_error
from hsmd.v1 import admin_pb2, admin_pb2_grpc, resources_pb2, service_pb2, service_pb2_grpc

DEFAULT_TIMEOUT = 30.0
"""Seconds each call may take before it fails with DeadlineExceededError."""

_T = TypeVar("_T")
_V = TypeVar("_V", bound=int)


class _ProtoEnum(Protocol[_V]):
    """What the generated enum classes offer; lets one helper serve every enum type-safely."""

    DESCRIPTOR: EnumDescriptor

    def Name(self, number: _V) -> str: ...
    def Value(self, name: str) -> _V: ...
    def keys(self) -> list[str]: ...


def _enum_value(enum: _ProtoEnum[_V], name: str, prefix: str = "") -> _V:
    """The enum value called `prefix + name`; refuses unknown names before any call is made.

    Raises:
        ValueError: `name` is not a value of the enum (the *_UNSPECIFIED value is none either).
    """
    names = [key.removeprefix(prefix) for key in enum.keys() if not key.endswith("_UNSPECIFIED")]
    if name not in names:
        raise ValueError(
            f"unknown {enum.DESCRIPTOR.name} {name!r} (expected one of: {', '.join(names)})"
        )
    return enum.Value(prefix + name)


def _enum_name(enum: _ProtoEnum[_V], value: _V) -> str:
    """The name of `value`, or its number if a newer daemon sent one these stubs do not know."""
    try:
        return enum.Name(value)
    except ValueError:
        return str(value)


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


def _data_key_size(
    key_spec: str | None, number_of_bytes: int | None
) -> tuple[resources_pb2.DataKeySpec.ValueType, int]:
    """The (key_spec, number_of_bytes) request fields; exactly one is set, AES_256 by default.

    Raises:
        ValueError: both are given, the spec is unknown, or the length is not positive (0 would
            reach the daemon as "not set" and silently give a 32-byte key).
    """
    if number_of_bytes is None:
        spec = _enum_value(resources_pb2.DataKeySpec, key_spec or "AES_256", prefix="DATA_KEY_")
        return spec, 0
    if key_spec is not None:
        raise ValueError("pass key_spec or number_of_bytes, not both")
    if number_of_bytes < 1:
        raise ValueError(f"number_of_bytes must be positive, not {number_of_bytes}")
    return resources_pb2.DATA_KEY_SPEC_UNSPECIFIED, number_of_bytes


@dataclass(frozen=True)
class KeyMetadata:
    """A key's metadata; enum fields hold proto names such as "AES_256" and "ENABLED"."""

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

    @classmethod
    def from_proto(cls, message: resources_pb2.KeyMetadata) -> Self:
        return cls(
            key_id=message.key_id,
            tenant=message.tenant,
            name=message.name,
            description=message.description,
            key_spec=_enum_name(resources_pb2.KeySpec, message.key_spec),
            key_usage=_enum_name(resources_pb2.KeyUsage, message.key_usage),
            origin=_enum_name(resources_pb2.KeyOrigin, message.origin),
            key_state=_enum_name(resources_pb2.KeyState, message.key_state),
            creation_time=message.creation_time.ToDatetime(tzinfo=UTC),
            primary_version=message.primary_version,
        )


@dataclass(frozen=True)
class EncryptResult:
    ciphertext_blob: bytes
    key_id: str
    key_version: int


@dataclass(frozen=True)
class DecryptResult:
    """The plaintext is left out of repr() so that logging a result leaks no secret."""

    plaintext: bytes = field(repr=False)
    key_id: str
    key_version: int


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
class Tenant:
    name: str
    token_label: str
    token_serial: str
    creation_time: datetime

    @classmethod
    def from_proto(cls, message: admin_pb2.Tenant) -> Self:
        return cls(
            name=message.name,
            token_label=message.token_label,
            token_serial=message.token_serial,
            creation_time=message.creation_time.ToDatetime(tzinfo=UTC),
        )


class _Client:
    """Channel ownership, construction and error translation shared by both services."""

    def __init__(self, channel: grpc.Channel, *, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        self._channel = channel
        self._timeout = timeout

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
        try:
            return method(request, timeout=self._timeout)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from error


class HsmClient(_Client):
    """Keys and cryptography in the tenant that the client certificate names.

    Every method raises an `hsmclient.errors.HsmError` subclass when the daemon refuses the call,
    and ValueError for arguments it can reject without asking the daemon.
    """

    def __init__(self, channel: grpc.Channel, *, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        super().__init__(channel, timeout=timeout)
        self._stub = service_pb2_grpc.KeyManagementServiceStub(channel)

    def create_key(
        self, key_spec: str = "AES_256", key_usage: str = "ENCRYPT_DECRYPT", description: str = ""
    ) -> KeyMetadata:
        request = service_pb2.CreateKeyRequest(
            key_spec=_enum_value(resources_pb2.KeySpec, key_spec),
            key_usage=_enum_value(resources_pb2.KeyUsage, key_usage),
            description=description,
        )
        response: service_pb2.CreateKeyResponse = self._call(self._stub.CreateKey, request)
        return KeyMetadata.from_proto(response.key_metadata)

    def describe_key(self, key_id: str) -> KeyMetadata:
        request = service_pb2.DescribeKeyRequest(key_id=key_id)
        response: service_pb2.DescribeKeyResponse = self._call(self._stub.DescribeKey, request)
        return KeyMetadata.from_proto(response.key_metadata)

    def list_keys(self, page_size: int = 0, page_token: str = "") -> tuple[list[KeyMetadata], str]:
        """One page of keys, oldest first, and the token of the next page ("" after the last)."""
        request = service_pb2.ListKeysRequest(page_size=page_size, page_token=page_token)
        response: service_pb2.ListKeysResponse = self._call(self._stub.ListKeys, request)
        return [KeyMetadata.from_proto(key) for key in response.keys], response.next_page_token

    def iter_keys(self, page_size: int = 0, page_token: str = "") -> Iterator[KeyMetadata]:
        """Every key from `page_token` on, fetching pages as the iteration reaches them."""
        while True:
            keys, page_token = self.list_keys(page_size, page_token)
            yield from keys
            if not page_token:
                return

    def encrypt(
        self, key_id: str, plaintext: bytes, encryption_context: Mapping[str, str] | None = None
    ) -> EncryptResult:
        """Encrypt up to 4,096 bytes; Decrypt needs the same encryption context.

        Raises:
            ChecksumMismatchError: the plaintext or the ciphertext was corrupted in transit.
        """
        request = service_pb2.EncryptRequest(
            key_id=key_id,
            plaintext=plaintext,
            encryption_context=encryption_context,
            plaintext_crc32c=_crc32c(plaintext),
        )
        response: service_pb2.EncryptResponse = self._call(self._stub.Encrypt, request)
        _verify_checksums(
            response.verified_plaintext_crc32c,
            "plaintext",
            response.ciphertext_blob,
            response.ciphertext_crc32c,
        )
        return EncryptResult(response.ciphertext_blob, response.key_id, response.key_version)

    def decrypt(
        self,
        ciphertext_blob: bytes,
        encryption_context: Mapping[str, str] | None = None,
        key_id: str | None = None,
    ) -> DecryptResult:
        """Decrypt a blob of Encrypt or GenerateDataKey; `key_id`, if given, must have made it.

        Raises:
            ChecksumMismatchError: the ciphertext or the plaintext was corrupted in transit.
        """
        request = service_pb2.DecryptRequest(
            ciphertext_blob=ciphertext_blob,
            encryption_context=encryption_context,
            key_id=key_id or "",
            ciphertext_crc32c=_crc32c(ciphertext_blob),
        )
        response: service_pb2.DecryptResponse = self._call(self._stub.Decrypt, request)
        _verify_checksums(
            response.verified_ciphertext_crc32c,
            "ciphertext",
            response.plaintext,
            response.plaintext_crc32c,
        )
        return DecryptResult(response.plaintext, response.key_id, response.key_version)

    def generate_data_key(
        self,
        key_id: str,
        key_spec: str | None = None,
        number_of_bytes: int | None = None,
        encryption_context: Mapping[str, str] | None = None,
    ) -> DataKey:
        """A fresh data key, sized by `key_spec` or `number_of_bytes` (AES_256 if neither)."""
        spec, length = _data_key_size(key_spec, number_of_bytes)
        request = service_pb2.GenerateDataKeyRequest(
            key_id=key_id,
            key_spec=spec,
            number_of_bytes=length,
            encryption_context=encryption_context,
        )
        response: service_pb2.GenerateDataKeyResponse = self._call(
            self._stub.GenerateDataKey, request
        )
        return DataKey(
            response.plaintext, response.ciphertext_blob, response.key_id, response.key_version
        )

    def generate_data_key_without_plaintext(
        self,
        key_id: str,
        key_spec: str | None = None,
        number_of_bytes: int | None = None,
        encryption_context: Mapping[str, str] | None = None,
    ) -> EncryptedDataKey:
        """As generate_data_key, for a party that stores the key now and decrypts it later."""
        spec, length = _data_key_size(key_spec, number_of_bytes)
        request = service_pb2.GenerateDataKeyWithoutPlaintextRequest(
            key_id=key_id,
            key_spec=spec,
            number_of_bytes=length,
            encryption_context=encryption_context,
        )
        response: service_pb2.GenerateDataKeyWithoutPlaintextResponse = self._call(
            self._stub.GenerateDataKeyWithoutPlaintext, request
        )
        return EncryptedDataKey(response.ciphertext_blob, response.key_id, response.key_version)

    def generate_random(self, number_of_bytes: int) -> bytes:
        """1 to 1,024 random bytes from the tenant's token."""
        request = service_pb2.GenerateRandomRequest(number_of_bytes=number_of_bytes)
        response: service_pb2.GenerateRandomResponse = self._call(
            self._stub.GenerateRandom, request
        )
        return response.plaintext


class AdminClient(_Client):
    """Tenant administration; needs an operator's client certificate."""

    def __init__(self, channel: grpc.Channel, *, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        super().__init__(channel, timeout=timeout)
        self._stub = admin_pb2_grpc.AdminServiceStub(channel)

    def create_tenant(self, name: str) -> Tenant:
        """Create a tenant and its token; the daemon serves it at once."""
        request = admin_pb2.CreateTenantRequest(name=name)
        response: admin_pb2.CreateTenantResponse = self._call(self._stub.CreateTenant, request)
        return Tenant.from_proto(response.tenant)

    def list_tenants(self) -> list[Tenant]:
        request = admin_pb2.ListTenantsRequest()
        response: admin_pb2.ListTenantsResponse = self._call(self._stub.ListTenants, request)
        return [Tenant.from_proto(tenant) for tenant in response.tenants]
