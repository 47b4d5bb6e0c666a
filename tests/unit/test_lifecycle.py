"""The state and usage tables, checked over every combination."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest

from hsmd.domain import Key, KeyOrigin, KeySpec, KeyState, KeyUsage
from hsmd.errors import FailedPrecondition
from hsmd.lifecycle import STATE_ALLOWS, USAGE_ALLOWS, Operation, check_allowed

# The published table (docs/api.md), written out independently of the module's own.
EXPECTED = {
    KeyState.CREATING: {"DescribeKey"},
    KeyState.ENABLED: {"DescribeKey", "Encrypt", "Decrypt", "GenerateDataKey"},
    KeyState.DISABLED: {"DescribeKey"},
    KeyState.UNAVAILABLE: {"DescribeKey"},
}


def _key(state: KeyState, usage: KeyUsage = KeyUsage.ENCRYPT_DECRYPT) -> Key:
    return Key(
        "t", "k", "", KeySpec.AES_256, usage, KeyOrigin.GENERATED, state, datetime.now(UTC), 1
    )


def test_every_state_has_a_row_and_every_usage_a_column() -> None:
    assert set(STATE_ALLOWS) == set(KeyState)
    assert set(USAGE_ALLOWS) == set(KeyUsage)


@pytest.mark.parametrize(("state", "operation"), list(itertools.product(KeyState, Operation)))
def test_state_table(state: KeyState, operation: Operation) -> None:
    if operation.value in EXPECTED[state]:
        check_allowed(_key(state), operation)
    else:
        with pytest.raises(FailedPrecondition, match=str(state)):
            check_allowed(_key(state), operation)
