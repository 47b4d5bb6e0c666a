"""The size check of every request, before any lookup and before the call is audited.

Each string, bytes, map, list and message field of a request has a rule here, by field name,
with its number from hsmd/limits.py; tests/unit/test_limits.py fails for a request field without
one, so a new field is bounded before it ships. The guard calls check_request right after it
knows who is calling: an oversized field is INVALID_ARGUMENT naming the field and its limit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from hsmd import limits
from hsmd.errors import InvalidArgument

Rule = Callable[[str, Any], None]


def _chars(limit: int) -> Rule:
    return lambda field, value: limits.check_chars(field, value, limit)


def _bytes(limit: int) -> Rule:
    return lambda field, value: limits.check_bytes(field, value, limit)


def _names(count: int, chars: int) -> Rule:
    """A list of at most count strings of at most chars characters each."""

    def check(field: str, values: list[str]) -> None:
        limits.check_count(field, values, count)
        for value in values:
            limits.check_chars(f"{field} entry", value, chars)

    return check


def _context(field: str, value: Mapping[str, str]) -> None:
    limits.check_encryption_context(field, value)


def _tags(field: str, value: Mapping[str, str]) -> None:
    limits.check_tags(field, value)


def _policy(field: str, value: Message) -> None:
    check_fields(value, prefix=f"{field}.")
    patterns = len(getattr(value, "administrators", ())) + len(getattr(value, "users", ()))
    if patterns > limits.MAX_POLICY_PATTERNS:
        raise InvalidArgument(f"{field} holds more than {limits.MAX_POLICY_PATTERNS} patterns")


def _fields_of(field: str, value: Message) -> None:
    """A message whose fields have rules of their own, such as a TenantQuota."""
    check_fields(value, prefix=f"{field}.")


def _messages(count: int) -> Rule:
    """A list of at most count messages, each field of each checked by its own rule."""

    def check(field: str, values: Sequence[Message]) -> None:
        limits.check_count(field, values, count)
        for value in values:
            check_fields(value, prefix=f"{field}[].")

    return check


def _time(field: str, value: Timestamp) -> None:
    """Years 1 to 9999, what a datetime holds; checked before a conversion can overflow."""
    if not _MIN_SECONDS <= value.seconds <= _MAX_SECONDS or not 0 <= value.nanos < 10**9:
        raise InvalidArgument(f"{field} is not a valid time (years 1 to 9999)")


def _batch_items(field: str, value: Sequence[Message]) -> None:
    """A batch's items: how many and how large in all. Each item's fields are checked when
    the item is run (check_request), so a bad item is answered on its own."""
    limits.check_count(field, value, limits.MAX_BATCH_ITEMS)
    if sum(item.ByteSize() for item in value) > limits.MAX_BATCH_BYTES:
        raise InvalidArgument(f"{field} are larger than {limits.MAX_BATCH_BYTES} bytes in all")


def _page_size(field: str, value: int) -> None:
    if not 0 <= value <= limits.MAX_PAGE_SIZE:
        raise InvalidArgument(f"{field} must be between 0 and {limits.MAX_PAGE_SIZE}")


_MIN_SECONDS = -62135596800  # 0001-01-01T00:00:00Z
_MAX_SECONDS = 253402300799  # 9999-12-31T23:59:59Z
_KEY_ID = _chars(limits.MAX_KEY_ID_CHARS)
_PATTERNS = _names(limits.MAX_POLICY_PATTERNS, limits.MAX_PRINCIPAL_PATTERN_CHARS)

# Field name -> rule, for every field of every request message of hsmd.v1.
RULES: dict[str, Rule] = {
    "key_id": _KEY_ID,
    "target_key_id": _KEY_ID,
    "source_key_id": _KEY_ID,
    "destination_key_id": _KEY_ID,
    "wrapping_key_id": _KEY_ID,
    "alias_name": _chars(limits.MAX_ALIAS_NAME_CHARS),
    "tenant": _chars(limits.MAX_TENANT_NAME_CHARS),
    "name": _chars(limits.MAX_TENANT_NAME_CHARS),
    "admin_principals": _names(limits.MAX_ADMIN_PRINCIPALS, limits.MAX_PRINCIPAL_PATTERN_CHARS),
    "administrators": _PATTERNS,
    "users": _PATTERNS,
    "policy": _policy,
    "description": _chars(limits.MAX_DESCRIPTION_CHARS),
    "tags": _tags,
    "tag_filter": _tags,
    "tag_keys": _names(limits.MAX_TAGS, limits.MAX_TAG_KEY_CHARS),
    "encryption_context": _context,
    "source_encryption_context": _context,
    "destination_encryption_context": _context,
    "client_token": _chars(limits.MAX_CLIENT_TOKEN_CHARS),
    "page_token": _chars(limits.MAX_PAGE_TOKEN_CHARS),
    "page_size": _page_size,
    "object_id": _chars(limits.MAX_OBJECT_ID_CHARS),
    "plaintext": _bytes(limits.MAX_PLAINTEXT_BYTES),
    "ciphertext_blob": _bytes(limits.MAX_CIPHERTEXT_BLOB_BYTES),
    "message": _bytes(limits.MAX_MESSAGE_BYTES),
    "signature": _bytes(limits.MAX_SIGNATURE_BYTES),
    "mac": _bytes(limits.MAX_MAC_BYTES),
    "wrapped_key": _bytes(limits.MAX_WRAPPED_KEY_BYTES),
    "encrypted_key_material": _bytes(limits.MAX_KEY_MATERIAL_BYTES),
    "import_token": _bytes(limits.MAX_IMPORT_TOKEN_BYTES),
    "public_key": _bytes(limits.MAX_PUBLIC_KEY_BYTES),
    "valid_to": _time,
    "quota": _fields_of,
    # Between regions (region.proto)
    "replica_region": _chars(limits.MAX_REGION_NAME_CHARS),
    "primary_region": _chars(limits.MAX_REGION_NAME_CHARS),
    "region": _chars(limits.MAX_REGION_NAME_CHARS),
    "key": _fields_of,
    "replicas": _messages(limits.MAX_KEY_REGIONS),
    "versions": _messages(limits.MAX_REPLICA_VERSIONS),
    "creation_time": _time,
    "check_value": _chars(limits.MAX_CHECK_VALUE_CHARS),
    "nonce": _bytes(limits.MAX_NONCE_BYTES),
    "requests": _batch_items,
}

# Field types whose size the wire format fixes: numbers, booleans and enums, whose ranges are
# the operations' to check.
FIXED_SIZE_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_BOOL,
        FieldDescriptor.TYPE_DOUBLE,
        FieldDescriptor.TYPE_ENUM,
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64,
    }
)


def check_request(request: Message) -> None:
    """Raises InvalidArgument for the first field over its limit (hsmd/limits.py)."""
    check_fields(request, prefix="")


def check_batch(request: Message) -> None:
    """Raises InvalidArgument for a batch that is empty, or over limits.MAX_BATCH_ITEMS items
    or limits.MAX_BATCH_BYTES in all: the batch is refused as a whole."""
    if not getattr(request, "requests"):  # noqa: B009 - every batch request has them
        raise InvalidArgument(
            f"requests is empty: a batch holds 1 to {limits.MAX_BATCH_ITEMS} requests"
        )
    check_request(request)


def check_fields(message: Message, prefix: str) -> None:
    for descriptor, value in message.ListFields():
        rule = RULES.get(descriptor.name)
        if rule is None:
            if descriptor.type not in FIXED_SIZE_TYPES or descriptor.is_repeated:
                # tests/unit/test_limits.py keeps this from happening in a release.
                raise AssertionError(f"{message.DESCRIPTOR.name}.{descriptor.name} has no limit")
            continue
        rule(prefix + descriptor.name, value)
