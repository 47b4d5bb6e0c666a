"""hsmd.v1 messages to and from domain types, and CRC32C (Castagnoli, not zlib.crc32)."""

from __future__ import annotations

from datetime import datetime

import google_crc32c
from google.protobuf import timestamp_pb2

from hsmd.domain import Key, KeySpec, KeyUsage, Tenant
from hsmd.errors import InvalidArgument
from hsmd.names import key_resource_name
from hsmd.ops.datakeys import AES_256_DATA_KEY_SIZE
from hsmd.v1 import admin_pb2, resources_pb2


def crc32c(data: bytes) -> int:
    return int(google_crc32c.value(data))


def check_crc32c(data: bytes, expected: int | None, field: str) -> bool:
    """True if a checksum was sent and matches; raises InvalidArgument if it does not match."""
    if expected is None:
        return False
    if crc32c(data) != expected:
        raise InvalidArgument(f"{field} does not match its CRC32C: the request was corrupted")
    return True


def timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def key_spec(value: int) -> KeySpec:
    """The requested spec; UNSPECIFIED means the symmetric default."""
    if value == resources_pb2.KEY_SPEC_UNSPECIFIED:
        return KeySpec.AES_256
    try:
        return KeySpec(resources_pb2.KeySpec.Name(value))  # type: ignore[arg-type]
    except ValueError:
        raise InvalidArgument(f"key_spec {value} is not a known key spec") from None


def key_usage(value: int) -> KeyUsage:
    """The requested usage; UNSPECIFIED means ENCRYPT_DECRYPT."""
    if value == resources_pb2.KEY_USAGE_UNSPECIFIED:
        return KeyUsage.ENCRYPT_DECRYPT
    try:
        return KeyUsage(resources_pb2.KeyUsage.Name(value))  # type: ignore[arg-type]
    except ValueError:
        raise InvalidArgument(f"key_usage {value} is not a known key usage") from None


def data_key_size(spec: int, number_of_bytes: int) -> int:
    """The data key length from exactly one of key_spec and number_of_bytes (neither: AES-256)."""
    if spec and number_of_bytes:
        raise InvalidArgument("give key_spec or number_of_bytes, not both")
    if number_of_bytes:
        return number_of_bytes
    if spec in (resources_pb2.DATA_KEY_SPEC_UNSPECIFIED, resources_pb2.DATA_KEY_AES_256):
        return AES_256_DATA_KEY_SIZE
    raise InvalidArgument(f"key_spec {spec} is not a known data key spec")


def key_metadata(key: Key) -> resources_pb2.KeyMetadata:
    return resources_pb2.KeyMetadata(
        key_id=key.key_id,
        tenant=key.tenant,
        name=key_resource_name(key.tenant, key.key_id),
        description=key.description,
        key_spec=resources_pb2.KeySpec.Value(key.spec.value),
        key_usage=resources_pb2.KeyUsage.Value(key.usage.value),
        origin=resources_pb2.KeyOrigin.Value(key.origin.value),
        key_state=resources_pb2.KeyState.Value(key.state.value),
        creation_time=timestamp(key.created_at),
        primary_version=key.primary_version,
    )


def tenant(value: Tenant) -> admin_pb2.Tenant:
    return admin_pb2.Tenant(
        name=value.name,
        token_label=value.token_label,
        token_serial=value.token_serial,
        creation_time=timestamp(value.created_at),
    )
