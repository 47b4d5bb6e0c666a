"""What each key spec is and which algorithms it takes: one table, read everywhere.

The lifecycle, the operations, the backend and the API's advertised algorithm lists all come
from here, so a spec's rules are written once (docs/algorithms.md publishes them).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec

from hsmd.domain import (
    EncryptionAlgorithm,
    Key,
    KeySpec,
    KeyUsage,
    MacAlgorithm,
    SigningAlgorithm,
    WrappingAlgorithm,
)
from hsmd.errors import InvalidArgument

E = EncryptionAlgorithm
S = SigningAlgorithm


class Family(enum.StrEnum):
    AES = "AES"
    RSA = "RSA"
    EC = "EC"
    EDWARDS = "EDWARDS"
    HMAC = "HMAC"

    @property
    def asymmetric(self) -> bool:
        return self in (Family.RSA, Family.EC, Family.EDWARDS)


class SignatureScheme(enum.StrEnum):
    PSS = "PSS"
    PKCS1_V1_5 = "PKCS1_V1_5"
    ECDSA = "ECDSA"
    EDDSA = "EDDSA"


@dataclass(frozen=True)
class Spec:
    family: Family
    bits: int
    usages: frozenset[KeyUsage]
    encryption: tuple[EncryptionAlgorithm, ...] = ()
    signing: tuple[SigningAlgorithm, ...] = ()
    mac: tuple[MacAlgorithm, ...] = ()
    curve_oid: str = ""


@dataclass(frozen=True)
class Hash:
    """A SHA-2 (or SHA-1) function by its hashlib name and output size in bytes."""

    name: str
    size: int


SHA1 = Hash("sha1", 20)
SHA224 = Hash("sha224", 28)
SHA256 = Hash("sha256", 32)
SHA384 = Hash("sha384", 48)
SHA512 = Hash("sha512", 64)


@dataclass(frozen=True)
class Signing:
    scheme: SignatureScheme
    hash: Hash


_RSA_SIGNING = (
    S.RSASSA_PSS_SHA_256,
    S.RSASSA_PSS_SHA_384,
    S.RSASSA_PSS_SHA_512,
    S.RSASSA_PKCS1_V1_5_SHA_256,
    S.RSASSA_PKCS1_V1_5_SHA_384,
    S.RSASSA_PKCS1_V1_5_SHA_512,
)
_RSA_ENCRYPTION = (E.RSAES_OAEP_SHA_1, E.RSAES_OAEP_SHA_256)
_RSA_USAGES = frozenset({KeyUsage.ENCRYPT_DECRYPT, KeyUsage.SIGN_VERIFY})
_SIGN_ONLY = frozenset({KeyUsage.SIGN_VERIFY})
_MAC_ONLY = frozenset({KeyUsage.GENERATE_VERIFY_MAC})


def _rsa(bits: int) -> Spec:
    return Spec(Family.RSA, bits, _RSA_USAGES, _RSA_ENCRYPTION, _RSA_SIGNING)


def _ec(bits: int, oid: str, algorithm: SigningAlgorithm) -> Spec:
    return Spec(Family.EC, bits, _SIGN_ONLY, signing=(algorithm,), curve_oid=oid)


def _hmac(bits: int, algorithm: MacAlgorithm) -> Spec:
    return Spec(Family.HMAC, bits, _MAC_ONLY, mac=(algorithm,))


# EC specs take the ECDSA hash that matches their size, as AWS KMS does.
SPECS: dict[KeySpec, Spec] = {
    KeySpec.AES_256: Spec(
        Family.AES,
        256,
        frozenset({KeyUsage.ENCRYPT_DECRYPT, KeyUsage.WRAP_UNWRAP}),
        (E.SYMMETRIC_DEFAULT,),
    ),
    KeySpec.RSA_2048: _rsa(2048),
    KeySpec.RSA_3072: _rsa(3072),
    KeySpec.RSA_4096: _rsa(4096),
    KeySpec.EC_P256: _ec(256, "1.2.840.10045.3.1.7", S.ECDSA_SHA_256),
    KeySpec.EC_P384: _ec(384, "1.3.132.0.34", S.ECDSA_SHA_384),
    KeySpec.EC_P521: _ec(521, "1.3.132.0.35", S.ECDSA_SHA_512),
    KeySpec.EC_SECP256K1: _ec(256, "1.3.132.0.10", S.ECDSA_SHA_256),
    KeySpec.ED25519: Spec(
        Family.EDWARDS, 256, _SIGN_ONLY, signing=(S.ED25519_SHA_512,), curve_oid="1.3.101.112"
    ),
    KeySpec.HMAC_224: _hmac(224, MacAlgorithm.HMAC_SHA_224),
    KeySpec.HMAC_256: _hmac(256, MacAlgorithm.HMAC_SHA_256),
    KeySpec.HMAC_384: _hmac(384, MacAlgorithm.HMAC_SHA_384),
    KeySpec.HMAC_512: _hmac(512, MacAlgorithm.HMAC_SHA_512),
}

SIGNING: dict[SigningAlgorithm, Signing] = {
    S.RSASSA_PSS_SHA_256: Signing(SignatureScheme.PSS, SHA256),
    S.RSASSA_PSS_SHA_384: Signing(SignatureScheme.PSS, SHA384),
    S.RSASSA_PSS_SHA_512: Signing(SignatureScheme.PSS, SHA512),
    S.RSASSA_PKCS1_V1_5_SHA_256: Signing(SignatureScheme.PKCS1_V1_5, SHA256),
    S.RSASSA_PKCS1_V1_5_SHA_384: Signing(SignatureScheme.PKCS1_V1_5, SHA384),
    S.RSASSA_PKCS1_V1_5_SHA_512: Signing(SignatureScheme.PKCS1_V1_5, SHA512),
    S.ECDSA_SHA_256: Signing(SignatureScheme.ECDSA, SHA256),
    S.ECDSA_SHA_384: Signing(SignatureScheme.ECDSA, SHA384),
    S.ECDSA_SHA_512: Signing(SignatureScheme.ECDSA, SHA512),
    S.ED25519_SHA_512: Signing(SignatureScheme.EDDSA, SHA512),
}

OAEP_HASH: dict[EncryptionAlgorithm, Hash] = {
    E.RSAES_OAEP_SHA_1: SHA1,
    E.RSAES_OAEP_SHA_256: SHA256,
}

# The OAEP each import wrapping algorithm uses (over the key, or over an ephemeral AES key).
WRAPPING_OAEP: dict[WrappingAlgorithm, EncryptionAlgorithm] = {
    WrappingAlgorithm.RSAES_OAEP_SHA_1: E.RSAES_OAEP_SHA_1,
    WrappingAlgorithm.RSA_AES_KEY_WRAP_SHA_1: E.RSAES_OAEP_SHA_1,
    WrappingAlgorithm.RSAES_OAEP_SHA_256: E.RSAES_OAEP_SHA_256,
    WrappingAlgorithm.RSA_AES_KEY_WRAP_SHA_256: E.RSAES_OAEP_SHA_256,
}

MAC_HASH: dict[MacAlgorithm, Hash] = {
    MacAlgorithm.HMAC_SHA_224: SHA224,
    MacAlgorithm.HMAC_SHA_256: SHA256,
    MacAlgorithm.HMAC_SHA_384: SHA384,
    MacAlgorithm.HMAC_SHA_512: SHA512,
}

# The pyca/cryptography curve of each ECDSA spec.
CURVES: dict[KeySpec, ec.EllipticCurve] = {
    KeySpec.EC_P256: ec.SECP256R1(),
    KeySpec.EC_P384: ec.SECP384R1(),
    KeySpec.EC_P521: ec.SECP521R1(),
    KeySpec.EC_SECP256K1: ec.SECP256K1(),
}

# Key pairs GenerateDataKeyPair can make (AWS: no Ed25519 data key pairs).
DATA_KEY_PAIR_SPECS = (
    KeySpec.RSA_2048,
    KeySpec.RSA_3072,
    KeySpec.RSA_4096,
    KeySpec.EC_P256,
    KeySpec.EC_P384,
    KeySpec.EC_P521,
    KeySpec.EC_SECP256K1,
)


@dataclass(frozen=True)
class KeyAlgorithms:
    """The algorithms a key accepts: those of its spec that its usage allows."""

    encryption: tuple[EncryptionAlgorithm, ...]
    signing: tuple[SigningAlgorithm, ...]
    mac: tuple[MacAlgorithm, ...]


def algorithms(spec: KeySpec, usage: KeyUsage) -> KeyAlgorithms:
    info = SPECS[spec]
    return KeyAlgorithms(
        info.encryption if usage is KeyUsage.ENCRYPT_DECRYPT else (),
        info.signing if usage is KeyUsage.SIGN_VERIFY else (),
        info.mac if usage is KeyUsage.GENERATE_VERIFY_MAC else (),
    )


def default_usage(spec: KeySpec) -> KeyUsage:
    """The usage a key gets when CreateKey names none: the spec's only one, else encryption."""
    usages = SPECS[spec].usages
    return next(iter(usages)) if len(usages) == 1 else KeyUsage.ENCRYPT_DECRYPT


def check_usage(spec: KeySpec, usage: KeyUsage) -> None:
    if usage not in SPECS[spec].usages:
        allowed = ", ".join(sorted(SPECS[spec].usages))
        raise InvalidArgument(f"key spec {spec} cannot have usage {usage} (it can have {allowed})")


def check_encryption_algorithm(key: Key, algorithm: EncryptionAlgorithm) -> None:
    if algorithm not in algorithms(key.spec, key.usage).encryption:
        raise InvalidArgument(
            f"encryption algorithm {algorithm} does not fit key {key.key_id} ({key.spec})"
        )


def check_signing_algorithm(key: Key, algorithm: SigningAlgorithm) -> Signing:
    if algorithm not in algorithms(key.spec, key.usage).signing:
        raise InvalidArgument(
            f"signing algorithm {algorithm} does not fit key {key.key_id} ({key.spec})"
        )
    return SIGNING[algorithm]


def check_mac_algorithm(key: Key, algorithm: MacAlgorithm) -> Hash:
    if algorithm not in algorithms(key.spec, key.usage).mac:
        raise InvalidArgument(
            f"MAC algorithm {algorithm} does not fit key {key.key_id} ({key.spec})"
        )
    return MAC_HASH[algorithm]


def oaep_max_plaintext(spec: KeySpec, algorithm: EncryptionAlgorithm) -> int:
    """RFC 8017 §7.1.1: an OAEP plaintext is at most k - 2·hLen - 2 bytes."""
    return SPECS[spec].bits // 8 - 2 * OAEP_HASH[algorithm].size - 2
