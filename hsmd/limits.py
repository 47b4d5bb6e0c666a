"""Every size limit on what a caller sends, and on what the audit log records of it.

Anything a caller controls can reach a lookup, an error message or the audit log, and there it
amplifies: a 4 MB key id became a 4 MB audit event, even on a refused call (DESIGN §9). So each
string, bytes, map and list field of every request has a limit here, checked by the guard
(hsmd/transport/bounds.py) before any lookup and before the call is audited. Going over one is
INVALID_ARGUMENT with a message that names the field and the limit, never the value. The ops
keep their own checks of form and range (a tag key's characters, a page size's minimum); the
numbers they use come from here, so docs/api.md's limits table has one source.

Strings are measured in characters (Unicode code points, as AWS KMS counts them), bytes fields
in bytes.

The audit budgets bound each event's line whatever the input: a caller-controlled value whose
JSON encoding is over its budget is recorded as its length and a SHA-256 prefix instead
(hsmd/audit/events.py, bounded_text), so a line is at most MAX_AUDIT_EVENT_BYTES.
"""

from __future__ import annotations

from collections.abc import Mapping, Sized

from hsmd.errors import InvalidArgument

# Names (AWS KMS: KeyId 2,048 characters, AliasName 256).
MAX_KEY_ID_CHARS = 2048
MAX_ALIAS_NAME_CHARS = 256
MAX_TENANT_NAME_CHARS = 26  # "hsmd/" + name fits a 32-byte token label
MAX_PRINCIPAL_PATTERN_CHARS = 128
MAX_CLIENT_TOKEN_CHARS = 64
MAX_REGION_NAME_CHARS = 32
# Between regions (multi-region keys): the regions a key lives in, and the versions one
# package brings (every version of the key, each a wrapped key of at most 8 KiB).
MAX_KEY_REGIONS = 32
MAX_CHECK_VALUE_CHARS = 128  # a version's check value, hex
MAX_NONCE_BYTES = 64
MAX_REPLICA_VERSIONS = 2000  # AES versions (~420 bytes each); asymmetric keys do not rotate
MAX_PAGE_TOKEN_CHARS = 64
MAX_OBJECT_ID_CHARS = 128  # a CKA_ID in hex

# Key metadata (AWS KMS: description 8,192 characters, 50 tags, tag key 128, tag value 256).
MAX_DESCRIPTION_CHARS = 8192
MAX_TAGS = 50
MAX_TAG_KEY_CHARS = 128
MAX_TAG_VALUE_CHARS = 256
MAX_POLICY_PATTERNS = 64  # administrators and users together
MAX_ADMIN_PRINCIPALS = 32  # leaves room in a default key policy for the creator

# Encryption context: pairs, and the UTF-8 bytes of all keys and values together.
MAX_CONTEXT_PAIRS = 64
MAX_CONTEXT_BYTES = 8192

# Payloads.
MAX_PLAINTEXT_BYTES = 4096  # Encrypt (AWS KMS)
MAX_MESSAGE_BYTES = 4096  # Sign, Verify, GenerateMac, VerifyMac (AWS KMS)
MAX_CIPHERTEXT_BLOB_BYTES = 8192  # ours are at most 4,149; checked again, opaquely, when parsed
MAX_SIGNATURE_BYTES = 6144  # AWS KMS; RSA-4096 takes 512
MAX_MAC_BYTES = 6144  # AWS KMS; HMAC-SHA-512 takes 64 (a longer MAC is not valid)
MAX_WRAPPED_KEY_BYTES = 8192
MAX_KEY_MATERIAL_BYTES = 8192  # an RSA-OAEP block and the AES-KWP-wrapped PKCS#8 key
MAX_IMPORT_TOKEN_BYTES = 256
MAX_PUBLIC_KEY_BYTES = 4096  # DER SubjectPublicKeyInfo; RSA-4096: 550

# Batches (BatchEncrypt, ...): the items of one call, and their encoded size in all. Each
# item's own fields are bounded as the unary request's are, item by item.
MAX_BATCH_ITEMS = 1000
MAX_BATCH_BYTES = 4 * 1024 * 1024

# Listing.
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100

# Audit: budgets in bytes of a value's JSON encoding in the event's line.
AUDIT_KEY_ID_BYTES = 2050  # a key id at MAX_KEY_ID_CHARS of plain ASCII, with its quotes
AUDIT_CONTEXT_KEYS_BYTES = 8192  # the whole array of encryption-context keys
AUDIT_PEER_BYTES = 256
# The longest line an event can take (tests/unit/test_limits.py builds the worst case).
MAX_AUDIT_EVENT_BYTES = 12 * 1024


def check_chars(field: str, value: str, limit: int) -> None:
    """Raises InvalidArgument if the string is longer than limit characters."""
    if len(value) > limit:
        raise InvalidArgument(f"{field} is longer than {limit} characters")


def check_bytes(field: str, value: bytes, limit: int) -> None:
    """Raises InvalidArgument if the value is longer than limit bytes."""
    if len(value) > limit:
        raise InvalidArgument(f"{field} is longer than {limit} bytes")


def check_count(field: str, values: Sized, limit: int) -> None:
    """Raises InvalidArgument if there are more than limit entries."""
    if len(values) > limit:
        raise InvalidArgument(f"{field} has more than {limit} entries")


def context_bytes(context: Mapping[str, str]) -> int:
    """The size an encryption context counts against MAX_CONTEXT_BYTES."""
    return sum(len(name.encode()) + len(value.encode()) for name, value in context.items())


def check_encryption_context(field: str, context: Mapping[str, str]) -> None:
    """Raises InvalidArgument if the context has too many pairs or too many bytes."""
    check_count(field, context, MAX_CONTEXT_PAIRS)
    if context_bytes(context) > MAX_CONTEXT_BYTES:
        raise InvalidArgument(
            f"{field} is larger than {MAX_CONTEXT_BYTES} bytes (keys and values in UTF-8)"
        )


def check_tags(field: str, tags: Mapping[str, str]) -> None:
    """Raises InvalidArgument if there are too many tags or a key or value is too long."""
    check_count(field, tags, MAX_TAGS)
    for name, value in tags.items():
        check_chars(f"{field} key", name, MAX_TAG_KEY_CHARS)
        check_chars(f"{field} value", value, MAX_TAG_VALUE_CHARS)
