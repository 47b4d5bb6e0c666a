"""Byte formats at the token's edge: public keys as SubjectPublicKeyInfo, ECDSA signatures.

PKCS#11 returns ECDSA signatures as r || s and EC points inside a DER OCTET STRING; the API
speaks DER signatures and SPKI public keys. Parsing is strict: pyca/cryptography's DER decoder
(python-pkcs11's helper accepts invalid and rejects valid Wycheproof signatures, DESIGN §9).
"""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from hsmd.domain import KeySpec
from hsmd.keyspecs import CURVES, SPECS


def field_size(spec: KeySpec) -> int:
    """Bytes of one ECDSA signature half (r or s) for an EC spec."""
    return (SPECS[spec].bits + 7) // 8


def ecdsa_raw_to_der(raw: bytes) -> bytes:
    half = len(raw) // 2
    return encode_dss_signature(
        int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
    )


def ecdsa_der_to_raw(der: bytes, size: int) -> bytes | None:
    """r || s for a strict-DER signature, or None if it is not one or r, s do not fit."""
    try:
        r, s = decode_dss_signature(der)
    except ValueError:
        return None
    if not (0 < r < 1 << (8 * size) and 0 < s < 1 << (8 * size)):
        return None
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def rsa_spki(modulus: bytes, public_exponent: bytes) -> bytes:
    numbers = rsa.RSAPublicNumbers(
        int.from_bytes(public_exponent, "big"), int.from_bytes(modulus, "big")
    )
    return _spki(numbers.public_key())


def rsa_numbers(spki: bytes, min_bits: int = 3072) -> tuple[bytes, bytes]:
    """(CKA_MODULUS, CKA_PUBLIC_EXPONENT) of an RSA SPKI of at least min_bits. Raises
    ValueError for anything else."""
    key = serialization.load_der_public_key(spki)
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size < min_bits:
        raise ValueError(f"not an RSA public key of at least {min_bits} bits")
    numbers = key.public_numbers()
    return (
        numbers.n.to_bytes((key.key_size + 7) // 8, "big"),
        numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big"),
    )


def ec_spki(spec: KeySpec, ec_point: bytes) -> bytes:
    """SPKI from CKA_EC_POINT, which holds the point inside a DER OCTET STRING."""
    point = _octet_string(ec_point)
    if spec is KeySpec.ED25519:
        return _spki(ed25519.Ed25519PublicKey.from_public_bytes(point))
    return _spki(ec.EllipticCurvePublicKey.from_encoded_point(CURVES[spec], point))


def _spki(key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _octet_string(der: bytes) -> bytes:
    if len(der) < 2 or der[0] != 0x04:
        raise ValueError("CKA_EC_POINT is not a DER OCTET STRING")
    length, offset = der[1], 2
    if length & 0x80:
        count = length & 0x7F
        length, offset = int.from_bytes(der[2 : 2 + count], "big"), 2 + count
    if offset + length != len(der):
        raise ValueError("CKA_EC_POINT has a wrong length")
    return der[offset:]


def ec_point(spec: KeySpec, spki: bytes | None) -> bytes:
    """CKA_EC_POINT (a DER OCTET STRING of the uncompressed point) from an SPKI of the spec's
    curve. Raises ValueError if there is none, or it is of another key type or curve."""
    if spki is None:
        raise ValueError("an EC private key needs its public key")
    key = serialization.load_der_public_key(spki)
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != CURVES[spec].name:
        raise ValueError(f"the public key is not a {spec} key")
    point = key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return _der_octet_string(point)


def _der_octet_string(content: bytes) -> bytes:
    if len(content) < 0x80:
        return bytes([0x04, len(content)]) + content
    size = (len(content).bit_length() + 7) // 8
    return bytes([0x04, 0x80 | size]) + len(content).to_bytes(size, "big") + content
