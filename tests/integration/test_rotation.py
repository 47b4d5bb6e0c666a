"""Versions and rotation through the real daemon, with its clock moved instead of waiting."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from hsmclient import FailedPreconditionError, HsmClient, InvalidArgumentError

from tests.conftest import TENANT_A
from tests.harness import DaemonProcess

TENANT = "rotating"


def _version_in(blob: bytes) -> int:
    """The key version a blob names (docs/formats.md: bytes 17-20, big-endian)."""
    return int.from_bytes(blob[17:21], "big")


@pytest.fixture(scope="module")
def client(daemon: DaemonProcess) -> HsmClient:
    return daemon.client(TENANT_A, "rotator")


def test_three_rotations_keep_every_version_decrypting(client: HsmClient) -> None:
    key_id = client.create_key().key_id
    blobs = {1: client.encrypt(key_id, b"v1", {"v": "1"}).ciphertext_blob}
    for expected in (2, 3, 4):
        rotated = client.rotate_key_on_demand(key_id)
        assert (rotated.key_id, rotated.key_version) == (key_id, expected)
        sealed = client.encrypt(key_id, f"v{expected}".encode(), {"v": str(expected)})
        assert sealed.key_version == expected == _version_in(sealed.ciphertext_blob)
        blobs[expected] = sealed.ciphertext_blob
    assert client.describe_key(key_id).primary_version == 4
    for version, blob in blobs.items():
        opened = client.decrypt(blob, {"v": str(version)})
        assert (opened.plaintext, opened.key_version) == (f"v{version}".encode(), version)
    rotations = list(client.iter_key_rotations(key_id))
    assert [(r.key_version, r.rotation_type) for r in rotations] == [
        (2, "ON_DEMAND"),
        (3, "ON_DEMAND"),
        (4, "ON_DEMAND"),
    ]
    dates = [r.rotation_date for r in rotations]
    assert dates == sorted(dates)
    assert client.get_key_rotation_status(key_id).on_demand_rotation_start_date == dates[-1]
    assert [r.key_version for r in client.list_key_rotations(key_id, page_size=2)[0]] == [2, 3]


def test_only_aes_keys_rotate(client: HsmClient) -> None:
    for spec in ("HMAC_256", "EC_P256"):
        key_id = client.create_key(key_spec=spec).key_id
        with pytest.raises(FailedPreconditionError, match="RotateKeyOnDemand"):
            client.rotate_key_on_demand(key_id)
        with pytest.raises(FailedPreconditionError, match="EnableKeyRotation"):
            client.enable_key_rotation(key_id)
        assert not client.get_key_rotation_status(key_id).key_rotation_enabled


def test_rotation_period_limits(client: HsmClient) -> None:
    key_id = client.create_key().key_id
    for days in (89, 2561):
        with pytest.raises(InvalidArgumentError, match="rotation_period_in_days"):
            client.enable_key_rotation(key_id, days)
    status = client.enable_key_rotation(key_id)
    assert status.key_rotation_enabled and status.rotation_period_in_days == 365
    assert status.next_rotation_date is not None
    assert not client.disable_key_rotation(key_id).key_rotation_enabled
    assert client.get_key_rotation_status(key_id).next_rotation_date is None


def test_the_daemon_rotates_by_itself_and_catches_up_after_a_restart(
    new_daemon: Callable[..., DaemonProcess],
) -> None:
    daemon = new_daemon()
    daemon.create_tenant(TENANT)
    with daemon.client(TENANT) as client:
        key_id = client.create_key().key_id
        old_blob = client.encrypt(key_id, b"before").ciphertext_blob
        first = client.enable_key_rotation(key_id, 90)
        assert first.next_rotation_date is not None
        daemon.advance_clock(timedelta(days=91))
        daemon.wait_for(lambda: client.describe_key(key_id).primary_version == 2)
        second = client.get_key_rotation_status(key_id)
        assert second.next_rotation_date is not None
        assert second.next_rotation_date - first.next_rotation_date >= timedelta(days=90)
    daemon.stop()
    daemon.advance_clock(timedelta(days=300))  # three periods pass while the daemon is down
    daemon.start()
    with daemon.client(TENANT) as client:
        daemon.wait_for(lambda: client.describe_key(key_id).primary_version == 3)
        rotations = list(client.iter_key_rotations(key_id))
        assert [(r.key_version, r.rotation_type) for r in rotations] == [
            (2, "AUTOMATIC"),
            (3, "AUTOMATIC"),
        ]  # caught up once, not once per missed period
        assert client.decrypt(old_blob).plaintext == b"before"
        assert client.encrypt(key_id, b"after").key_version == 3
