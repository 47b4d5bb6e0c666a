"""The wrapped-key blob of WrapKey and UnwrapKey.

Layout (docs/formats.md)::

    offset  size  field
    0       4     magic, b"hwk1"
    4       1     key spec: the hsmd.v1 KeySpec number (AES_256 = 1, HMAC_224 = 9 ... 12)
    5       1     key usage: the hsmd.v1 KeyUsage number (ENCRYPT_DECRYPT = 1 ... 4)
    6       1     wrapping: 1 = AES key wrap with padding (RFC 5649), 2 = AES key wrap (RFC 3394)
    7       n     the wrapped key bytes, n = 16 to 4,096

The header is not authenticated by the key wrap (only the key bytes are); it says what the
wrapped key was, and UnwrapKey checks that the unwrapped material has the spec's size (to the
byte, except HMAC_224, which takes 28-32 bytes: see Pkcs11Backend._unwrap_secret). Whoever
unwraps already holds the wrapping key and chooses what the new key may do.
"""

from __future__ import annotations

from dataclasses import dataclass

from hsmd.domain import KeySpec, KeyUsage
from hsmd.errors import InvalidArgument
from hsmd.keyspecs import SPECS

MAGIC = b"hwk1"
KWP, KW = 1, 2
_HEADER = len(MAGIC) + 3
MAX_WRAPPED = 4096

# The numbers of the hsmd.v1 enums, fixed here so the format does not depend on the API code.
SPEC_CODES: dict[KeySpec, int] = {
    KeySpec.AES_256: 1,
    KeySpec.HMAC_224: 9,
    KeySpec.HMAC_256: 10,
    KeySpec.HMAC_384: 11,
    KeySpec.HMAC_512: 12,
}
USAGE_CODES: dict[KeyUsage, int] = {
    KeyUsage.ENCRYPT_DECRYPT: 1,
    KeyUsage.SIGN_VERIFY: 2,
    KeyUsage.GENERATE_VERIFY_MAC: 3,
    KeyUsage.WRAP_UNWRAP: 4,
}
WRAPPABLE = frozenset(SPEC_CODES)


@dataclass(frozen=True)
class WrappedKey:
    spec: KeySpec
    usage: KeyUsage
    padded: bool
    material: bytes


def encode(spec: KeySpec, usage: KeyUsage, material: bytes) -> bytes:
    return MAGIC + bytes([SPEC_CODES[spec], USAGE_CODES[usage], KWP]) + material


def parse(blob: bytes) -> WrappedKey:
    """Raises InvalidArgument for anything that is not a wrapped-key blob of a key we make."""
    if not _HEADER + 16 <= len(blob) <= _HEADER + MAX_WRAPPED or blob[:4] != MAGIC:
        raise InvalidArgument("wrapped_key is not a wrapped-key blob (docs/formats.md)")
    specs = {code: spec for spec, code in SPEC_CODES.items()}
    usages = {code: usage for usage, code in USAGE_CODES.items()}
    spec, usage, wrapping = specs.get(blob[4]), usages.get(blob[5]), blob[6]
    if spec is None or usage is None or wrapping not in (KWP, KW):
        raise InvalidArgument("wrapped_key names a key spec, usage or wrapping we do not know")
    if usage not in SPECS[spec].usages:
        raise InvalidArgument(f"wrapped_key names usage {usage}, which {spec} cannot have")
    return WrappedKey(spec, usage, wrapping == KWP, blob[_HEADER:])
