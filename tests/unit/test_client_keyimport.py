"""hsmclient.keyimport: key files read and checked against their spec, and material wrapped as
the import wrapping algorithms say, shown by unwrapping it again with the RSA private key.

`unwrap_import` is the daemon's half of each algorithm, written here apart from the module
under test; test_client_rpc.py's fake daemon imports with it too.
"""

import functools
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap_with_padding,
)
from hsmclient import keyimport

from hsmd.v1 import resources_pb2

MATERIAL = bytes(range(32))


@functools.cache
def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    """One RSA key of each size for the whole run: generating them is slow."""
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def spki(private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# Each import wrapping algorithm, by AWS's name: its OAEP hash, and whether an AES key wraps
# the material. The module's own table is what these tests check, so this one is separate.
ALGORITHMS = {
    "RSAES_OAEP_SHA_1": (hashes.SHA1, False),
    "RSAES_OAEP_SHA_256": (hashes.SHA256, False),
    "RSA_AES_KEY_WRAP_SHA_1": (hashes.SHA1, True),
    "RSA_AES_KEY_WRAP_SHA_256": (hashes.SHA256, True),
}


def unwrap_import(private_key: rsa.RSAPrivateKey, algorithm: str, wrapped: bytes) -> bytes:
    """The key material in `wrapped`, recovered as the daemon does for `algorithm`.

    Raises:
        ValueError: OAEP decryption failed.
        InvalidUnwrap: the AES key wrap (RFC 5649) does not open.
    """
    hash_type, with_aes_key = ALGORITHMS[algorithm]
    oaep = padding.OAEP(mgf=padding.MGF1(hash_type()), algorithm=hash_type(), label=None)
    if not with_aes_key:
        return private_key.decrypt(wrapped, oaep)
    modulus_bytes = private_key.key_size // 8
    aes_key = private_key.decrypt(wrapped[:modulus_bytes], oaep)
    assert len(aes_key) == 32  # AES-256
    return aes_key_unwrap_with_padding(aes_key, wrapped[modulus_bytes:])


def pkcs8(private_key) -> bytes:
    return private_key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


# --- names --------------------------------------------------------------------------------------


def test_the_algorithms_are_the_protos_without_their_prefix() -> None:
    proto = resources_pb2.WrappingAlgorithm.keys()
    assert keyimport.WRAPPING_ALGORITHMS == tuple(ALGORITHMS)
    assert [f"WRAP_{name}" for name in keyimport.WRAPPING_ALGORITHMS] == proto[1:]


def test_the_importable_specs_are_key_specs() -> None:
    assert set(keyimport.IMPORTABLE_KEY_SPECS) <= set(resources_pb2.KeySpec.keys())
    assert set(resources_pb2.KeySpec.keys()) - set(keyimport.IMPORTABLE_KEY_SPECS) == {
        "KEY_SPEC_UNSPECIFIED",
        "ED25519",
    }


# --- wrap_for_import ----------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("bits", [2048, 3072])
@pytest.mark.parametrize("material", [MATERIAL, MATERIAL[:28], bytes(range(64)), b"\x01"])
def test_wrapped_material_unwraps_with_the_private_key(
    algorithm: str, bits: int, material: bytes
) -> None:
    wrapped = keyimport.wrap_for_import(material, spki(rsa_key(bits)), algorithm)
    assert unwrap_import(rsa_key(bits), algorithm, wrapped) == material


@pytest.mark.parametrize(
    ("algorithm", "other"),
    [
        ("RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"),
        ("RSAES_OAEP_SHA_256", "RSAES_OAEP_SHA_1"),
        ("RSA_AES_KEY_WRAP_SHA_1", "RSA_AES_KEY_WRAP_SHA_256"),
        ("RSA_AES_KEY_WRAP_SHA_256", "RSA_AES_KEY_WRAP_SHA_1"),
    ],
)
def test_oaep_uses_the_hash_the_algorithm_names(algorithm: str, other: str) -> None:
    wrapped = keyimport.wrap_for_import(MATERIAL, spki(rsa_key()), algorithm)
    with pytest.raises(ValueError, match="Decryption failed"):
        unwrap_import(rsa_key(), other, wrapped)


@pytest.mark.parametrize(
    ("material", "length"),
    [(MATERIAL, 256 + 40), (MATERIAL[:28], 256 + 40), (MATERIAL[:1], 256 + 16)],
)
def test_rsa_aes_key_wrap_is_one_rsa_block_then_rfc_5649(material: bytes, length: int) -> None:
    """RFC 5649 pads to 8 bytes and adds 8; 28 bytes, not a multiple of 8, rule out RFC 3394."""
    wrapped = keyimport.wrap_for_import(material, spki(rsa_key()), "RSA_AES_KEY_WRAP_SHA_1")
    assert len(wrapped) == length
    oaep = padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None)
    aes_key = rsa_key().decrypt(wrapped[:256], oaep)
    assert aes_key_unwrap_with_padding(aes_key, wrapped[256:]) == material
    with pytest.raises(InvalidUnwrap):
        aes_key_unwrap_with_padding(aes_key, wrapped[256:-1])


def test_rsa_aes_key_wrap_takes_a_fresh_aes_key_each_time() -> None:
    wrap = functools.partial(
        keyimport.wrap_for_import, MATERIAL, spki(rsa_key()), "RSA_AES_KEY_WRAP_SHA_256"
    )
    first, second = wrap(), wrap()
    assert first[256:] != second[256:]  # RFC 5649 is deterministic: the AES keys differ


def test_rsaes_oaep_is_one_rsa_block() -> None:
    for bits in (2048, 3072):
        wrapped = keyimport.wrap_for_import(MATERIAL, spki(rsa_key(bits)), "RSAES_OAEP_SHA_256")
        assert len(wrapped) == bits // 8


def test_a_private_key_goes_only_under_an_aes_key() -> None:
    material = pkcs8(rsa_key())
    wrapped = keyimport.wrap_for_import(material, spki(rsa_key()), "RSA_AES_KEY_WRAP_SHA_1")
    assert unwrap_import(rsa_key(), "RSA_AES_KEY_WRAP_SHA_1", wrapped) == material
    with pytest.raises(ValueError, match=r"too many .* \(at most 214\); use RSA_AES_KEY_WRAP"):
        keyimport.wrap_for_import(material, spki(rsa_key()), "RSAES_OAEP_SHA_1")


@pytest.mark.parametrize(
    ("algorithm", "bits", "limit"),
    [("RSAES_OAEP_SHA_1", 2048, 214), ("RSAES_OAEP_SHA_256", 2048, 190)],
)
def test_rsaes_oaep_takes_up_to_its_limit(algorithm: str, bits: int, limit: int) -> None:
    public_key = spki(rsa_key(bits))
    wrapped = keyimport.wrap_for_import(bytes(limit), public_key, algorithm)
    assert unwrap_import(rsa_key(bits), algorithm, wrapped) == bytes(limit)
    with pytest.raises(ValueError, match=f"{limit + 1} bytes of key material are too many"):
        keyimport.wrap_for_import(bytes(limit + 1), public_key, algorithm)


@pytest.mark.parametrize(
    ("material", "public_key", "algorithm", "message"),
    [
        (MATERIAL, "rsa", "WRAP_RSAES_OAEP_SHA_1", "unknown wrapping algorithm"),
        (MATERIAL, "rsa", "RSAES_PKCS1_V1_5", "expected one of: RSAES_OAEP_SHA_1, "),
        (MATERIAL, "rsa", "rsaes_oaep_sha_1", "unknown wrapping algorithm"),
        (b"", "rsa", "RSA_AES_KEY_WRAP_SHA_1", "empty"),
        (MATERIAL, "ec", "RSAES_OAEP_SHA_1", "not an RSA key"),
        (MATERIAL, "garbage", "RSAES_OAEP_SHA_1", "not a DER public key"),
        (MATERIAL, "pem", "RSAES_OAEP_SHA_1", "not a DER public key"),
    ],
)
def test_wrap_for_import_refuses(
    material: bytes, public_key: str, algorithm: str, message: str
) -> None:
    keys = {
        "rsa": spki(rsa_key()),
        "ec": spki(ec.generate_private_key(ec.SECP256R1())),
        "garbage": b"\x30\x03abc",
        "pem": rsa_key()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
    }
    with pytest.raises(ValueError, match=message):
        keyimport.wrap_for_import(material, keys[public_key], algorithm)


@pytest.mark.parametrize(
    ("material", "public_key", "algorithm"),
    [
        (MATERIAL, None, "RSAES_OAEP_SHA_1"),
        (bytes(64), None, "RSAES_OAEP_SHA_1"),
        (bytes(214), None, "RSAES_OAEP_SHA_1"),
        (bytes(215), None, "RSA_AES_KEY_WRAP_SHA_1"),
        (bytes(100), b"spki", "RSA_AES_KEY_WRAP_SHA_1"),
    ],
)
def test_the_default_algorithm_is_oaep_for_a_raw_key_that_fits(
    material: bytes, public_key: bytes | None, algorithm: str
) -> None:
    assert keyimport.default_wrapping_algorithm(material, public_key) == algorithm


# --- material_from_key_file: raw keys -----------------------------------------------------------

RAW_SIZES = {"AES_256": 32, "HMAC_224": 28, "HMAC_256": 32, "HMAC_384": 48, "HMAC_512": 64}


@pytest.mark.parametrize(("key_spec", "size"), RAW_SIZES.items())
def test_a_raw_key_file_is_its_material(key_spec: str, size: int, tmp_path: Path) -> None:
    key = bytes(range(size))
    assert keyimport.material_from_key_file(key, key_spec) == (key, None)
    (tmp_path / "key.bin").write_bytes(key)
    for path in (tmp_path / "key.bin", str(tmp_path / "key.bin")):
        assert keyimport.material_from_key_file(path, key_spec) == (key, None)


@pytest.mark.parametrize(("key_spec", "size"), RAW_SIZES.items())
@pytest.mark.parametrize("change", [-1, 1, "hex", "newline"])
def test_a_raw_key_file_of_another_size_is_refused(
    key_spec: str, size: int, change: int | str
) -> None:
    key = bytes(size)
    if isinstance(change, int):
        key = bytes(size + change)
    else:
        key = key.hex().encode() if change == "hex" else key + b"\n"
    message = f"a {key_spec} key file holds exactly {size} raw bytes .*; this one has {len(key)}"
    with pytest.raises(ValueError, match=message):
        keyimport.material_from_key_file(key, key_spec)


# --- material_from_key_file: private keys -------------------------------------------------------

CURVES = {
    "EC_P256": ec.SECP256R1,
    "EC_P384": ec.SECP384R1,
    "EC_P521": ec.SECP521R1,
    "EC_SECP256K1": ec.SECP256K1,
}


@functools.cache
def private_key(key_spec: str) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    if key_spec in CURVES:
        return ec.generate_private_key(CURVES[key_spec]())
    return rsa_key(int(key_spec.removeprefix("RSA_")))


FORMATS = [
    (serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8),
    (serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL),
    (serialization.Encoding.DER, serialization.PrivateFormat.PKCS8),
    (serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL),
]


@pytest.mark.parametrize("key_spec", ["RSA_2048", "RSA_3072", *CURVES])
@pytest.mark.parametrize(("encoding", "private_format"), FORMATS)
def test_a_private_key_file_gives_pkcs8_and_its_public_key(
    key_spec: str, encoding, private_format
) -> None:
    """PKCS#8, PKCS#1 (RSA) or SEC 1 (EC), PEM or DER: the material is always PKCS#8 DER."""
    key = private_key(key_spec)
    key_file = key.private_bytes(encoding, private_format, serialization.NoEncryption())
    material, public_key = keyimport.material_from_key_file(key_file, key_spec)
    assert material == pkcs8(key)
    assert serialization.load_der_private_key(material, None).private_numbers() == (
        key.private_numbers()
    )
    assert public_key == spki(key)


def test_a_private_key_file_is_read_from_its_path(tmp_path: Path) -> None:
    key = private_key("EC_P256")
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    assert keyimport.material_from_key_file(tmp_path / "key.pem", "EC_P256") == (
        pkcs8(key),
        spki(key),
    )
    with pytest.raises(FileNotFoundError):
        keyimport.material_from_key_file(tmp_path / "absent.pem", "EC_P256")


@pytest.mark.parametrize(
    ("key_spec", "holds", "kind"),
    [
        ("RSA_2048", "RSA_3072", "RSA-3072"),
        ("RSA_3072", "RSA_2048", "RSA-2048"),
        ("EC_P256", "EC_P384", "EC secp384r1"),
        ("EC_P256", "EC_SECP256K1", "EC secp256k1"),
        ("EC_P521", "RSA_2048", "RSA-2048"),
        ("RSA_2048", "EC_P256", "EC secp256r1"),
        ("EC_P256", "ED25519", "Ed25519"),
    ],
)
def test_a_private_key_of_another_kind_is_refused(key_spec: str, holds: str, kind: str) -> None:
    key = ed25519.Ed25519PrivateKey.generate() if holds == "ED25519" else private_key(holds)
    expected = {
        "RSA_2048": "RSA-2048",
        "RSA_3072": "RSA-3072",
        "EC_P256": "EC secp256r1",
        "EC_P521": "EC secp521r1",
    }[key_spec]
    with pytest.raises(
        ValueError,
        match=f"^{key_spec} needs a private key of type {expected}; the key file holds one"
        f" of type {kind}$",
    ):
        keyimport.material_from_key_file(pkcs8(key), key_spec)


def test_an_encrypted_private_key_is_refused() -> None:
    key_file = private_key("EC_P256").private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    with pytest.raises(ValueError, match="the key file is encrypted; decrypt it first"):
        keyimport.material_from_key_file(key_file, "EC_P256")


@pytest.mark.parametrize(
    ("key_file", "message"),
    [
        (
            private_key("EC_P256")
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            "holds a public key; importing needs the private key",
        ),
        (bytes(32), "holds no PEM or DER private key"),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "no PEM or DER"),
        (spki(rsa_key()), "holds no PEM or DER private key"),
    ],
)
def test_a_file_without_a_private_key_is_refused(key_file: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        keyimport.material_from_key_file(key_file, "EC_P256")


@pytest.mark.parametrize("key_spec", ["ED25519", "AES_128", "KEY_SPEC_UNSPECIFIED", "rsa_2048"])
def test_a_spec_that_cannot_be_imported_is_refused(key_spec: str) -> None:
    with pytest.raises(ValueError, match=f"'{key_spec}' keys cannot be imported .*AES_256, HMAC"):
        keyimport.material_from_key_file(pkcs8(private_key("EC_P256")), key_spec)
