"""The pure rules of a key's life: which state and which usage allow which operation.

One table each, read by every operation before it touches the backend, and published in
docs/api.md. No I/O here, so the whole table is tested without a token.
"""

from __future__ import annotations

import enum

from hsmd.domain import Key, KeyState, KeyUsage
from hsmd.errors import FailedPrecondition


class Operation(enum.StrEnum):
    DESCRIBE = "DescribeKey"
    ENCRYPT = "Encrypt"
    DECRYPT = "Decrypt"
    GENERATE_DATA_KEY = "GenerateDataKey"


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
        {Operation.DESCRIBE, Operation.ENCRYPT, Operation.DECRYPT, Operation.GENERATE_DATA_KEY}
    ),
}


def check_allowed(key: Key, operation: Operation) -> None:
    """Raises FailedPrecondition unless the key's state and usage allow the operation."""
    if operation not in USAGE_ALLOWS[key.usage]:
        raise FailedPrecondition(
            f"key {key.key_id} has usage {key.usage}, which does not allow {operation}"
        )
    if operation not in STATE_ALLOWS[key.state]:
        raise FailedPrecondition(
            f"key {key.key_id} is {key.state}, which does not allow {operation}"
        )
