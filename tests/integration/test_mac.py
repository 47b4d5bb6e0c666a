"""GenerateMac and VerifyMac for every HMAC spec, checked against Python's hmac."""

from __future__ import annotations

import hashlib
import hmac
import os

import pytest
from hsmclient import HsmClient, InvalidArgumentError

from tests.conftest import TENANT_A
from tests.harness import DaemonProcess

SPECS = {
    "HMAC_224": ("HMAC_SHA_224", 28),
    "HMAC_256": ("HMAC_SHA_256", 32),
    "HMAC_384": ("HMAC_SHA_384", 48),
    "HMAC_512": ("HMAC_SHA_512", 64),
}


@pytest.fixture(scope="module")
def client(daemon: DaemonProcess) -> HsmClient:
    return daemon.client(TENANT_A, "mac")


@pytest.mark.parametrize("spec", SPECS)
def test_generate_then_verify_and_every_change_is_invalid(client: HsmClient, spec: str) -> None:
    algorithm, size = SPECS[spec]
    key_id = client.create_key(key_spec=spec, key_usage="GENERATE_VERIFY_MAC").key_id
    assert client.describe_key(key_id).mac_algorithms == (algorithm,)
    message = b"amount=100&to=alice"
    mac = client.generate_mac(key_id, message, algorithm)
    assert (len(mac.mac), mac.key_id, mac.key_version, mac.mac_algorithm) == (
        size,
        key_id,
        1,
        algorithm,
    )
    assert client.generate_mac(key_id, message, algorithm).mac == mac.mac  # deterministic
    assert client.verify_mac(key_id, message, mac.mac, algorithm).mac_valid
    flipped = bytes([mac.mac[0] ^ 1]) + mac.mac[1:]
    for other_message, tag in (
        (b"amount=900&to=alice", mac.mac),
        (message, flipped),
        (message, mac.mac[:16]),
        (message, mac.mac + b"\x00"),
        (message, b""),
    ):
        assert not client.verify_mac(key_id, other_message, tag, algorithm).mac_valid
    other_key = client.create_key(key_spec=spec, key_usage="GENERATE_VERIFY_MAC").key_id
    assert not client.verify_mac(other_key, message, mac.mac, algorithm).mac_valid


def test_a_mac_is_a_real_hmac_of_the_message(client: HsmClient) -> None:
    """A known answer: an HMAC key imported with known material gives Python's HMAC, for every
    message; and the MAC of a message differs from that of any other."""
    material = os.urandom(32)
    key_id = client.create_key(key_spec="HMAC_256", origin="EXTERNAL").key_id
    client.import_key(key_id, material, "HMAC_256")
    tags = {client.generate_mac(key_id, bytes([i]), "HMAC_SHA_256").mac for i in range(16)}
    assert len(tags) == 16
    assert all(len(tag) == hashlib.sha256().digest_size for tag in tags)
    assert not any(hmac.compare_digest(tag, hashlib.sha256(b"\x00").digest()) for tag in tags)
    for i in range(16):
        expected = hmac.new(material, bytes([i]), hashlib.sha256).digest()
        assert expected in tags
        assert client.verify_mac(key_id, bytes([i]), expected, "HMAC_SHA_256").mac_valid


def test_mac_refusals(client: HsmClient) -> None:
    key_id = client.create_key(key_spec="HMAC_384").key_id
    with pytest.raises(InvalidArgumentError, match="does not fit"):
        client.generate_mac(key_id, b"m", "HMAC_SHA_256")
    for message in (b"", b"m" * 4097):
        with pytest.raises(
            InvalidArgumentError, match=r"message (must be 1 to|is longer than) 4096"
        ):
            client.generate_mac(key_id, message, "HMAC_SHA_384")
