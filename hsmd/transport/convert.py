"""hsmd.v1 messages to and from domain types, and CRC32C (Castagnoli, not zlib.crc32).

Proto enum value names equal the domain enums' values, so one pair of functions converts all
of them; UNSPECIFIED (0) becomes None for the caller to default.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import google_crc32c
from google.protobuf import timestamp_pb2
from google.protobuf.message import Message

from hsmd import keyspecs
from hsmd.audit.events import RecordedEvent
from hsmd.audit.verify import VerifyResult
from hsmd.domain import (
    Alias,
    ClientRequest,
    Key,
    KeyOrigin,
    KeyPolicy,
    KeySpec,
    KeyState,
    KeyUsage,
    KeyVersion,
    MultiRegion,
    QuarantinedObject,
    Replica,
    RotationType,
    TenancyMode,
    Tenant,
    WrappingAlgorithm,
    is_valid_region_name,
)
from hsmd.errors import InvalidArgument
from hsmd.names import key_resource_name, parse_key_id, validate_client_token
from hsmd.ops.datakeys import DATA_KEY_SIZES
from hsmd.ops.quotas import TenantQuota, TenantUsage
from hsmd.ops.regions import ReplicaVersion
from hsmd.quotas import QuotaLimits
from hsmd.v1 import admin_pb2, region_pb2, resources_pb2

E = TypeVar("E", bound=enum.StrEnum)

_ENCRYPTION = resources_pb2.EncryptionAlgorithm
_SIGNING = resources_pb2.SigningAlgorithm
_MAC = resources_pb2.MacAlgorithm


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


def datetime_from(stamp: timestamp_pb2.Timestamp, field: str) -> datetime:
    """An aware UTC datetime. Raises InvalidArgument for a Timestamp outside what it can hold
    (years 1-9999) or with nanoseconds out of range."""
    try:
        return stamp.ToDatetime(UTC)
    except (ValueError, OverflowError, OSError):
        raise InvalidArgument(f"{field} is not a valid time (years 1 to 9999)") from None


def from_proto(domain: type[E], proto_enum: Any, value: int, field: str) -> E | None:
    """The domain value of a proto enum number; None for UNSPECIFIED.

    Raises:
        InvalidArgument: the number is not a value of the enum.
    """
    if value == 0:
        return None
    try:
        return domain(proto_enum.Name(value))
    except ValueError:
        raise InvalidArgument(f"{field} {value} is not a known value") from None


def required(value: E | None, field: str) -> E:
    if value is None:
        raise InvalidArgument(f"{field} is required")
    return value


def to_proto(proto_enum: Any, value: enum.StrEnum) -> Any:
    """The proto enum number (typed Any: each mypy-protobuf enum has its own ValueType)."""
    return proto_enum.Value(value.value)


def to_proto_list(proto_enum: Any, values: Iterable[enum.StrEnum]) -> list[Any]:
    return [to_proto(proto_enum, value) for value in sorted(values)]


_WRAP_PREFIX = "WRAP_"
_DATA_KEY_PREFIX = "DATA_KEY_"


def wrapping_algorithm(value: int) -> WrappingAlgorithm:
    """The proto's WRAP_-prefixed names (enum values share a namespace) to AWS's names."""
    if value == 0:
        raise InvalidArgument("wrapping_algorithm is required")
    try:
        name = resources_pb2.WrappingAlgorithm.Name(value)  # type: ignore[arg-type]
    except ValueError:
        raise InvalidArgument(f"wrapping_algorithm {value} is not a known value") from None
    return WrappingAlgorithm(name.removeprefix(_WRAP_PREFIX))


def data_key_size(spec: int, number_of_bytes: int) -> int:
    """The data key length from exactly one of key_spec and number_of_bytes (neither: AES-256)."""
    if spec and number_of_bytes:
        raise InvalidArgument("give key_spec or number_of_bytes, not both")
    if number_of_bytes:
        return number_of_bytes
    if spec == resources_pb2.DATA_KEY_SPEC_UNSPECIFIED:
        return DATA_KEY_SIZES["AES_256"]
    try:
        name = resources_pb2.DataKeySpec.Name(spec)  # type: ignore[arg-type]
    except ValueError:
        raise InvalidArgument(f"key_spec {spec} is not a known data key spec") from None
    return DATA_KEY_SIZES[name.removeprefix(_DATA_KEY_PREFIX)]


def key_metadata(key: Key, tenancy: TenancyMode) -> resources_pb2.KeyMetadata:
    """tenancy: the instance's mode, so a caller can tell a dedicated key from a shared one."""
    algorithms = keyspecs.algorithms(key.spec, key.usage)
    metadata = resources_pb2.KeyMetadata(
        key_id=key.key_id,
        tenant=key.tenant,
        name=key_resource_name(key.tenant, key.key_id),
        description=key.description,
        key_spec=to_proto(resources_pb2.KeySpec, key.spec),
        key_usage=to_proto(resources_pb2.KeyUsage, key.usage),
        origin=to_proto(resources_pb2.KeyOrigin, key.origin),
        key_state=to_proto(resources_pb2.KeyState, key.state),
        creation_time=timestamp(key.created_at),
        primary_version=key.primary_version,
        encryption_algorithms=to_proto_list(_ENCRYPTION, algorithms.encryption),
        signing_algorithms=to_proto_list(_SIGNING, algorithms.signing),
        mac_algorithms=to_proto_list(_MAC, algorithms.mac),
        tags=dict(key.tags),
        exportable=key.exportable,
        tenancy_mode=to_proto(resources_pb2.TenancyMode, tenancy),
    )
    if key.deletion_at is not None:
        metadata.deletion_date.CopyFrom(timestamp(key.deletion_at))
    if key.valid_to is not None:
        metadata.valid_to.CopyFrom(timestamp(key.valid_to))
    regions = key.multi_region
    if regions is not None:
        metadata.multi_region = True
        metadata.multi_region_configuration.CopyFrom(
            resources_pb2.MultiRegionConfiguration(
                multi_region_key_type=resources_pb2.PRIMARY
                if regions.is_primary
                else resources_pb2.REPLICA,
                region=regions.region,
                primary_region=regions.primary_region,
                replica_regions=[replica.region for replica in regions.replicas],
            )
        )
    return metadata


# Between regions (hsmd.ops.regions): a key's shared properties and its wrapped versions.


def replica_key(key: Key) -> region_pb2.ReplicaKey:
    regions = key.multi_region
    assert regions is not None, "only a multi-region key goes to another region"
    return region_pb2.ReplicaKey(
        tenant=key.tenant,
        key_id=key.key_id,
        key_spec=to_proto(resources_pb2.KeySpec, key.spec),
        key_usage=to_proto(resources_pb2.KeyUsage, key.usage),
        description=key.description,
        policy=key_policy(key.policy),
        tags=dict(key.tags),
        creation_time=timestamp(key.created_at),
        rotation_period_days=key.rotation_period_days or 0,
        primary_region=regions.primary_region,
        replicas=[
            region_pb2.ReplicaRegion(region=r.region, version_count=r.versions)
            for r in regions.replicas
        ],
    )


def replica_key_from(message: region_pb2.ReplicaKey, region: str) -> Key:
    """The key a peer sent, as this region (`region`) would record it.

    Raises:
        InvalidArgument: a field is missing or out of range.
    """
    names = [message.primary_region, *(r.region for r in message.replicas)]
    if not all(is_valid_region_name(name) for name in names) or len(set(names)) != len(names):
        raise InvalidArgument("key.primary_region and key.replicas must be distinct region names")
    return Key(
        tenant=message.tenant,
        key_id=parse_key_id(message.key_id),
        description=message.description,
        spec=required(
            from_proto(KeySpec, resources_pb2.KeySpec, message.key_spec, "key.key_spec"),
            "key.key_spec",
        ),
        usage=required(
            from_proto(KeyUsage, resources_pb2.KeyUsage, message.key_usage, "key.key_usage"),
            "key.key_usage",
        ),
        origin=KeyOrigin.GENERATED,
        state=KeyState.ENABLED,
        created_at=datetime_from(message.creation_time, "key.creation_time"),
        primary_version=0,
        policy=key_policy_from(message.policy),
        tags=tuple(sorted(message.tags.items())),
        rotation_period_days=message.rotation_period_days or None,
        multi_region=MultiRegion(
            region,
            message.primary_region,
            tuple(Replica(r.region, r.version_count) for r in message.replicas),
        ),
    )


def key_from_metadata(metadata: resources_pb2.KeyMetadata) -> Key:
    """A peer region's answer about its copy of a key, for showing and counting its versions
    (KeyMetadata holds no policy, and no replica's version count)."""
    regions = metadata.multi_region_configuration
    return Key(
        tenant=metadata.tenant,
        key_id=metadata.key_id,
        description=metadata.description,
        spec=required(
            from_proto(KeySpec, resources_pb2.KeySpec, metadata.key_spec, "key_spec"), "key_spec"
        ),
        usage=required(
            from_proto(KeyUsage, resources_pb2.KeyUsage, metadata.key_usage, "key_usage"),
            "key_usage",
        ),
        origin=required(
            from_proto(KeyOrigin, resources_pb2.KeyOrigin, metadata.origin, "origin"), "origin"
        ),
        state=required(
            from_proto(KeyState, resources_pb2.KeyState, metadata.key_state, "key_state"),
            "key_state",
        ),
        created_at=datetime_from(metadata.creation_time, "creation_time"),
        primary_version=metadata.primary_version,
        tags=tuple(sorted(metadata.tags.items())),
        multi_region=MultiRegion(
            regions.region,
            regions.primary_region,
            tuple(Replica(region, 0) for region in regions.replica_regions),
        ),
    )


def replica_version(version: ReplicaVersion) -> region_pb2.ReplicaKeyVersion:
    message = region_pb2.ReplicaKeyVersion(
        version=version.version,
        creation_time=timestamp(version.created_at),
        wrapped_key=version.wrapped,
        public_key=version.public_key,
        check_value=version.check_value,
    )
    if version.rotation_type is not None:
        message.rotation_type = to_proto(resources_pb2.RotationType, version.rotation_type)
    return message


def replica_version_from(message: region_pb2.ReplicaKeyVersion) -> ReplicaVersion:
    if message.version < 1:
        raise InvalidArgument("versions[].version must be at least 1")
    return ReplicaVersion(
        message.version,
        datetime_from(message.creation_time, "versions[].creation_time"),
        from_proto(
            RotationType, resources_pb2.RotationType, message.rotation_type, "rotation_type"
        ),
        message.wrapped_key,
        message.public_key,
        message.check_value,
    )


def key_policy(policy: KeyPolicy) -> resources_pb2.KeyPolicy:
    return resources_pb2.KeyPolicy(
        administrators=list(policy.administrators), users=list(policy.users)
    )


def key_policy_from(message: resources_pb2.KeyPolicy) -> KeyPolicy:
    return KeyPolicy(tuple(message.administrators), tuple(message.users))


def alias(value: Alias) -> resources_pb2.Alias:
    return resources_pb2.Alias(
        alias_name=value.name,
        target_key_id=value.key_id,
        creation_time=timestamp(value.created_at),
        last_updated_time=timestamp(value.updated_at),
    )


def key_rotation(version: KeyVersion) -> resources_pb2.KeyRotation:
    assert version.rotation_type is not None
    return resources_pb2.KeyRotation(
        key_id=version.key_id,
        key_version=version.version,
        rotation_date=timestamp(version.created_at),
        rotation_type=to_proto(resources_pb2.RotationType, version.rotation_type),
    )


def tenant(value: Tenant) -> admin_pb2.Tenant:
    message = admin_pb2.Tenant(
        name=value.name,
        token_label=value.token_label,
        token_serial=value.token_serial,
        creation_time=timestamp(value.created_at),
        admin_principals=list(value.admin_principals),
        state=to_proto(admin_pb2.Tenant.State, value.state),
    )
    if value.deletion_at is not None:
        message.deletion_time.CopyFrom(timestamp(value.deletion_at))
    return message


def tenant_quota(fields: QuotaLimits | Mapping[str, float]) -> admin_pb2.TenantQuota:
    """All of a tenant's limits, or only the fields of its overrides."""
    values = dataclasses.asdict(fields) if isinstance(fields, QuotaLimits) else fields
    return admin_pb2.TenantQuota(**values)


def quota_overrides(message: admin_pb2.TenantQuota) -> dict[str, float]:
    """The fields an operator set (proto3 optional: presence tells)."""
    return {
        descriptor.name: value
        for descriptor, value in message.ListFields()  # only the fields that are set
    }


def tenant_quota_answer(quota: TenantQuota) -> admin_pb2.GetTenantQuotaResponse:
    return admin_pb2.GetTenantQuotaResponse(
        tenant=quota.tenant,
        overrides=tenant_quota(quota.overrides),
        effective=tenant_quota(quota.effective),
    )


def tenant_usage(usage: TenantUsage) -> admin_pb2.TenantUsage:
    return admin_pb2.TenantUsage(
        keys=usage.counts.keys,
        aliases=usage.counts.aliases,
        pending_imports=usage.counts.pending_imports,
        audit_bytes=usage.audit_bytes,
    )


def audit_event(record: RecordedEvent) -> resources_pb2.AuditEvent:
    event = record.event
    return resources_pb2.AuditEvent(
        sequence=record.sequence,
        time=timestamp(event.time),
        request_id=event.request_id,
        tenant=event.tenant,
        principal=event.principal,
        operation=event.operation,
        key_id=event.key_id,
        key_version=event.key_version,
        encryption_context_keys=list(event.encryption_context_keys),
        outcome=event.outcome,
        peer=event.peer,
        regions=list(event.regions),
        previous_hash=record.previous_hash,
        hash=record.hash,
    )


def quarantined_object(entry: QuarantinedObject) -> admin_pb2.QuarantinedObject:
    return admin_pb2.QuarantinedObject(
        tenant=entry.tenant,
        object_id=entry.object_id.hex(),
        reason=entry.reason,
        found_time=timestamp(entry.found_at),
    )


def object_id(text: str, *, empty_allowed: bool = False) -> bytes:
    """A CKA_ID from its hex form. Raises InvalidArgument for anything else. Only a call
    that can act on an object without an id (destroying one in quarantine) allows ""."""
    try:
        value = bytes.fromhex(text)
    except ValueError:
        raise InvalidArgument("object_id must be the object's CKA_ID in hex") from None
    if not value and not empty_allowed:
        raise InvalidArgument("object_id is required")
    return value


def audit_verification(result: VerifyResult) -> admin_pb2.VerifyAuditLogResponse:
    response = admin_pb2.VerifyAuditLogResponse(
        valid=result.valid,
        events_checked=result.events_checked,
        first_broken_position=result.first_broken_position,
        problem=result.problem,
        checkpoints_verified=result.checkpoints_verified,
        checkpoint_file_position=result.checkpoint_file_position,
        time_reversals=[
            admin_pb2.TimeReversal(
                position=reversal.position,
                time=timestamp(reversal.time),
                previous_position=reversal.previous_position,
                previous_time=timestamp(reversal.previous_time),
            )
            for reversal in result.time_reversals
        ],
        time_reversal_count=result.time_reversal_count,
    )
    if result.last_checkpoint is not None:
        response.last_checkpoint_position = result.last_checkpoint.sequence
        response.last_checkpoint_time.CopyFrom(timestamp(result.last_checkpoint.statement.time))
        response.last_checkpoint_head = result.last_checkpoint.statement.head_sequence
    if result.chain_start is not None:
        response.previous_log = result.chain_start.archived_log
        response.previous_log_position = result.chain_start.archived_sequence
        response.previous_log_hash = result.chain_start.archived_hash
    return response


def client_request(request: Message, caller: str) -> ClientRequest | None:
    """The request's client token, with a digest of the caller and every other field (so a
    token reused for anything else is told apart); None when it names no token."""
    token = getattr(request, "client_token")  # noqa: B009 - every creating request has one
    if not token:
        return None
    validate_client_token(token)
    rest = type(request)()
    rest.CopyFrom(request)
    rest.ClearField("client_token")
    digest = hashlib.sha256(caller.encode() + b"\n" + rest.SerializeToString(deterministic=True))
    return ClientRequest(token, digest.hexdigest())
