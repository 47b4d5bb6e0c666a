"""Key states through the real daemon: every state x every operation behaves as the published
table says, scheduled deletion can be cancelled, and after the window the material is gone."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from hsmclient import (
    FailedPreconditionError,
    HsmClient,
    HsmError,
    InvalidArgumentError,
    KeyPolicy,
    NotFoundError,
)

from hsmd.domain import KeyState
from hsmd.lifecycle import Operation
from tests.harness import DaemonProcess
from tests.unit.test_lifecycle import STATES

TENANT = "states"
# Wrapping and import need keys of their own kinds and origins, replication a multi-region key
# and a peer region: the unit table covers them over every state, and
# tests/integration/test_wrap_import.py and test_regions.py through the daemon.
MATRIX = [
    op
    for op in Operation
    if op
    not in {
        Operation.EXPORT,
        Operation.WRAP,
        Operation.UNWRAP,
        Operation.GET_IMPORT_PARAMETERS,
        Operation.IMPORT_MATERIAL,
        Operation.DELETE_MATERIAL,
        Operation.REPLICATE,
        Operation.UPDATE_PRIMARY_REGION,
    }
]
STATES_REACHABLE = ("ENABLED", "DISABLED", "PENDING_DELETION", "DESTROYED")
SPEC_FOR = {
    "Sign": "EC_P256",
    "Verify": "EC_P256",
    "GetPublicKey": "EC_P256",
    "GenerateMac": "HMAC_256",
    "VerifyMac": "HMAC_256",
}


@dataclass
class Prepared:
    """A key made ENABLED, with what each operation needs prepared while it could be."""

    key_id: str
    spec: str
    blob: bytes = b""
    signature: bytes = b""
    mac: bytes = b""
    alias: str = ""
    partner: str = ""


def _prepare(client: HsmClient, spec: str, n: int) -> Prepared:
    key_id = client.create_key(key_spec=spec).key_id
    prepared = Prepared(key_id, spec, alias=f"alias/state-{n}")
    if spec == "AES_256":
        prepared.blob = client.encrypt(key_id, b"state test").ciphertext_blob
        prepared.partner = client.create_key().key_id
        client.create_alias(f"alias/partner-{n}", prepared.partner)
    if spec == "EC_P256":
        prepared.signature = client.sign(key_id, b"m", "ECDSA_SHA_256").signature
    if spec == "HMAC_256":
        prepared.mac = client.generate_mac(key_id, b"m", "HMAC_SHA_256").mac
    client.create_alias(prepared.alias, key_id)
    return prepared


def _call(client: HsmClient, operation: str, key: Prepared, n: int) -> Any:
    """Calls the operation on the key with arguments that are right in every other way."""
    k = key.key_id
    calls: dict[str, Callable[[], Any]] = {
        "DescribeKey": lambda: client.describe_key(k),
        "GetKeyRotationStatus": lambda: client.get_key_rotation_status(k),
        "ListKeyRotations": lambda: client.list_key_rotations(k),
        "GetKeyPolicy": lambda: client.get_key_policy(k),
        "Encrypt": lambda: client.encrypt(k, b"x"),
        "Decrypt": lambda: client.decrypt(key.blob),
        "GenerateDataKey": lambda: client.generate_data_key(k),
        "GenerateDataKeyPair": lambda: client.generate_data_key_pair(k, "EC_P256"),
        "Sign": lambda: client.sign(k, b"m", "ECDSA_SHA_256"),
        "Verify": lambda: client.verify(k, b"m", key.signature, "ECDSA_SHA_256"),
        "GetPublicKey": lambda: client.get_public_key(k),
        "GenerateMac": lambda: client.generate_mac(k, b"m", "HMAC_SHA_256"),
        "VerifyMac": lambda: client.verify_mac(k, b"m", key.mac, "HMAC_SHA_256"),
        "EnableKey": lambda: client.enable_key(k),
        "DisableKey": lambda: client.disable_key(k),
        "ScheduleKeyDeletion": lambda: client.schedule_key_deletion(k, 7),
        "CancelKeyDeletion": lambda: client.cancel_key_deletion(k),
        "UpdateKeyDescription": lambda: client.update_key_description(k, "new"),
        "TagKey": lambda: client.tag_key(k, {"team": "x"}),
        "UntagKey": lambda: client.untag_key(k, ["team"]),
        "PutKeyPolicy": lambda: client.put_key_policy(k, KeyPolicy(("app",), ("app",))),
        "EnableKeyRotation": lambda: client.enable_key_rotation(k),
        "DisableKeyRotation": lambda: client.disable_key_rotation(k),
        "RotateKeyOnDemand": lambda: client.rotate_key_on_demand(k),
        "CreateAlias": lambda: client.create_alias(f"alias/new-{n}", k),
        "UpdateAlias": lambda: client.update_alias(f"alias/partner-{n}", k),
        "DeleteAlias": lambda: client.delete_alias(key.alias),
    }
    assert set(calls) == {op.value for op in MATRIX}
    return calls[operation]()


def test_every_state_and_operation_behaves_as_the_table_says(
    new_daemon: Callable[..., DaemonProcess],
) -> None:
    daemon = new_daemon()
    daemon.create_tenant(TENANT)
    client = daemon.client(TENANT)
    cases = [(state, op.value) for state in STATES_REACHABLE for op in MATRIX]
    keys = {}
    for n, (state, operation) in enumerate(cases):
        key = _prepare(client, SPEC_FOR.get(operation, "AES_256"), n)
        if state == "DISABLED":
            client.disable_key(key.key_id)
        elif state == "PENDING_DELETION":
            client.schedule_key_deletion(key.key_id, 30)
        elif state == "DESTROYED":
            client.schedule_key_deletion(key.key_id, 7)
        keys[(state, operation)] = key
    daemon.advance_clock(timedelta(days=8))
    daemon.wait_for(
        lambda: all(
            client.describe_key(keys[("DESTROYED", op.value)].key_id).key_state == "DESTROYED"
            for op in MATRIX
        )
    )
    mismatches = []
    for n, (state, operation) in enumerate(cases):
        key = keys[(state, operation)]
        assert client.describe_key(key.key_id).key_state == state
        allowed = operation in STATES[KeyState(state)]
        if (state, operation) == ("DESTROYED", "DeleteAlias"):
            with pytest.raises(NotFoundError):  # destruction deleted the key's aliases
                _call(client, operation, key, n)
            continue
        try:
            _call(client, operation, key, n)
            refused = False
        except FailedPreconditionError:
            refused = True
        except HsmError as exc:
            mismatches.append((state, operation, f"unexpected {type(exc).__name__}: {exc}"))
            continue
        if refused == allowed:
            mismatches.append((state, operation, "refused" if refused else "allowed"))
        if refused:
            assert client.describe_key(key.key_id).key_state == state  # nothing changed
    assert mismatches == []


def test_scheduled_deletion_cancel_and_destruction(
    new_daemon: Callable[..., DaemonProcess],
) -> None:
    daemon = new_daemon()
    daemon.create_tenant(TENANT)
    client = daemon.client(TENANT)
    key_id = client.create_key().key_id
    blob = client.encrypt(key_id, b"doomed").ciphertext_blob
    client.create_alias("alias/doomed", key_id)
    for days in (6, 31):
        with pytest.raises(InvalidArgumentError, match="pending_window_in_days"):
            client.schedule_key_deletion(key_id, days)

    scheduled = client.schedule_key_deletion(key_id, 7)
    assert scheduled.key_state == "PENDING_DELETION" and scheduled.deletion_date is not None
    with pytest.raises(FailedPreconditionError, match="PENDING_DELETION"):
        client.decrypt(blob)
    cancelled = client.cancel_key_deletion(key_id)
    assert (cancelled.key_state, cancelled.deletion_date) == ("DISABLED", None)
    client.enable_key(key_id)
    assert client.decrypt(blob).plaintext == b"doomed"

    (object_id,) = daemon.query("SELECT object_id FROM key_versions WHERE key_id = ?", key_id)[0]
    client.schedule_key_deletion(key_id, 7)
    daemon.advance_clock(timedelta(days=6))
    assert client.describe_key(key_id).key_state == "PENDING_DELETION"
    daemon.advance_clock(timedelta(days=2))
    daemon.wait_for(lambda: client.describe_key(key_id).key_state == "DESTROYED")
    assert daemon.token_objects(TENANT, bytes(object_id)) == []
    with pytest.raises(FailedPreconditionError, match="DESTROYED"):
        client.decrypt(blob)
    with pytest.raises(FailedPreconditionError, match="DESTROYED"):
        client.cancel_key_deletion(key_id)
    assert [a.alias_name for a in client.iter_aliases()] == []  # its alias went with it
    assert key_id in {key.key_id for key in client.iter_keys()}  # the row stays
