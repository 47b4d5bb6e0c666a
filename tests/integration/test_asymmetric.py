"""RSA-OAEP, ReEncrypt, data key pairs and capabilities through the real daemon."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from hsmclient import (
    FailedPreconditionError,
    HsmClient,
    InvalidArgumentError,
    UnimplementedError,
)

from tests.conftest import TENANT_A
from tests.harness import DaemonProcess

OAEP_SHA1 = padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None)
OPAQUE = "ciphertext is invalid, or does not match the key and encryption context"
PAIR_SPECS = ["RSA_2048", "RSA_3072", "RSA_4096", "EC_P256", "EC_P384", "EC_P521", "EC_SECP256K1"]


@pytest.fixture(scope="module")
def client(daemon: DaemonProcess) -> HsmClient:
    return daemon.client(TENANT_A, "asym")


@pytest.fixture(scope="module")
def rsa_key(client: HsmClient) -> str:
    return client.create_key(key_spec="RSA_2048", key_usage="ENCRYPT_DECRYPT").key_id


@pytest.fixture(scope="module")
def aes_key(client: HsmClient) -> str:
    return client.create_key().key_id


def _public_rsa(client: HsmClient, key_id: str) -> rsa.RSAPublicKey:
    public = serialization.load_der_public_key(client.get_public_key(key_id).public_key)
    assert isinstance(public, rsa.RSAPublicKey)
    return public


def test_oaep_ciphertext_made_with_pyca_decrypts_through_the_daemon(
    client: HsmClient, rsa_key: str
) -> None:
    public = client.get_public_key(rsa_key)
    assert public.encryption_algorithms == ("RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256")
    for size in (1, 100, 214):  # 214 = 256 - 2*20 - 2, the OAEP-SHA-1 limit for RSA-2048
        plaintext = bytes(range(size % 256)) * (size // 256) + bytes(size % 256)
        blob = _public_rsa(client, rsa_key).encrypt(plaintext, OAEP_SHA1)
        opened = client.decrypt(blob, key_id=rsa_key, encryption_algorithm="RSAES_OAEP_SHA_1")
        assert (opened.plaintext, opened.key_id) == (plaintext, rsa_key)
        assert opened.encryption_algorithm == "RSAES_OAEP_SHA_1"


def test_oaep_round_trip_limits_and_refusals(client: HsmClient, rsa_key: str) -> None:
    sealed = client.encrypt(rsa_key, b"x" * 214, encryption_algorithm="RSAES_OAEP_SHA_1")
    assert len(sealed.ciphertext_blob) == 256
    assert (
        client.decrypt(
            sealed.ciphertext_blob, key_id=rsa_key, encryption_algorithm="RSAES_OAEP_SHA_1"
        ).plaintext
        == b"x" * 214
    )
    with pytest.raises(InvalidArgumentError, match="at most 214 bytes"):
        client.encrypt(rsa_key, b"x" * 215, encryption_algorithm="RSAES_OAEP_SHA_1")
    with pytest.raises(InvalidArgumentError, match="no encryption context"):
        client.encrypt(rsa_key, b"x", {"a": "b"}, encryption_algorithm="RSAES_OAEP_SHA_1")
    with pytest.raises(InvalidArgumentError, match="does not fit"):
        client.encrypt(rsa_key, b"x")  # SYMMETRIC_DEFAULT
    with pytest.raises(InvalidArgumentError, match="key_id is required"):
        client.decrypt(sealed.ciphertext_blob, encryption_algorithm="RSAES_OAEP_SHA_1")
    tampered = bytearray(sealed.ciphertext_blob)
    tampered[100] ^= 1
    for blob in (bytes(tampered), sealed.ciphertext_blob[:-1], b"\x00" * 256):
        with pytest.raises(InvalidArgumentError, match=OPAQUE):
            client.decrypt(blob, key_id=rsa_key, encryption_algorithm="RSAES_OAEP_SHA_1")


def test_oaep_sha256_is_unimplemented_where_the_backend_cannot(
    client: HsmClient, rsa_key: str
) -> None:
    capabilities = client.get_capabilities()
    if "RSAES_OAEP_SHA_256" in capabilities.encryption_algorithms:
        pytest.skip("this backend supports OAEP-SHA-256; the round trip test covers it")
    assert any("RSAES_OAEP_SHA_256" in note for note in capabilities.notes)
    with pytest.raises(UnimplementedError, match="RSAES_OAEP_SHA_256"):
        client.encrypt(rsa_key, b"x", encryption_algorithm="RSAES_OAEP_SHA_256")


def test_capabilities_name_every_spec_softhsm_offers(client: HsmClient) -> None:
    capabilities = client.get_capabilities()
    assert {"AES_256", "RSA_4096", "EC_SECP256K1", "ED25519", "HMAC_224"} <= set(
        capabilities.key_specs
    )
    assert "ED25519_SHA_512" in capabilities.signing_algorithms
    assert "HMAC_SHA_512" in capabilities.mac_algorithms


def test_wrong_usage_for_encryption_is_failed_precondition(client: HsmClient) -> None:
    mac_key = client.create_key(key_spec="HMAC_256").key_id
    signing_key = client.create_key(key_spec="EC_P256").key_id
    for key_id in (mac_key, signing_key):
        with pytest.raises(FailedPreconditionError, match="cannot be used for Encrypt"):
            client.encrypt(key_id, b"x")
        with pytest.raises(FailedPreconditionError, match="GenerateDataKey"):
            client.generate_data_key(key_id)
    assert client.describe_key(mac_key).key_usage == "GENERATE_VERIFY_MAC"
    assert client.describe_key(signing_key).key_usage == "SIGN_VERIFY"


def test_re_encrypt_moves_a_blob_to_another_key_and_context(
    client: HsmClient, aes_key: str
) -> None:
    destination = client.create_key().key_id
    blob = client.encrypt(aes_key, b"moving secret", {"from": "a"}).ciphertext_blob
    moved = client.re_encrypt(
        blob,
        destination,
        source_encryption_context={"from": "a"},
        destination_encryption_context={"to": "b"},
    )
    assert (moved.source_key_id, moved.key_id) == (aes_key, destination)
    assert client.decrypt(moved.ciphertext_blob, {"to": "b"}).plaintext == b"moving secret"
    for context, key_id in (({"to": "b"}, aes_key), ({"from": "a"}, None), ({}, None)):
        with pytest.raises(InvalidArgumentError, match=OPAQUE):
            client.decrypt(moved.ciphertext_blob, context, key_id=key_id)
    with pytest.raises(InvalidArgumentError, match=OPAQUE):
        client.re_encrypt(blob, destination, source_encryption_context={"from": "x"})


def test_re_encrypt_from_rsa_to_aes(client: HsmClient, rsa_key: str, aes_key: str) -> None:
    blob = _public_rsa(client, rsa_key).encrypt(b"from rsa", OAEP_SHA1)
    moved = client.re_encrypt(
        blob,
        aes_key,
        source_key_id=rsa_key,
        source_encryption_algorithm="RSAES_OAEP_SHA_1",
    )
    assert moved.source_encryption_algorithm == "RSAES_OAEP_SHA_1"
    assert moved.destination_encryption_algorithm == "SYMMETRIC_DEFAULT"
    assert client.decrypt(moved.ciphertext_blob).plaintext == b"from rsa"


@pytest.mark.parametrize("spec", PAIR_SPECS)
def test_data_key_pairs_match_and_their_private_keys_decrypt(
    client: HsmClient, aes_key: str, spec: str
) -> None:
    pair = client.generate_data_key_pair(aes_key, spec, {"pair": spec})
    assert pair.key_pair_spec == spec
    private = serialization.load_der_private_key(pair.private_key_plaintext, password=None)
    assert isinstance(private, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey))
    public_der = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert public_der == pair.public_key
    opened = client.decrypt(pair.private_key_ciphertext_blob, {"pair": spec})
    assert opened.plaintext == pair.private_key_plaintext
    assert "private_key_plaintext" not in repr(pair)

    sealed_only = client.generate_data_key_pair_without_plaintext(aes_key, spec)
    recovered = serialization.load_der_private_key(
        client.decrypt(sealed_only.private_key_ciphertext_blob).plaintext, password=None
    )
    assert isinstance(recovered, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey))
    assert (
        recovered.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        == sealed_only.public_key
    )


def test_data_key_pairs_need_a_symmetric_key_and_a_pair_spec(
    client: HsmClient, aes_key: str, rsa_key: str
) -> None:
    with pytest.raises(FailedPreconditionError, match="GenerateDataKeyPair"):
        client.generate_data_key_pair(rsa_key, "EC_P256")
    for spec in ("AES_256", "HMAC_256", "ED25519"):
        with pytest.raises(InvalidArgumentError, match="key_pair_spec"):
            client.generate_data_key_pair(aes_key, spec)
