"""Self-tests, the FIPS 140 habit: known answers through the real token at start, and a
pairwise consistency test of every new key pair.

At start, before any call is served, the daemon's own token computes AES-256-GCM, HMAC-SHA-256
and AES key wrap (RFC 3394) of fixed inputs, and verifies a fixed ECDSA P-256 and RSA-2048
signature, with session objects made from fixed keys (never stored). An answer that differs
from the one written here stops start-up with the test's name: the library, or what it runs on,
computes wrong. The answers were computed with pyca/cryptography (OpenSSL); RFC 3394 section
4.6 gives the wrap's.

HSMD_SELF_TEST_CORRUPT names a test (or `pairwise-consistency`) whose expected answer is
changed, to show that a failure stops start-up or key creation: for validation labs and the
test suite.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pkcs11 as p11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.mechanisms import GCMParams
from pkcs11.util.ec import encode_named_curve_parameters

from hsmd.errors import StartupRefused

log = logging.getLogger(__name__)

CORRUPT_VARIABLE = "HSMD_SELF_TEST_CORRUPT"
PAIRWISE = "pairwise-consistency"

_MESSAGE = b"hsmd self-test message"
_P256_OID = "1.2.840.10045.3.1.7"


def _corrupted(name: str) -> bool:
    return os.environ.get(CORRUPT_VARIABLE) == name


def _expected(name: str, answer: bytes) -> bytes:
    """The known answer, with its last bit flipped if this test is to fail."""
    if not _corrupted(name):
        return answer
    return answer[:-1] + bytes([answer[-1] ^ 1])


def _secret(session: Any, key_type: KeyType, value: bytes, **rights: bool) -> Any:
    """A session object (not stored) of a fixed secret value, with these capabilities."""
    template = {
        Attribute.CLASS: ObjectClass.SECRET_KEY,
        Attribute.KEY_TYPE: key_type,
        Attribute.TOKEN: False,
        Attribute.VALUE: value,
        **{getattr(Attribute, right.upper()): allowed for right, allowed in rights.items()},
    }
    return session.create_object(template)


def _aes_gcm(session: Any) -> bool:
    key = _secret(session, KeyType.AES, bytes(range(32)), encrypt=True, decrypt=True)
    plaintext = b"hsmd self-test plaintext, 32 B.."
    params = GCMParams(bytes(range(12)), b"hsmd self-test aad")
    sealed = bytes(key.encrypt(plaintext, mechanism=Mechanism.AES_GCM, mechanism_param=params))
    answer = bytes.fromhex(
        "2f71bb7fe596a777eb6ce3eec29d581defb7ee5a841e27081447d6b73d2b2e9c"
        "6e95ef2633b4734402b6d6824a512900"
    )
    opened = bytes(key.decrypt(sealed, mechanism=Mechanism.AES_GCM, mechanism_param=params))
    return sealed == _expected("aes-256-gcm", answer) and opened == plaintext


def _hmac(session: Any) -> bool:
    key = _secret(session, KeyType.GENERIC_SECRET, bytes(range(32, 64)), sign=True, verify=True)
    answer = bytes.fromhex("fb12416e68bb9c74771e38f78c2267dc6f0ade356e8f1b58098109eb239960b2")
    mac = bytes(key.sign(_MESSAGE, mechanism=Mechanism.SHA256_HMAC))
    return mac == _expected("hmac-sha-256", answer)


def _key_wrap(session: Any) -> bool:
    kek = _secret(session, KeyType.AES, bytes(range(32)), wrap=True)  # RFC 3394, 4.6
    target = _secret(
        session,
        KeyType.AES,
        bytes.fromhex("00112233445566778899aabbccddeeff000102030405060708090a0b0c0d0e0f"),
        extractable=True,
        sensitive=False,
    )
    answer = bytes.fromhex(
        "28c9f404c4b810f4cbccb35cfb87f8263f5786e2d80ed326cbc7f0e71a99f43bfb988b9b7a02dd21"
    )
    wrapped = bytes(kek.wrap_key(target, mechanism=Mechanism.AES_KEY_WRAP))
    return wrapped == _expected("aes-key-wrap", answer)


def _ecdsa(session: Any) -> bool:
    public = session.create_object(
        {
            Attribute.CLASS: ObjectClass.PUBLIC_KEY,
            Attribute.KEY_TYPE: KeyType.EC,
            Attribute.TOKEN: False,
            Attribute.VERIFY: True,
            Attribute.EC_PARAMS: encode_named_curve_parameters(_P256_OID),
            Attribute.EC_POINT: _octet_string(bytes.fromhex(_EC_POINT)),
        }
    )
    signature = _expected("ecdsa-p256-verify", bytes.fromhex(_EC_SIGNATURE))
    digest = hashlib.sha256(_MESSAGE).digest()
    return bool(public.verify(digest, signature, mechanism=Mechanism.ECDSA))


def _rsa(session: Any) -> bool:
    public = session.create_object(
        {
            Attribute.CLASS: ObjectClass.PUBLIC_KEY,
            Attribute.KEY_TYPE: KeyType.RSA,
            Attribute.TOKEN: False,
            Attribute.VERIFY: True,
            Attribute.MODULUS: bytes.fromhex(_RSA_MODULUS),
            Attribute.PUBLIC_EXPONENT: b"\x01\x00\x01",
        }
    )
    signature = _expected("rsa-2048-verify", bytes.fromhex(_RSA_SIGNATURE))
    return bool(public.verify(_MESSAGE, signature, mechanism=Mechanism.SHA256_RSA_PKCS))


def _octet_string(data: bytes) -> bytes:
    """DER OCTET STRING of a short value (an EC point), as CKA_EC_POINT holds it."""
    return bytes([0x04, len(data)]) + data


@dataclass(frozen=True)
class KnownAnswer:
    name: str
    run: Callable[[Any], bool]


KNOWN_ANSWERS = (
    KnownAnswer("aes-256-gcm", _aes_gcm),
    KnownAnswer("hmac-sha-256", _hmac),
    KnownAnswer("aes-key-wrap", _key_wrap),
    KnownAnswer("ecdsa-p256-verify", _ecdsa),
    KnownAnswer("rsa-2048-verify", _rsa),
)


def run_known_answers(session: Any) -> list[str]:
    """Runs every known-answer test in the session; returns their names.

    Raises:
        StartupRefused: a test's answer differs, or the library refused it.
    """
    for test in KNOWN_ANSWERS:
        try:
            passed = test.run(session)
        except p11.PKCS11Error as exc:
            raise StartupRefused(
                f"self-test {test.name} failed: the token refused it ({type(exc).__name__});"
                " the PKCS#11 library cannot be trusted to compute"
            ) from None
        if not passed:
            raise StartupRefused(
                f"self-test {test.name} failed: the token's answer differs from the known"
                " answer; the PKCS#11 library (or the machine under it) computes wrong"
            )
    return [test.name for test in KNOWN_ANSWERS]


def pairwise_consistent(public_key: Any, private_key: Any, encrypts: bool, scheme: str) -> bool:
    """Whether a new key pair's halves belong together: the private key's signature verifies
    with the public key (scheme "rsa", "ecdsa" or "eddsa"), or, for an RSA encryption pair,
    what the public key encrypts the private key decrypts."""
    try:
        if encrypts:
            param = (Mechanism.SHA_1, p11.MGF.SHA1, None)
            sealed = bytes(
                public_key.encrypt(
                    _MESSAGE, mechanism=Mechanism.RSA_PKCS_OAEP, mechanism_param=param
                )
            )
            if _corrupted(PAIRWISE):
                sealed = sealed[:-1] + bytes([sealed[-1] ^ 1])
            opened = private_key.decrypt(
                sealed, mechanism=Mechanism.RSA_PKCS_OAEP, mechanism_param=param
            )
            return bytes(opened) == _MESSAGE
        mechanism, data = {
            "rsa": (Mechanism.SHA256_RSA_PKCS, _MESSAGE),
            "ecdsa": (Mechanism.ECDSA, hashlib.sha256(_MESSAGE).digest()),
            "eddsa": (Mechanism.EDDSA, _MESSAGE),
        }[scheme]
        signature = bytes(private_key.sign(data, mechanism=mechanism))
        if _corrupted(PAIRWISE):
            signature = signature[:-1] + bytes([signature[-1] ^ 1])
        return bool(public_key.verify(data, signature, mechanism=mechanism))
    except p11.PKCS11Error:
        return False


_EC_POINT = (
    "04ae6438178cc07f5d9501b76422060a82f7972c49c20a72626dd3f0254d596f53"
    "78726cf50536f0f79b71c741ca67a065b4a7abbd7761886ee1431457d2cd66a3"
)
_EC_SIGNATURE = (
    "7e51cdd328b9b8d2ecdb71d2ea90b75a721c481fa0b2ec915b476fa951c417e3"
    "c7ad3e90834198c18ba2a72580e20fbf2f0f2882fe4b13c063b1490dbea06503"
)
_RSA_MODULUS = (
    "cfe733cb1131b41c2dd237de34040651f9f3ea3fd78013b70a4482db8d508c04"
    "3119af9798b967bd1533849bc21af427b2b97cbb59795b4fac545acb3b7e64e3"
    "503f996b78798374312b397d2ffd72582dc795e2fcc3e421978158437514fb5e"
    "dfe68ccdda75bc3354479fb6027cc9577bfb034bb610b12544c1288d7c51bc28"
    "9e3d5ab4126566126e6f3784c9094277af38a4b73b1679d60b2e6015ba4e275b"
    "3ec504b42d559692ae9e9e09af1b0575d67e2d664aa1c7260d5105a323c33302"
    "13f23d54779565a6caaeaec7fc9dee2cf669170597bb16eb909b58a5cba3a965"
    "29366e7d0ccc8f26c090469924d37ce7645efd1394a836fb627961394ef94f9b"
)
_RSA_SIGNATURE = (
    "10a2ddfcc97f0078814b4659417426492e7ed6c5dfa57b47b7a1741429dadfa4"
    "f904c603232362646c1ff843e2bfbc91f5f7cc78c81b942574ad1c380bc5e134"
    "bb511e580b8015da0744d30ec35e7bd0d96c9c462eed160c5d257b14579e2868"
    "d3f1b343d89f56d299362dfce932faf3aaaa580b4600a3a0885e99e8c9260fd5"
    "e2fa6a17cd0c0797e1aeffe97e87e5d996d377843fab0a3cc75a22d1dc76fde2"
    "2c3351866fcf8609f16503cbec099ddfeaf69bf0c1c8bd7c233e73ac9f720b03"
    "69a1929abfba3feda973ecd78587caa9cfe9c9925bf82c9ca0eda9f1f545f0af"
    "234da22f563ae803caf9eea1c756c01952601dbc4ef6ebe20a09e19759f44ef1"
)
