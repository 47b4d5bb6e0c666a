"""The state, usage and spec rules, checked over every combination."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from hsmd import errors
from hsmd.domain import Key, KeyOrigin, KeySpec, KeyState, KeyUsage, MultiRegion, Replica
from hsmd.errors import FailedPrecondition
from hsmd.keyspecs import SPECS
from hsmd.lifecycle import STATE_ALLOWS, USAGE_ALLOWS, Operation, check_allowed

# The published tables (docs/algorithms.md), written out independently of the module's own.
READS = {"DescribeKey", "GetKeyRotationStatus", "ListKeyRotations", "GetKeyPolicy"}
UPKEEP = {"UpdateKeyDescription", "TagKey", "UntagKey", "PutKeyPolicy", "DeleteAlias"}
IMPORT = {"GetParametersForImport", "ImportKeyMaterial"}
MULTI_REGION = {"ReplicateKey", "UpdatePrimaryRegion"}
STATES = {
    KeyState.CREATING: {"DescribeKey"},
    KeyState.ENABLED: {op.value for op in Operation} - {"CancelKeyDeletion"} - IMPORT,
    KeyState.DISABLED: READS
    | UPKEEP
    | {
        "EnableKey",
        "DisableKey",
        "ScheduleKeyDeletion",
        "EnableKeyRotation",
        "DisableKeyRotation",
        "CreateAlias",
        "UpdateAlias",
        "DeleteImportedKeyMaterial",
        *MULTI_REGION,
    },
    KeyState.PENDING_IMPORT: READS | UPKEEP | IMPORT | {"ScheduleKeyDeletion", "CreateAlias"},
    KeyState.PENDING_DELETION: READS | {"CancelKeyDeletion", "DeleteAlias"},
    KeyState.DESTROYED: READS,
    KeyState.UNAVAILABLE: READS | UPKEEP | {"ScheduleKeyDeletion"},
}
MANAGE = (
    READS
    | UPKEEP
    | {
        "EnableKey",
        "DisableKey",
        "ScheduleKeyDeletion",
        "CancelKeyDeletion",
        "DisableKeyRotation",
        "CreateAlias",
        "UpdateAlias",
        "WrapKey",
    }
)
ROTATE = {"EnableKeyRotation", "RotateKeyOnDemand"}
KINDS = {
    ("AES", KeyUsage.ENCRYPT_DECRYPT): MANAGE
    | ROTATE
    | {"Encrypt", "Decrypt", "GenerateDataKey", "GenerateDataKeyPair"},
    ("RSA", KeyUsage.ENCRYPT_DECRYPT): MANAGE | {"Encrypt", "Decrypt", "GetPublicKey"},
    ("RSA", KeyUsage.SIGN_VERIFY): MANAGE | {"Sign", "Verify", "GetPublicKey"},
    ("EC", KeyUsage.SIGN_VERIFY): MANAGE | {"Sign", "Verify", "GetPublicKey"},
    ("EDWARDS", KeyUsage.SIGN_VERIFY): MANAGE | {"Sign", "Verify", "GetPublicKey"},
    ("HMAC", KeyUsage.GENERATE_VERIFY_MAC): MANAGE | {"GenerateMac", "VerifyMac"},
    ("AES", KeyUsage.WRAP_UNWRAP): MANAGE | {"WrapKey (wrapping key)", "UnwrapKey (wrapping key)"},
}
# Keys of origin EXTERNAL take imported material and never rotate.
EXTERNAL_ONLY = IMPORT | {"DeleteImportedKeyMaterial"}
COMBINATIONS = [
    (state, spec, usage, operation)
    for state, spec, operation in itertools.product(KeyState, KeySpec, Operation)
    for usage in sorted(SPECS[spec].usages)
]


def _key(
    state: KeyState, spec: KeySpec, usage: KeyUsage, origin: KeyOrigin = KeyOrigin.GENERATED
) -> Key:
    return Key("t", "k", "", spec, usage, origin, state, datetime.now(UTC), 1)


def test_every_state_has_a_row_and_every_usage_a_column() -> None:
    assert set(STATE_ALLOWS) == set(KeyState)
    assert set(USAGE_ALLOWS) == set(KeyUsage)
    assert {(SPECS[s].family.value, u) for s in KeySpec for u in SPECS[s].usages} == set(KINDS)


@pytest.mark.parametrize(("state", "spec", "usage", "operation"), COMBINATIONS)
def test_every_state_spec_usage_and_operation(
    state: KeyState, spec: KeySpec, usage: KeyUsage, operation: Operation
) -> None:
    key = _key(state, spec, usage)
    fits = operation.value in KINDS[(SPECS[spec].family.value, usage)]
    if fits and operation.value in STATES[state]:
        check_allowed(key, operation)
        return
    with pytest.raises(FailedPrecondition) as refused:
        check_allowed(key, operation)
    assert (str(state) if fits else "cannot be used for") in str(refused.value)
    assert refused.value.reason == _reason(state, operation, fits)


def _reason(state: KeyState, operation: Operation, fits: bool) -> str | None:
    """What a refusal tells a client besides its status (AWS: DisabledException, ...)."""
    if not fits:
        kind_lacks = operation.value in ROTATE | EXTERNAL_ONLY | MULTI_REGION
        return errors.REASON_UNSUPPORTED_OPERATION if kind_lacks else errors.REASON_KEY_USAGE
    return errors.REASON_KEY_DISABLED if state is KeyState.DISABLED else None


@pytest.mark.parametrize(("state", "spec", "usage", "operation"), COMBINATIONS)
def test_keys_of_origin_external_take_imports_and_do_not_rotate(
    state: KeyState, spec: KeySpec, usage: KeyUsage, operation: Operation
) -> None:
    key = _key(state, spec, usage, KeyOrigin.EXTERNAL)
    kind = KINDS[(SPECS[spec].family.value, usage)] - ROTATE
    fits = operation.value in kind | EXTERNAL_ONLY
    if fits and operation.value in STATES[state]:
        check_allowed(key, operation)
        return
    with pytest.raises(FailedPrecondition):
        check_allowed(key, operation)


# Multi-region keys: only they replicate, and only their primary replicates or rotates (a
# replica's UpdatePrimaryRegion is hsmd.ops.regions' to judge); a primary with replicas is
# not deleted.
PRIMARY = MultiRegion("eu-1", "eu-1", (Replica("us-1", 1),))
REPLICA = MultiRegion("us-1", "eu-1", (Replica("us-1", 1),))
PRIMARY_ONLY = {"ReplicateKey", "DisableKeyRotation"} | ROTATE


@pytest.mark.parametrize("operation", sorted(PRIMARY_ONLY))
def test_only_a_multi_region_primary_replicates_and_rotates(operation: str) -> None:
    key = _key(KeyState.ENABLED, KeySpec.AES_256, KeyUsage.ENCRYPT_DECRYPT)
    check_allowed(replace(key, multi_region=PRIMARY), Operation(operation))
    with pytest.raises(FailedPrecondition, match="replica of the primary in eu-1") as refused:
        check_allowed(replace(key, multi_region=REPLICA), Operation(operation))
    assert refused.value.reason == errors.REASON_UNSUPPORTED_OPERATION


def test_a_primary_with_replicas_is_not_deleted_and_a_replica_is() -> None:
    key = _key(KeyState.ENABLED, KeySpec.EC_P256, KeyUsage.SIGN_VERIFY)
    with pytest.raises(FailedPrecondition, match="primary of replicas in us-1"):
        check_allowed(replace(key, multi_region=PRIMARY), Operation.SCHEDULE_DELETION)
    check_allowed(
        replace(key, multi_region=replace(PRIMARY, replicas=())), Operation.SCHEDULE_DELETION
    )
    check_allowed(replace(key, multi_region=REPLICA), Operation.SCHEDULE_DELETION)


def test_a_copy_handing_its_primary_role_over_is_not_deleted() -> None:
    key = _key(KeyState.ENABLED, KeySpec.AES_256, KeyUsage.ENCRYPT_DECRYPT)
    moving = MultiRegion("eu-1", "us-1", (Replica("eu-1", 1),), moving=True)
    with pytest.raises(FailedPrecondition, match="call UpdatePrimaryRegion again"):
        check_allowed(replace(key, multi_region=moving), Operation.SCHEDULE_DELETION)
