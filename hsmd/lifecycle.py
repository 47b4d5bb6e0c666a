"""The pure rules of a key's life: which state, usage and spec allow which operation.

One table for states and one for usages, read by every operation before it touches the
backend, and published in docs/api.md. No I/O here, so every combination is tested without a
token.
"""

from __future__ import annotations

import enum

from hsmd.domain import Key, KeyState, KeyUsage
from hsmd.errors import FailedPrecondition
from hsmd.keyspecs import SPECS


class Operation(enum.StrEnum):
    DESCRIBE = "DescribeKey"
    ENCRYPT = "Encrypt"
    DECRYPT = "Decrypt"
    GENERATE_DATA_KEY = "GenerateDataKey"
    GENERATE_DATA_KEY_PAIR = "GenerateDataKeyPair"
    SIGN = "Sign"
    VERIFY = "Verify"
    GET_PUBLIC_KEY = "GetPublicKey"
    GENERATE_MAC = "GenerateMac"
    VERIFY_MAC = "VerifyMac"


# Operations that read metadata only are allowed in every state (as AWS KMS's DescribeKey);
# the rest need an ENABLED key.
_METADATA_OPERATIONS = frozenset({Operation.DESCRIBE})

STATE_ALLOWS: dict[KeyState, frozenset[Operation]] = {
    KeyState.CREATING: _METADATA_OPERATIONS,
    KeyState.ENABLED: frozenset(Operation),
    KeyState.DISABLED: _METADATA_OPERATIONS,
    KeyState.UNAVAILABLE: _METADATA_OPERATIONS,
}

USAGE_ALLOWS: dict[KeyUsage, frozenset[Operation]] = {
    KeyUsage.ENCRYPT_DECRYPT: frozenset(
        {
            Operation.DESCRIBE,
            Operation.ENCRYPT,
            Operation.DECRYPT,
            Operation.GENERATE_DATA_KEY,
            Operation.GENERATE_DATA_KEY_PAIR,
            Operation.GET_PUBLIC_KEY,
        }
    ),
    KeyUsage.SIGN_VERIFY: frozenset(
        {Operation.DESCRIBE, Operation.SIGN, Operation.VERIFY, Operation.GET_PUBLIC_KEY}
    ),
    KeyUsage.GENERATE_VERIFY_MAC: frozenset(
        {Operation.DESCRIBE, Operation.GENERATE_MAC, Operation.VERIFY_MAC}
    ),
}

# Within a usage, what only one kind of key can do: a public key needs an asymmetric key,
# and data keys are sealed in the symmetric blob format.
SYMMETRIC_ONLY = frozenset({Operation.GENERATE_DATA_KEY, Operation.GENERATE_DATA_KEY_PAIR})
ASYMMETRIC_ONLY = frozenset({Operation.GET_PUBLIC_KEY})


def _fits(key: Key, operation: Operation) -> bool:
    excluded = SYMMETRIC_ONLY if SPECS[key.spec].family.asymmetric else ASYMMETRIC_ONLY
    return operation in USAGE_ALLOWS[key.usage] and operation not in excluded


def check_allowed(key: Key, operation: Operation) -> None:
    """Raises FailedPrecondition unless the key's spec, usage and state allow the operation."""
    if not _fits(key, operation):
        raise FailedPrecondition(
            f"key {key.key_id} ({key.spec}, {key.usage}) cannot be used for {operation}"
        )
    if operation not in STATE_ALLOWS[key.state]:
        raise FailedPrecondition(
            f"key {key.key_id} is {key.state}, which does not allow {operation}"
        )
