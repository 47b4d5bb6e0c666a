"""Key material for ImportKeyMaterial, prepared on the client: read from a key file, checked
against the key's spec, and wrapped under the RSA public key of GetParametersForImport.

Pure pyca/cryptography: no daemon, no gRPC. The wrapping algorithms are AWS KMS's, by AWS's
names (the proto's carry a WRAP_ prefix, which only hsmclient.client adds):

- RSAES_OAEP_SHA_1, RSAES_OAEP_SHA_256: RSAES-OAEP (RFC 8017) with MGF1 over the same hash and
  no label, directly over the material. For AES and HMAC keys, which fit: at most
  k - 2*hLen - 2 bytes for a k-byte modulus (214 with RSA_2048 and SHA-1).
- RSA_AES_KEY_WRAP_SHA_1, RSA_AES_KEY_WRAP_SHA_256: a fresh random AES-256 key, wrapped as
  above, followed by the material wrapped under that AES key by AES key wrap with padding
  (RFC 5649): OAEP(aes key), k bytes, then KWP(aes key, material). For any key; the only
  choice for private keys.

The material is the raw key for AES_256 and HMAC_* keys, and PKCS#8 DER for RSA_* and EC_*
private keys, which also travel with their DER SubjectPublicKeyInfo for the daemon to check.
"""

import os
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding

# Each wrapping algorithm: its OAEP hash, and whether the material goes under an AES key.
_WRAPPING: dict[str, tuple[type[hashes.SHA1 | hashes.SHA256], bool]] = {
    "RSAES_OAEP_SHA_1": (hashes.SHA1, False),
    "RSAES_OAEP_SHA_256": (hashes.SHA256, False),
    "RSA_AES_KEY_WRAP_SHA_1": (hashes.SHA1, True),
    "RSA_AES_KEY_WRAP_SHA_256": (hashes.SHA256, True),
}
WRAPPING_ALGORITHMS = tuple(_WRAPPING)
"""The wrapping algorithms wrap_for_import implements, by AWS's names."""

_EPHEMERAL_AES_KEY_BYTES = 32
# The size of the wrapping key that default_wrapping_algorithm assumes: the daemon's default.
_DEFAULT_WRAPPING_KEY_BITS = 2048

# The importable key specs: the raw length of each symmetric one, and the private key each
# asymmetric one needs, as _describe names a key.
_RAW_KEY_BYTES = {"AES_256": 32, "HMAC_224": 28, "HMAC_256": 32, "HMAC_384": 48, "HMAC_512": 64}
_PRIVATE_KEYS = {
    "RSA_2048": "RSA-2048",
    "RSA_3072": "RSA-3072",
    "RSA_4096": "RSA-4096",
    "EC_P256": "EC secp256r1",
    "EC_P384": "EC secp384r1",
    "EC_P521": "EC secp521r1",
    "EC_SECP256K1": "EC secp256k1",
}
IMPORTABLE_KEY_SPECS = (*_RAW_KEY_BYTES, *_PRIVATE_KEYS)
"""The key specs whose material material_from_key_file reads."""


def _oaep(hash_type: type[hashes.SHA1 | hashes.SHA256]) -> padding.OAEP:
    return padding.OAEP(mgf=padding.MGF1(hash_type()), algorithm=hash_type(), label=None)


def _oaep_limit(modulus_bits: int, hash_type: type[hashes.SHA1 | hashes.SHA256]) -> int:
    """The most bytes RSAES-OAEP encrypts under a modulus of this size (RFC 8017, 7.1.1)."""
    return (modulus_bits + 7) // 8 - 2 * hash_type().digest_size - 2


def wrap_for_import(material: bytes, public_key_der: bytes, wrapping_algorithm: str) -> bytes:
    """`material` wrapped under the RSA public key of GetParametersForImport, as
    `wrapping_algorithm` says (see the module docstring); for ImportKeyMaterial's
    encrypted_key_material.

    Raises:
        ValueError: the algorithm is unknown, the public key is not a DER SubjectPublicKeyInfo
            of an RSA key, or the material is empty or too long for RSAES-OAEP.
    """
    if wrapping_algorithm not in _WRAPPING:
        raise ValueError(
            f"unknown wrapping algorithm {wrapping_algorithm!r}"
            f" (expected one of: {', '.join(WRAPPING_ALGORITHMS)})"
        )
    if not material:
        raise ValueError("the key material is empty")
    hash_type, with_aes_key = _WRAPPING[wrapping_algorithm]
    try:
        public_key = serialization.load_der_public_key(public_key_der)
    except (ValueError, UnsupportedAlgorithm) as error:
        raise ValueError(f"the wrapping public key is not a DER public key ({error})") from error
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise ValueError("the wrapping public key is not an RSA key")
    if with_aes_key:
        aes_key = os.urandom(_EPHEMERAL_AES_KEY_BYTES)
        wrapped_aes_key = public_key.encrypt(aes_key, _oaep(hash_type))
        return wrapped_aes_key + aes_key_wrap_with_padding(aes_key, material)
    limit = _oaep_limit(public_key.key_size, hash_type)
    if len(material) > limit:
        raise ValueError(
            f"{len(material)} bytes of key material are too many for {wrapping_algorithm} under"
            f" an RSA-{public_key.key_size} key (at most {limit}); use RSA_AES_KEY_WRAP_SHA_1"
        )
    return public_key.encrypt(material, _oaep(hash_type))


def default_wrapping_algorithm(material: bytes, public_key: bytes | None) -> str:
    """AWS's choice for `material` under the default wrapping key (RSA_2048): RSAES_OAEP_SHA_1
    for a raw key (no `public_key`) that OAEP can carry, else RSA_AES_KEY_WRAP_SHA_1."""
    hash_type, _ = _WRAPPING["RSAES_OAEP_SHA_1"]
    if public_key is None and len(material) <= _oaep_limit(_DEFAULT_WRAPPING_KEY_BITS, hash_type):
        return "RSAES_OAEP_SHA_1"
    return "RSA_AES_KEY_WRAP_SHA_1"


def material_from_key_file(
    key_file: bytes | str | os.PathLike[str], key_spec: str
) -> tuple[bytes, bytes | None]:
    """The import material in a key file (given as its bytes, or its path) for a key of
    `key_spec`, and the DER SubjectPublicKeyInfo of a private key (None for a raw key).

    An AES_256 or HMAC_* key file holds the raw key and nothing else (32, or 28/32/48/64
    bytes). An RSA_* or EC_* key file holds an unencrypted private key, PEM or DER, in PKCS#8,
    PKCS#1 (RSA) or SEC 1 (EC); its material is the PKCS#8 DER of that key.

    Raises:
        ValueError: the spec cannot be imported, or the file does not hold a key of that spec.
        OSError: the file cannot be read.
    """
    data = key_file if isinstance(key_file, bytes) else Path(key_file).read_bytes()
    if key_spec in _RAW_KEY_BYTES:
        expected = _RAW_KEY_BYTES[key_spec]
        if len(data) != expected:
            raise ValueError(
                f"a {key_spec} key file holds exactly {expected} raw bytes (not hex, base64 or"
                f" PEM); this one has {len(data)}"
            )
        return data, None
    if key_spec not in _PRIVATE_KEYS:
        raise ValueError(
            f"{key_spec!r} keys cannot be imported (importable: {', '.join(IMPORTABLE_KEY_SPECS)})"
        )
    private_key = _private_key(data)
    if _describe(private_key) != _PRIVATE_KEYS[key_spec]:
        raise ValueError(
            f"{key_spec} needs a private key of type {_PRIVATE_KEYS[key_spec]}; the key file"
            f" holds one of type {_describe(private_key)}"
        )
    pkcs8 = private_key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_key = private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pkcs8, public_key


def _private_key(data: bytes) -> PrivateKeyTypes:
    """The private key in a PEM or DER key file.

    Raises:
        ValueError: the file holds no unencrypted private key that cryptography reads.
    """
    pem = data.lstrip().startswith(b"-----BEGIN")
    if pem and b"PUBLIC KEY-----" in data:
        raise ValueError("the key file holds a public key; importing needs the private key")
    load = serialization.load_pem_private_key if pem else serialization.load_der_private_key
    try:
        return load(data, password=None)
    except TypeError as error:  # cryptography's word for "encrypted, and no password given"
        raise ValueError(
            "the key file is encrypted; decrypt it first (openssl pkey -in KEY -out PLAIN)"
        ) from error
    except (ValueError, UnsupportedAlgorithm) as error:
        raise ValueError(f"the key file holds no PEM or DER private key ({error})") from error


def _describe(key: PrivateKeyTypes) -> str:
    """The kind of a private key as _PRIVATE_KEYS names them: "RSA-2048", "EC secp256r1"."""
    if isinstance(key, rsa.RSAPrivateKey):
        return f"RSA-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return f"EC {key.curve.name}"
    return type(key).__name__.removesuffix("PrivateKey")
