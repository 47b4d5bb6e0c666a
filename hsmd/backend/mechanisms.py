"""Our choice of PKCS#11 key types, mechanisms and parameters for each spec and algorithm.

Explicit tables instead of python-pkcs11's defaults (DESIGN §9): AES-GCM, OAEP with the hash the
algorithm names, PSS with MGF1 of the same hash and a salt as long as the hash, PKCS#1 v1.5
with a DigestInfo we build, ECDSA over a digest the daemon computed, pure EdDSA, HMAC.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pkcs11 import MGF, KeyType, Mechanism

from hsmd.domain import EncryptionAlgorithm, KeySpec, MacAlgorithm, SigningAlgorithm
from hsmd.keyspecs import OAEP_HASH, SIGNING, SPECS, Family, SignatureScheme

_HASH_MECHANISMS: dict[str, tuple[Mechanism, MGF]] = {
    "sha1": (Mechanism.SHA_1, MGF.SHA1),
    "sha224": (Mechanism.SHA224, MGF.SHA224),
    "sha256": (Mechanism.SHA256, MGF.SHA256),
    "sha384": (Mechanism.SHA384, MGF.SHA384),
    "sha512": (Mechanism.SHA512, MGF.SHA512),
}

# RFC 8017 §9.2 note 1: the DER DigestInfo prefix of each hash, for PKCS#1 v1.5 signatures.
_DIGEST_INFO: dict[str, bytes] = {
    "sha256": bytes.fromhex("3031300d060960864801650304020105000420"),
    "sha384": bytes.fromhex("3041300d060960864801650304020205000430"),
    "sha512": bytes.fromhex("3051300d060960864801650304020305000440"),
}

KEY_TYPES: dict[Family, KeyType] = {
    Family.AES: KeyType.AES,
    Family.HMAC: KeyType.GENERIC_SECRET,
    Family.RSA: KeyType.RSA,
    Family.EC: KeyType.EC,
    Family.EDWARDS: KeyType.EC_EDWARDS,
}

GENERATION: dict[Family, Mechanism] = {
    Family.AES: Mechanism.AES_KEY_GEN,
    Family.HMAC: Mechanism.GENERIC_SECRET_KEY_GEN,
    Family.RSA: Mechanism.RSA_PKCS_KEY_PAIR_GEN,
    Family.EC: Mechanism.EC_KEY_PAIR_GEN,
    Family.EDWARDS: Mechanism.EC_EDWARDS_KEY_PAIR_GEN,
}

MAC_MECHANISMS: dict[MacAlgorithm, Mechanism] = {
    MacAlgorithm.HMAC_SHA_224: Mechanism.SHA224_HMAC,
    MacAlgorithm.HMAC_SHA_256: Mechanism.SHA256_HMAC,
    MacAlgorithm.HMAC_SHA_384: Mechanism.SHA384_HMAC,
    MacAlgorithm.HMAC_SHA_512: Mechanism.SHA512_HMAC,
}

_SCHEME_MECHANISMS: dict[SignatureScheme, Mechanism] = {
    SignatureScheme.PSS: Mechanism.RSA_PKCS_PSS,
    SignatureScheme.PKCS1_V1_5: Mechanism.RSA_PKCS,
    SignatureScheme.ECDSA: Mechanism.ECDSA,
    SignatureScheme.EDDSA: Mechanism.EDDSA,
}


@dataclass(frozen=True)
class Call:
    """One PKCS#11 operation: the mechanism, its parameter, and the data to give it."""

    mechanism: Mechanism
    param: Any
    data: bytes


def signing_call(algorithm: SigningAlgorithm, data: bytes) -> Call:
    """How to sign or verify `data` (a digest; for EdDSA the message) with this algorithm."""
    signing = SIGNING[algorithm]
    mechanism = _SCHEME_MECHANISMS[signing.scheme]
    if signing.scheme is SignatureScheme.PSS:
        hash_mechanism, mgf = _HASH_MECHANISMS[signing.hash.name]
        return Call(mechanism, (hash_mechanism, mgf, signing.hash.size), data)
    if signing.scheme is SignatureScheme.PKCS1_V1_5:
        return Call(mechanism, None, _DIGEST_INFO[signing.hash.name] + data)
    return Call(mechanism, None, data)


def oaep_param(algorithm: EncryptionAlgorithm) -> tuple[Mechanism, MGF, None]:
    hash_mechanism, mgf = _HASH_MECHANISMS[OAEP_HASH[algorithm].name]
    return hash_mechanism, mgf, None


def required_mechanisms(spec: KeySpec) -> set[Mechanism]:
    """What the library must offer for a spec to be usable at all."""
    info = SPECS[spec]
    needed = {GENERATION[info.family]}
    if info.family is Family.AES:
        needed.add(Mechanism.AES_GCM)
    needed |= {_SCHEME_MECHANISMS[SIGNING[a].scheme] for a in info.signing}
    needed |= {MAC_MECHANISMS[a] for a in info.mac}
    return needed
