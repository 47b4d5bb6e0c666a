"""The self-describing ciphertext blob of Encrypt and GenerateDataKey, and its AAD.

Blob, format 1 (integers big-endian; docs/formats.md is the public description)::

    offset  size  field
    0       1     format, 0x01, or 0x02 for a multi-region key
    1       16    key id: the UUID's 16 bytes; for format 0x02, the 16 bytes whose hex
                  follows "mrk-" in the key's id
    17      4     key version
    21      12    IV, random, chosen by the daemon
    33      n     AES-256-GCM ciphertext, n = plaintext length (1-4,096)
    33+n    16    GCM tag

The AAD binds the blob to its tenant, key, version and encryption context, so a blob cannot be
replayed under another tenant, key, version or context::

    AAD = "hsmd/v1/ciphertext" || u32 len(tenant) || tenant || blob[0:21] || context

    context = u32 count || for each pair sorted by key bytes: u32 len(k) || k || u32 len(v) || v

Parsing checks every bound before slicing; any malformed blob is DecryptionFailed, the same
opaque error as a wrong key or context.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from hsmd import limits
from hsmd.domain import MULTI_REGION_KEY_PREFIX
from hsmd.errors import DecryptionFailed, InvalidArgument

FORMAT_V1 = 0x01
FORMAT_MULTI_REGION = 0x02  # the same layout; the key id is "mrk-" and 32 hex digits
IV_SIZE = 12
TAG_SIZE = 16
HEADER_SIZE = 1 + 16 + 4
PREFIX_SIZE = HEADER_SIZE + IV_SIZE
MAX_PLAINTEXT = limits.MAX_PLAINTEXT_BYTES
MAX_BLOB = PREFIX_SIZE + MAX_PLAINTEXT + TAG_SIZE
MIN_BLOB = PREFIX_SIZE + 1 + TAG_SIZE

_AAD_LABEL = b"hsmd/v1/ciphertext"
_HEADER = struct.Struct(">B16sI")
_U32 = struct.Struct(">I")


@dataclass(frozen=True)
class ParsedBlob:
    key_id: str
    version: int
    header: bytes
    iv: bytes
    ciphertext_and_tag: bytes


def encode_header(key_id: str, version: int) -> bytes:
    if key_id.startswith(MULTI_REGION_KEY_PREFIX):
        key_bytes = bytes.fromhex(key_id.removeprefix(MULTI_REGION_KEY_PREFIX))
        return _HEADER.pack(FORMAT_MULTI_REGION, key_bytes, version)
    return _HEADER.pack(FORMAT_V1, uuid.UUID(key_id).bytes, version)


def assemble(header: bytes, iv: bytes, ciphertext_and_tag: bytes) -> bytes:
    if len(header) != HEADER_SIZE or len(iv) != IV_SIZE or len(ciphertext_and_tag) <= TAG_SIZE:
        raise AssertionError("ciphertext parts of the wrong size")
    return header + iv + ciphertext_and_tag


def parse(blob: bytes) -> ParsedBlob:
    """Splits a blob into its parts. Raises DecryptionFailed if it cannot be one of ours."""
    if not MIN_BLOB <= len(blob) <= MAX_BLOB:
        raise DecryptionFailed()
    fmt, key_bytes, version = _HEADER.unpack_from(blob)
    if fmt not in (FORMAT_V1, FORMAT_MULTI_REGION) or version == 0:
        raise DecryptionFailed()
    if fmt == FORMAT_MULTI_REGION:
        key_id = MULTI_REGION_KEY_PREFIX + key_bytes.hex()
    else:
        key_id = str(uuid.UUID(bytes=key_bytes))
    return ParsedBlob(
        key_id=key_id,
        version=version,
        header=blob[:HEADER_SIZE],
        iv=blob[HEADER_SIZE:PREFIX_SIZE],
        ciphertext_and_tag=blob[PREFIX_SIZE:],
    )


def validate_context(context: Mapping[str, str]) -> None:
    """Raises InvalidArgument if the encryption context is over the documented limits."""
    limits.check_encryption_context("encryption context", context)
    if any(not name for name in context):
        raise InvalidArgument("encryption context keys must not be empty")


def encode_context(context: Mapping[str, str]) -> bytes:
    """The canonical encoding: independent of map order, unambiguous for any strings."""
    pairs = sorted((k.encode(), v.encode()) for k, v in context.items())
    parts = [_U32.pack(len(pairs))]
    for name, value in pairs:
        parts += [_U32.pack(len(name)), name, _U32.pack(len(value)), value]
    return b"".join(parts)


def aad(tenant: str, header: bytes, context: Mapping[str, str]) -> bytes:
    tenant_bytes = tenant.encode()
    return b"".join(
        [_AAD_LABEL, _U32.pack(len(tenant_bytes)), tenant_bytes, header, encode_context(context)]
    )
