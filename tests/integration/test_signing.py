"""Sign, Verify and GetPublicKey for every spec and algorithm, checked by OpenSSL and pyca.

What the daemon signs must verify with the tools service teams use (`openssl dgst`,
`openssl pkeyutl`, pyca/cryptography) against the PEM from GetPublicKey; a changed signature
or message must be invalid through Verify, and bad input must be refused with the documented
status while nothing changes.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from hsmclient import FailedPreconditionError, HsmClient, InvalidArgumentError

from tests.conftest import TENANT_A
from tests.harness import DaemonProcess

CASES = [
    (spec, algorithm)
    for spec in ("RSA_2048", "RSA_3072", "RSA_4096")
    for algorithm in (
        "RSASSA_PSS_SHA_256",
        "RSASSA_PSS_SHA_384",
        "RSASSA_PSS_SHA_512",
        "RSASSA_PKCS1_V1_5_SHA_256",
        "RSASSA_PKCS1_V1_5_SHA_384",
        "RSASSA_PKCS1_V1_5_SHA_512",
    )
] + [
    ("EC_P256", "ECDSA_SHA_256"),
    ("EC_P384", "ECDSA_SHA_384"),
    ("EC_P521", "ECDSA_SHA_512"),
    ("EC_SECP256K1", "ECDSA_SHA_256"),
    ("ED25519", "ED25519_SHA_512"),
]
MESSAGE = b"the quick brown fox signs a token"


@pytest.fixture(scope="module")
def client(daemon: DaemonProcess) -> HsmClient:
    return daemon.client(TENANT_A, "signer")


@pytest.fixture(scope="module")
def keys(client: HsmClient) -> dict[str, str]:
    """One SIGN_VERIFY key per spec, made once for the module (RSA-4096 takes seconds)."""
    specs = {spec for spec, _ in CASES}
    return {
        spec: client.create_key(key_spec=spec, key_usage="SIGN_VERIFY").key_id for spec in specs
    }


def _hash(algorithm: str) -> hashes.HashAlgorithm:
    bits = algorithm.rsplit("_", 1)[-1]
    return {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}[bits]


def _openssl_verify(
    tmp: Path, pem: bytes, algorithm: str, message: bytes, signature: bytes
) -> bool:
    (tmp / "pub.pem").write_bytes(pem)
    (tmp / "msg").write_bytes(message)
    (tmp / "sig").write_bytes(signature)
    if algorithm == "ED25519_SHA_512":
        command = ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", "pub.pem", "-rawin"]
        command += ["-in", "msg", "-sigfile", "sig"]
    else:
        digest = "-" + _hash(algorithm).name
        command = ["openssl", "dgst", digest, "-verify", "pub.pem", "-signature", "sig"]
        if algorithm.startswith("RSASSA_PSS"):
            command += ["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:digest"]
            command += ["-sigopt", f"rsa_mgf1_md:{_hash(algorithm).name}"]
        command.append("msg")
    result = subprocess.run(command, cwd=tmp, capture_output=True, timeout=30)
    return result.returncode == 0


def _pyca_verify(der: bytes, algorithm: str, message: bytes, signature: bytes) -> None:
    """Raises InvalidSignature unless the signature is good."""
    public = serialization.load_der_public_key(der)
    if isinstance(public, ed25519.Ed25519PublicKey):
        public.verify(signature, message)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        public.verify(signature, message, ec.ECDSA(_hash(algorithm)))
    else:
        assert isinstance(public, rsa.RSAPublicKey)
        scheme: padding.AsymmetricPadding = padding.PKCS1v15()
        if algorithm.startswith("RSASSA_PSS"):
            scheme = padding.PSS(padding.MGF1(_hash(algorithm)), _hash(algorithm).digest_size)
        public.verify(signature, message, scheme, _hash(algorithm))


@pytest.mark.parametrize(("spec", "algorithm"), CASES)
def test_signatures_verify_with_openssl_pyca_and_the_daemon(
    client: HsmClient, keys: dict[str, str], spec: str, algorithm: str, tmp_path: Path
) -> None:
    key_id = keys[spec]
    public = client.get_public_key(key_id)
    assert (public.key_spec, public.key_usage) == (spec, "SIGN_VERIFY")
    assert algorithm in public.signing_algorithms
    signed = client.sign(key_id, MESSAGE, algorithm)
    assert (signed.key_id, signed.key_version, signed.signing_algorithm) == (key_id, 1, algorithm)
    assert _openssl_verify(tmp_path, public.pem(), algorithm, MESSAGE, signed.signature)
    _pyca_verify(public.public_key, algorithm, MESSAGE, signed.signature)
    assert client.verify(key_id, MESSAGE, signed.signature, algorithm).signature_valid

    flipped = bytearray(signed.signature)
    flipped[len(flipped) // 2] ^= 0x01
    assert not client.verify(key_id, MESSAGE, bytes(flipped), algorithm).signature_valid
    assert not client.verify(key_id, MESSAGE + b"!", signed.signature, algorithm).signature_valid
    assert not _openssl_verify(tmp_path, public.pem(), algorithm, MESSAGE + b"!", signed.signature)


@pytest.mark.parametrize(("spec", "algorithm"), [c for c in CASES if c[0] != "ED25519"])
def test_digest_signatures_match_raw_ones(
    client: HsmClient, keys: dict[str, str], spec: str, algorithm: str, tmp_path: Path
) -> None:
    key_id = keys[spec]
    digest = hashlib.new(_hash(algorithm).name, MESSAGE).digest()
    signed = client.sign(key_id, digest, algorithm, message_type="DIGEST")
    assert _openssl_verify(
        tmp_path, client.get_public_key(key_id).pem(), algorithm, MESSAGE, signed.signature
    )
    assert client.verify(key_id, MESSAGE, signed.signature, algorithm).signature_valid
    assert client.verify(
        key_id, digest, signed.signature, algorithm, message_type="DIGEST"
    ).signature_valid
    for wrong in (digest[:-1], digest + b"\x00", b""):
        with pytest.raises(InvalidArgumentError, match=r"DIGEST|message"):
            client.sign(key_id, wrong, algorithm, message_type="DIGEST")


def test_ecdsa_signatures_are_strict_der(client: HsmClient, keys: dict[str, str]) -> None:
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    key_id = keys["EC_P256"]
    signature = client.sign(key_id, MESSAGE, "ECDSA_SHA_256").signature
    r, s = decode_dss_signature(signature)
    assert r > 0 and s > 0
    raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    assert not client.verify(key_id, MESSAGE, raw, "ECDSA_SHA_256").signature_valid
    ber_long_length = bytes([0x30, 0x81, signature[1]]) + signature[2:]
    assert not client.verify(key_id, MESSAGE, ber_long_length, "ECDSA_SHA_256").signature_valid
    assert not client.verify(key_id, MESSAGE, signature + b"\x00", "ECDSA_SHA_256").signature_valid


def test_ed25519_signs_raw_messages_only(client: HsmClient, keys: dict[str, str]) -> None:
    with pytest.raises(InvalidArgumentError, match="RAW"):
        client.sign(keys["ED25519"], bytes(64), "ED25519_SHA_512", message_type="DIGEST")


def test_raw_messages_over_4096_bytes_are_refused(client: HsmClient, keys: dict[str, str]) -> None:
    for spec, algorithm in (("EC_P256", "ECDSA_SHA_256"), ("ED25519", "ED25519_SHA_512")):
        with pytest.raises(InvalidArgumentError, match="4096"):
            client.sign(keys[spec], b"m" * 4097, algorithm)


@pytest.mark.parametrize(
    ("spec", "algorithm"),
    [
        ("EC_P256", "ECDSA_SHA_384"),
        ("EC_P384", "ECDSA_SHA_256"),
        ("EC_P256", "RSASSA_PSS_SHA_256"),
        ("RSA_2048", "ECDSA_SHA_256"),
        ("ED25519", "ECDSA_SHA_512"),
    ],
)
def test_an_algorithm_that_does_not_fit_the_spec_is_invalid_argument(
    client: HsmClient, keys: dict[str, str], spec: str, algorithm: str
) -> None:
    before = client.describe_key(keys[spec])
    with pytest.raises(InvalidArgumentError, match="does not fit"):
        client.sign(keys[spec], MESSAGE, algorithm)
    with pytest.raises(InvalidArgumentError, match="does not fit"):
        client.verify(keys[spec], MESSAGE, b"\x30\x00", algorithm)
    assert client.describe_key(keys[spec]) == before


def test_wrong_usage_is_failed_precondition(client: HsmClient) -> None:
    encryption_key = client.create_key(key_spec="RSA_2048", key_usage="ENCRYPT_DECRYPT").key_id
    aes_key = client.create_key().key_id
    mac_key = client.create_key(key_spec="HMAC_256", key_usage="GENERATE_VERIFY_MAC").key_id
    with pytest.raises(FailedPreconditionError, match="cannot be used for Sign"):
        client.sign(encryption_key, MESSAGE, "RSASSA_PSS_SHA_256")
    for key_id in (aes_key, mac_key):
        with pytest.raises(FailedPreconditionError, match="cannot be used for Sign"):
            client.sign(key_id, MESSAGE, "ECDSA_SHA_256")
        with pytest.raises(FailedPreconditionError, match="cannot be used for GetPublicKey"):
            client.get_public_key(key_id)
    assert client.describe_key(encryption_key).key_state == "ENABLED"


def test_usage_that_does_not_fit_the_spec_is_refused_at_creation(client: HsmClient) -> None:
    for spec, usage in (
        ("EC_P256", "ENCRYPT_DECRYPT"),
        ("HMAC_256", "SIGN_VERIFY"),
        ("AES_256", "SIGN_VERIFY"),
        ("ED25519", "GENERATE_VERIFY_MAC"),
    ):
        with pytest.raises(InvalidArgumentError, match="cannot have usage"):
            client.create_key(key_spec=spec, key_usage=usage)


def test_describe_key_lists_the_algorithms(client: HsmClient, keys: dict[str, str]) -> None:
    metadata = client.describe_key(keys["RSA_2048"])
    assert set(metadata.signing_algorithms) == {a for s, a in CASES if s == "RSA_2048"}
    assert metadata.encryption_algorithms == () and metadata.mac_algorithms == ()
    assert client.describe_key(keys["EC_P384"]).signing_algorithms == ("ECDSA_SHA_384",)
