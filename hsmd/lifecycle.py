"""The pure rules of a key's life: which state, usage and kind allow which operation, and
where each state-changing operation leads.

Read by every operation before it touches the backend, published in docs/algorithms.md, and
tested over every combination without a token.
"""

from __future__ import annotations

import enum

from hsmd.domain import Key, KeyOrigin, KeyState, KeyUsage
from hsmd.errors import (
    REASON_KEY_DISABLED,
    REASON_KEY_USAGE,
    REASON_UNSUPPORTED_OPERATION,
    FailedPrecondition,
)
from hsmd.keyspecs import SPECS, Family


class Operation(enum.StrEnum):
    # Metadata reads
    DESCRIBE = "DescribeKey"
    GET_ROTATION_STATUS = "GetKeyRotationStatus"
    LIST_ROTATIONS = "ListKeyRotations"
    GET_KEY_POLICY = "GetKeyPolicy"
    # Use
    ENCRYPT = "Encrypt"
    DECRYPT = "Decrypt"
    GENERATE_DATA_KEY = "GenerateDataKey"
    GENERATE_DATA_KEY_PAIR = "GenerateDataKeyPair"
    SIGN = "Sign"
    VERIFY = "Verify"
    GET_PUBLIC_KEY = "GetPublicKey"
    GENERATE_MAC = "GenerateMac"
    VERIFY_MAC = "VerifyMac"
    # Management
    ENABLE = "EnableKey"
    DISABLE = "DisableKey"
    SCHEDULE_DELETION = "ScheduleKeyDeletion"
    CANCEL_DELETION = "CancelKeyDeletion"
    UPDATE_DESCRIPTION = "UpdateKeyDescription"
    TAG = "TagKey"
    UNTAG = "UntagKey"
    PUT_KEY_POLICY = "PutKeyPolicy"
    ENABLE_ROTATION = "EnableKeyRotation"
    DISABLE_ROTATION = "DisableKeyRotation"
    ROTATE = "RotateKeyOnDemand"
    CREATE_ALIAS = "CreateAlias"
    UPDATE_ALIAS = "UpdateAlias"
    DELETE_ALIAS = "DeleteAlias"
    # Wrapping and import
    EXPORT = "WrapKey"  # the key being wrapped
    WRAP = "WrapKey (wrapping key)"
    UNWRAP = "UnwrapKey (wrapping key)"
    GET_IMPORT_PARAMETERS = "GetParametersForImport"
    IMPORT_MATERIAL = "ImportKeyMaterial"
    DELETE_MATERIAL = "DeleteImportedKeyMaterial"
    # Multi-region keys
    REPLICATE = "ReplicateKey"
    UPDATE_PRIMARY_REGION = "UpdatePrimaryRegion"


Op = Operation
_READS = frozenset({Op.DESCRIBE, Op.GET_ROTATION_STATUS, Op.LIST_ROTATIONS, Op.GET_KEY_POLICY})
# What can be changed about a key that is not in use, short of using it.
_UPKEEP = frozenset(
    {
        Op.UPDATE_DESCRIPTION,
        Op.TAG,
        Op.UNTAG,
        Op.PUT_KEY_POLICY,
        Op.DELETE_ALIAS,
    }
)

_IMPORT = frozenset({Op.GET_IMPORT_PARAMETERS, Op.IMPORT_MATERIAL})

STATE_ALLOWS: dict[KeyState, frozenset[Operation]] = {
    KeyState.CREATING: frozenset({Op.DESCRIBE}),
    KeyState.ENABLED: frozenset(Operation) - {Op.CANCEL_DELETION} - _IMPORT,
    KeyState.DISABLED: _READS
    | _UPKEEP
    | {
        Op.ENABLE,
        Op.DISABLE,
        Op.SCHEDULE_DELETION,
        Op.ENABLE_ROTATION,
        Op.DISABLE_ROTATION,
        Op.CREATE_ALIAS,
        Op.UPDATE_ALIAS,
        Op.DELETE_MATERIAL,
        Op.REPLICATE,
        Op.UPDATE_PRIMARY_REGION,
    },
    KeyState.PENDING_IMPORT: _READS | _UPKEEP | _IMPORT | {Op.SCHEDULE_DELETION, Op.CREATE_ALIAS},
    KeyState.PENDING_DELETION: _READS | {Op.CANCEL_DELETION, Op.DELETE_ALIAS},
    KeyState.DESTROYED: _READS,
    KeyState.UNAVAILABLE: _READS | _UPKEEP | {Op.SCHEDULE_DELETION},
}

# Where the state-changing operations lead (DESTROYED is reached by the daemon, not an RPC).
TRANSITIONS: dict[Operation, KeyState] = {
    Op.ENABLE: KeyState.ENABLED,
    Op.DISABLE: KeyState.DISABLED,
    Op.SCHEDULE_DELETION: KeyState.PENDING_DELETION,
    Op.CANCEL_DELETION: KeyState.DISABLED,
}

# The operations that use a key's material (hsmd.policy gives them to the key's users); every
# other operation manages the key.
USE_OPERATIONS = frozenset(
    {
        Op.WRAP,
        Op.UNWRAP,
        Op.ENCRYPT,
        Op.DECRYPT,
        Op.GENERATE_DATA_KEY,
        Op.GENERATE_DATA_KEY_PAIR,
        Op.SIGN,
        Op.VERIFY,
        Op.GET_PUBLIC_KEY,
        Op.GENERATE_MAC,
        Op.VERIFY_MAC,
    }
)
_KEY_MANAGEMENT = frozenset(Operation) - USE_OPERATIONS
USAGE_ALLOWS: dict[KeyUsage, frozenset[Operation]] = {
    KeyUsage.ENCRYPT_DECRYPT: _KEY_MANAGEMENT
    | {
        Op.ENCRYPT,
        Op.DECRYPT,
        Op.GENERATE_DATA_KEY,
        Op.GENERATE_DATA_KEY_PAIR,
        Op.GET_PUBLIC_KEY,
    },
    KeyUsage.SIGN_VERIFY: _KEY_MANAGEMENT | {Op.SIGN, Op.VERIFY, Op.GET_PUBLIC_KEY},
    KeyUsage.GENERATE_VERIFY_MAC: _KEY_MANAGEMENT | {Op.GENERATE_MAC, Op.VERIFY_MAC},
    KeyUsage.WRAP_UNWRAP: _KEY_MANAGEMENT | {Op.WRAP, Op.UNWRAP},
}

# Within a usage, what only one kind of key can do: a public key needs an asymmetric key, and
# data keys are sealed in the symmetric blob format.
SYMMETRIC_ONLY = frozenset({Op.GENERATE_DATA_KEY, Op.GENERATE_DATA_KEY_PAIR})
ASYMMETRIC_ONLY = frozenset({Op.GET_PUBLIC_KEY})
# Only generated AES encryption keys rotate, as in AWS KMS: their blobs name the version that
# made them, while a signature, a MAC, an RSA ciphertext or a wrapped key does not, and
# imported material cannot be made anew by the daemon.
ROTATION = frozenset({Op.ENABLE_ROTATION, Op.ROTATE})
# Only keys of origin EXTERNAL take imported material.
IMPORT_ONLY = frozenset({Op.GET_IMPORT_PARAMETERS, Op.IMPORT_MATERIAL, Op.DELETE_MATERIAL})
# Only multi-region keys replicate; and only the primary replicates or rotates (its replicas
# receive its versions), as in AWS KMS. UpdatePrimaryRegion is checked by hsmd.ops.regions: a
# replica may finish a move of the primary role to the region it names as primary.
MULTI_REGION_ONLY = frozenset({Op.REPLICATE, Op.UPDATE_PRIMARY_REGION})
PRIMARY_ONLY = frozenset({Op.REPLICATE, Op.ENABLE_ROTATION, Op.DISABLE_ROTATION, Op.ROTATE})


def _fits(key: Key, operation: Operation) -> bool:
    family = SPECS[key.spec].family
    if operation not in USAGE_ALLOWS[key.usage]:
        return False
    if operation in SYMMETRIC_ONLY and family.asymmetric:
        return False
    if operation in ASYMMETRIC_ONLY and not family.asymmetric:
        return False
    if operation in IMPORT_ONLY and key.origin is not KeyOrigin.EXTERNAL:
        return False
    if operation in MULTI_REGION_ONLY and key.multi_region is None:
        return False
    if operation in PRIMARY_ONLY and key.multi_region and not key.multi_region.is_primary:
        return False
    if operation in ROTATION:
        return (family, key.usage, key.origin) == (
            Family.AES,
            KeyUsage.ENCRYPT_DECRYPT,
            KeyOrigin.GENERATED,
        )
    return True


def _role(key: Key) -> str:
    if key.multi_region is None:
        return ""
    if key.multi_region.is_primary:
        return ", multi-region primary"
    return f", replica of the primary in {key.multi_region.primary_region}"


def check_allowed(key: Key, operation: Operation) -> None:
    """Raises FailedPrecondition unless the key's spec, usage and state allow the operation."""
    if not _fits(key, operation):
        # Rotation and import are what a kind of key lacks (AWS: UnsupportedOperation); the
        # rest, a usage the key was not made for (AWS: InvalidKeyUsage).
        unsupported = operation in ROTATION | IMPORT_ONLY | MULTI_REGION_ONLY | PRIMARY_ONLY
        raise FailedPrecondition(
            f"key {key.key_id} ({key.spec}, {key.usage}{_role(key)}) cannot be used for"
            f" {operation}",
            REASON_UNSUPPORTED_OPERATION if unsupported else REASON_KEY_USAGE,
        )
    if operation is Op.SCHEDULE_DELETION and key.multi_region and key.multi_region.moving:
        raise FailedPrecondition(
            f"key {key.key_id} is handing its primary role to {key.multi_region.primary_region}:"
            " call UpdatePrimaryRegion again to finish, then delete it"
        )
    if operation is Op.SCHEDULE_DELETION and key.multi_region and key.multi_region.replicas:
        if key.multi_region.is_primary:
            raise FailedPrecondition(
                f"key {key.key_id} is the primary of replicas in"
                f" {', '.join(r.region for r in key.multi_region.replicas)}: delete them, or"
                " make one of them the primary (UpdatePrimaryRegion), first"
            )
    if operation not in STATE_ALLOWS[key.state]:
        raise FailedPrecondition(
            f"key {key.key_id} is {key.state}, which does not allow {operation}",
            REASON_KEY_DISABLED if key.state is KeyState.DISABLED else None,
        )
