"""Wycheproof vectors through the backend paths the daemon uses for Verify, Decrypt and VerifyMac.

Each vector key is loaded once into one tenant token as a session object with a random CKA_ID,
then the backend's own methods run every case: `verify` (with its strict DER codec for ECDSA),
`rsa_decrypt`, and `mac` + `hmac.compare_digest` exactly as hsmd/ops/mac.py does. Keys are
created through the tenant's backend session directly because the API has no way to import a
public key (nor an HMAC or RSA key in clear); what is under test is the verify, decrypt and MAC
path, which is the same whatever created the object. SoftHSM2 accepts every vector key; a
refusal would fail the case, never skip it.

What runs, per file (counts are asserted in test_every_file_runs_its_expected_cases):

- ECDSA P-256 DER: all 484 cases, DER parsed by hsmd.backend.encoding.
- ECDSA P-256 P1363: all 262; r||s becomes DER through a strict adapter (exactly 64 bytes, or
  the case must be invalid), then the same `verify`.
- RSA PKCS#1 v1.5 2048/SHA-256: all 259. The one `acceptable` case (MissingNull) is rejected:
  the backend builds the DigestInfo with its NULL and the token compares the whole block; that
  policy is asserted.
- RSA-PSS sLen=32: all 108 with RSASSA_PSS_SHA_256 (salt = hash length).
- RSA-PSS sLen=0: no algorithm of ours uses salt 0, so the file's verdicts do not apply. All
  103 cases still run with RSASSA_PSS_SHA_256, to show it accepts exactly the signatures whose
  salt is 32 bytes (one: tc69, "s_len changed to 32", invalid in this file) and rejects the
  rest, the 61 valid salt-0 signatures included; a reference EMSA-PSS decoder here gives the
  salt length, and is itself checked against both files' verdicts.
- RSA-OAEP SHA-256/MGF1-SHA-256: the 29 cases without a label match RSAES_OAEP_SHA_256. The 8
  with a label (EncryptionWithLabel) cannot be expressed: the API has no OAEP label. They run
  to show they never decrypt. SoftHSM2 2.6.1 has no OAEP-SHA-256, so when capabilities() lacks
  it every case must raise Unimplemented (never a plaintext) and the notes must say why.
- RSA-OAEP SHA-256/MGF1-SHA-1: matches none of our algorithms (RSAES_OAEP_SHA_1 uses SHA-1 for
  both). Both OAEP files instead run under RSAES_OAEP_SHA_1, the OAEP the token has, where no
  case may decrypt and every one, malformed sizes included, must be DecryptionFailed.
- HMAC-SHA256: the 84 full-tag cases with keys of 256 or 520 bits run as VerifyMac does. The 84
  truncated-tag (128-bit) cases are outside the API (VerifyMac takes only full tags): they must
  be rejected, a valid one being exactly a prefix of our MAC. The 6 cases with 128-bit keys
  cannot run: SoftHSM2 refuses HMAC keys under 256 bits (CKR_KEY_SIZE_RANGE), and our HMAC_256
  keys are always 32 bytes; they must fail that way or give the right tag, never a wrong one.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11.util.ec import encode_named_curve_parameters

from hsmd.backend.api import Capabilities
from hsmd.backend.lanes import Lane
from hsmd.backend.pkcs11_backend import Pkcs11Backend
from hsmd.domain import EncryptionAlgorithm, KeySpec, MacAlgorithm, SigningAlgorithm
from hsmd.errors import BackendError, DecryptionFailed, Unimplemented
from hsmd.keyspecs import SPECS
from tests.vectors import wycheproof

ECDSA_DER = "ecdsa_secp256r1_sha256_test.json"
ECDSA_P1363 = "ecdsa_secp256r1_sha256_p1363_test.json"
RSA_PKCS1 = "rsa_signature_2048_sha256_test.json"
RSA_PSS_32 = "rsa_pss_2048_sha256_mgf1_32_test.json"
RSA_PSS_0 = "rsa_pss_2048_sha256_mgf1_0_test.json"
OAEP_SHA256 = "rsa_oaep_2048_sha256_mgf1sha256_test.json"
OAEP_MGF1_SHA1 = "rsa_oaep_2048_sha256_mgf1sha1_test.json"
HMAC_SHA256 = "hmac_sha256_test.json"

P256_FIELD_SIZE = 32
SHA256_SIZE = 32
HMAC_MIN_KEY_BITS = 256  # SoftHSM2's minimum for CKM_SHA256_HMAC keys
HMAC_FULL_TAG_BITS = 256


Keep = Callable[[dict[str, Any], dict[str, Any]], bool]  # (test group, test case) -> run it?


def _cases(name: str, prefix: str, keep: Keep = lambda group, case: True) -> list[Any]:
    """pytest params (group, case) named "<prefix>-tc<tcId>" so a failure names its vector."""
    return [
        pytest.param(group, case, id=f"{prefix}-tc{case['tcId']}")
        for group in wycheproof(name)["testGroups"]
        for case in group["tests"]
        if keep(group, case)
    ]


def _labelled(group: dict[str, Any], case: dict[str, Any]) -> bool:
    return bool(case["label"])


def _full_tag(group: dict[str, Any], case: dict[str, Any]) -> bool:
    return group["keySize"] >= HMAC_MIN_KEY_BITS and group["tagSize"] == HMAC_FULL_TAG_BITS


def _truncated_tag(group: dict[str, Any], case: dict[str, Any]) -> bool:
    return group["keySize"] >= HMAC_MIN_KEY_BITS and group["tagSize"] < HMAC_FULL_TAG_BITS


def _short_key(group: dict[str, Any], case: dict[str, Any]) -> bool:
    return group["keySize"] < HMAC_MIN_KEY_BITS


ECDSA_DER_CASES = _cases(ECDSA_DER, "ecdsa-der")
ECDSA_P1363_CASES = _cases(ECDSA_P1363, "ecdsa-p1363")
RSA_PKCS1_CASES = _cases(RSA_PKCS1, "rsa-pkcs1")
RSA_PSS_32_CASES = _cases(RSA_PSS_32, "rsa-pss-s32")
RSA_PSS_0_CASES = _cases(RSA_PSS_0, "rsa-pss-s0")
OAEP_CASES = _cases(OAEP_SHA256, "oaep-sha256", lambda g, t: not _labelled(g, t))
OAEP_LABEL_CASES = _cases(OAEP_SHA256, "oaep-sha256-label", _labelled)
OAEP_MISMATCH_CASES = _cases(OAEP_SHA256, "oaep-sha256-as-sha1") + _cases(
    OAEP_MGF1_SHA1, "oaep-mgf1sha1-as-sha1"
)
HMAC_CASES = _cases(HMAC_SHA256, "hmac", _full_tag)
HMAC_TRUNCATED_CASES = _cases(HMAC_SHA256, "hmac-truncated", _truncated_tag)
HMAC_SHORT_KEY_CASES = _cases(HMAC_SHA256, "hmac-short-key", _short_key)


class VectorKeys:
    """Token objects for vector keys in one tenant's token, created once per key."""

    def __init__(self, backend: Pkcs11Backend, tenant: str) -> None:
        self.backend = backend
        self.tenant = tenant
        self._ids: dict[Any, bytes] = {}

    def _object(self, cache_key: Any, template: dict[Any, Any]) -> bytes:
        object_id = self._ids.get(cache_key)
        if object_id is None:
            object_id = secrets.token_bytes(16)
            template = {Attribute.ID: object_id, Attribute.TOKEN: False, **template}
            # A session object, on a session the backend leases (it lives as long as that
            # session, which stays open while the token is attached).
            with self.backend._tokens.lease(self.tenant, Lane.FAST) as lease:
                lease.session.create_object(template)
            self._ids[cache_key] = object_id
        return object_id

    def ec_public(self, group: dict[str, Any]) -> bytes:
        key = group["publicKey"]
        assert key["curve"] == "secp256r1" and group["sha"] == "SHA-256"
        point = bytes.fromhex(key["uncompressed"])
        return self._object(
            ("ec", point),
            {
                Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                Attribute.KEY_TYPE: KeyType.EC,
                Attribute.VERIFY: True,
                Attribute.ENCRYPT: False,
                Attribute.EC_PARAMS: encode_named_curve_parameters(
                    SPECS[KeySpec.EC_P256].curve_oid
                ),
                Attribute.EC_POINT: _der_octet_string(point),
            },
        )

    def rsa_public(self, group: dict[str, Any]) -> bytes:
        key = group["publicKey"]
        assert group["keySize"] == 2048 and group["sha"] == "SHA-256"
        modulus, exponent = _integer(key["modulus"]), _integer(key["publicExponent"])
        return self._object(
            ("rsa", modulus, exponent),
            {
                Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                Attribute.KEY_TYPE: KeyType.RSA,
                Attribute.VERIFY: True,
                Attribute.ENCRYPT: False,
                Attribute.MODULUS: modulus,
                Attribute.PUBLIC_EXPONENT: exponent,
            },
        )

    def rsa_private(self, group: dict[str, Any]) -> bytes:
        key = group["privateKey"]
        assert group["keySize"] == 2048
        parts = {
            Attribute.MODULUS: "modulus",
            Attribute.PUBLIC_EXPONENT: "publicExponent",
            Attribute.PRIVATE_EXPONENT: "privateExponent",
            Attribute.PRIME_1: "prime1",
            Attribute.PRIME_2: "prime2",
            Attribute.EXPONENT_1: "exponent1",
            Attribute.EXPONENT_2: "exponent2",
            Attribute.COEFFICIENT: "coefficient",
        }
        template: dict[Any, Any] = {
            attribute: _integer(key[name]) for attribute, name in parts.items()
        }
        template.update(
            {
                Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                Attribute.KEY_TYPE: KeyType.RSA,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.DECRYPT: True,
                Attribute.SIGN: False,
                Attribute.UNWRAP: False,
            }
        )
        return self._object(("rsa-private", template[Attribute.MODULUS]), template)

    def hmac(self, case: dict[str, Any]) -> bytes:
        value = bytes.fromhex(case["key"])
        return self._object(
            ("hmac", value),
            {
                Attribute.CLASS: ObjectClass.SECRET_KEY,
                Attribute.KEY_TYPE: KeyType.GENERIC_SECRET,
                Attribute.VALUE: value,
                Attribute.SIGN: True,
                Attribute.VERIFY: True,
                Attribute.ENCRYPT: False,
                Attribute.DECRYPT: False,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
            },
        )

    def capabilities(self) -> Capabilities:
        return self.backend.capabilities()


@pytest.fixture(scope="module")
def keys(backend: Pkcs11Backend) -> Iterator[VectorKeys]:
    """One tenant token for the whole module, so each vector key is created only once."""
    tenant = "wp" + secrets.token_hex(5)
    backend.attach_token(tenant, backend.ensure_token(tenant))
    yield VectorKeys(backend, tenant)


def _integer(hex_string: str) -> bytes:
    """A PKCS#11 big integer: big-endian without the sign byte Wycheproof's hex carries."""
    value = int(hex_string, 16)
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


def _der_octet_string(data: bytes) -> bytes:
    """CKA_EC_POINT: the point inside a DER OCTET STRING (short form; a P-256 point is 65 B)."""
    assert len(data) < 0x80
    return bytes([0x04, len(data)]) + data


def _expected(case: dict[str, Any]) -> bool:
    assert case["result"] in ("valid", "invalid"), case["result"]
    return case["result"] == "valid"


def _digest(case: dict[str, Any]) -> bytes:
    """Verify(DIGEST) input: the SHA-256 the daemon computes from a RAW message."""
    return hashlib.sha256(bytes.fromhex(case["msg"])).digest()


def _p1363_to_der(signature: bytes) -> bytes | None:
    """r || s as DER, for exactly 2 x 32 bytes; None for any other size (a malformed input)."""
    if len(signature) != 2 * P256_FIELD_SIZE:
        return None
    r = int.from_bytes(signature[:P256_FIELD_SIZE], "big")
    s = int.from_bytes(signature[P256_FIELD_SIZE:], "big")
    return encode_dss_signature(r, s)


def _mgf1_sha256(seed: bytes, length: int) -> bytes:
    blocks = (length + SHA256_SIZE - 1) // SHA256_SIZE
    return b"".join(
        hashlib.sha256(seed + counter.to_bytes(4, "big")).digest() for counter in range(blocks)
    )[:length]


def _pss_salt_length(public_key: dict[str, Any], digest: bytes, signature: bytes) -> int | None:
    """The salt length if `signature` is EMSA-PSS (SHA-256, MGF1-SHA-256) of `digest`, else None.

    RFC 8017 §8.1.2 and §9.1.2 in plain integers: an oracle independent of the token.
    """
    modulus, exponent = int(public_key["modulus"], 16), int(public_key["publicExponent"], 16)
    value = int.from_bytes(signature, "big")
    if len(signature) != (modulus.bit_length() + 7) // 8 or value >= modulus:
        return None
    em_bits = modulus.bit_length() - 1
    em_len = (em_bits + 7) // 8
    message = pow(value, exponent, modulus)
    if message >> (8 * em_len):
        return None
    em = message.to_bytes(em_len, "big")
    masked_db, h = em[: em_len - SHA256_SIZE - 1], em[em_len - SHA256_SIZE - 1 : -1]
    top_mask = 0xFF >> (8 * em_len - em_bits)
    if em[-1] != 0xBC or masked_db[0] & ~top_mask & 0xFF:
        return None
    db = bytes(a ^ b for a, b in zip(masked_db, _mgf1_sha256(h, len(masked_db)), strict=True))
    db = bytes([db[0] & top_mask]) + db[1:]
    padding = len(db) - len(db.lstrip(b"\x00"))
    if padding == len(db) or db[padding] != 0x01:
        return None
    salt = db[padding + 1 :]
    if hashlib.sha256(bytes(8) + digest + salt).digest() != h:
        return None
    return len(salt)


# ECDSA


@pytest.mark.parametrize(("group", "case"), ECDSA_DER_CASES)
def test_ecdsa_p256_der(keys: VectorKeys, group: dict[str, Any], case: dict[str, Any]) -> None:
    object_id = keys.ec_public(group)
    verdict = keys.backend.verify(
        keys.tenant,
        object_id,
        KeySpec.EC_P256,
        SigningAlgorithm.ECDSA_SHA_256,
        _digest(case),
        bytes.fromhex(case["sig"]),
    )
    assert verdict is _expected(case), case["comment"]


@pytest.mark.parametrize(("group", "case"), ECDSA_P1363_CASES)
def test_ecdsa_p256_p1363(keys: VectorKeys, group: dict[str, Any], case: dict[str, Any]) -> None:
    object_id = keys.ec_public(group)
    der = _p1363_to_der(bytes.fromhex(case["sig"]))
    if der is None:
        assert not _expected(case), "a valid P1363 signature must be 64 bytes"
        return
    verdict = keys.backend.verify(
        keys.tenant, object_id, KeySpec.EC_P256, SigningAlgorithm.ECDSA_SHA_256, _digest(case), der
    )
    assert verdict is _expected(case), case["comment"]


# RSA signatures

# The daemon's answer to Wycheproof's `acceptable` PKCS#1 v1.5 cases (MissingNull): reject.
RSA_PKCS1_ACCEPTABLE_POLICY = False


def _rsa_verify(
    keys: VectorKeys, group: dict[str, Any], case: dict[str, Any], algorithm: SigningAlgorithm
) -> bool:
    return keys.backend.verify(
        keys.tenant,
        keys.rsa_public(group),
        KeySpec.RSA_2048,
        algorithm,
        _digest(case),
        bytes.fromhex(case["sig"]),
    )


@pytest.mark.parametrize(("group", "case"), RSA_PKCS1_CASES)
def test_rsa_pkcs1_v1_5_sha256(
    keys: VectorKeys,
    group: dict[str, Any],
    case: dict[str, Any],
    record_property: Callable[[str, object], None],
) -> None:
    verdict = _rsa_verify(keys, group, case, SigningAlgorithm.RSASSA_PKCS1_V1_5_SHA_256)
    if case["result"] == "acceptable":
        record_property("acceptable_verdict", verdict)
        assert verdict is RSA_PKCS1_ACCEPTABLE_POLICY, "acceptable cases get one documented policy"
        return
    assert verdict is _expected(case), case["comment"]


@pytest.mark.parametrize(("group", "case"), RSA_PSS_32_CASES)
def test_rsa_pss_sha256_salt_32(
    keys: VectorKeys, group: dict[str, Any], case: dict[str, Any]
) -> None:
    assert (group["mgfSha"], group["sLen"]) == ("SHA-256", SHA256_SIZE)
    salt = _pss_salt_length(group["publicKey"], _digest(case), bytes.fromhex(case["sig"]))
    assert (salt == SHA256_SIZE) is _expected(case), "the reference decoder disagrees"
    verdict = _rsa_verify(keys, group, case, SigningAlgorithm.RSASSA_PSS_SHA_256)
    assert verdict is _expected(case), case["comment"]


@pytest.mark.parametrize(("group", "case"), RSA_PSS_0_CASES)
def test_rsa_pss_sha256_accepts_no_salt_0_signature(
    keys: VectorKeys, group: dict[str, Any], case: dict[str, Any]
) -> None:
    """Our PSS salt is the hash length: a signature verifies iff its salt is 32 bytes."""
    assert (group["mgfSha"], group["sLen"]) == ("SHA-256", 0)
    salt = _pss_salt_length(group["publicKey"], _digest(case), bytes.fromhex(case["sig"]))
    assert (salt == 0) is _expected(case), "the reference decoder disagrees"
    verdict = _rsa_verify(keys, group, case, SigningAlgorithm.RSASSA_PSS_SHA_256)
    assert verdict is (salt == SHA256_SIZE), case["comment"]


def test_only_one_salt_0_file_signature_has_a_32_byte_salt() -> None:
    """The sLen=0 file's one signature our PSS accepts is its 'salt changed to 32' case."""
    salted = [
        case["tcId"]
        for group in wycheproof(RSA_PSS_0)["testGroups"]
        for case in group["tests"]
        if _pss_salt_length(group["publicKey"], _digest(case), bytes.fromhex(case["sig"]))
        == SHA256_SIZE
    ]
    assert salted == [69]


# RSA-OAEP


def _oaep_sha256_supported(keys: VectorKeys) -> bool:
    capabilities = keys.capabilities()
    supported = EncryptionAlgorithm.RSAES_OAEP_SHA_256 in capabilities.encryption
    if not supported:
        assert any("RSAES_OAEP_SHA_256" in note for note in capabilities.notes), capabilities
    return supported


@pytest.mark.parametrize(("group", "case"), OAEP_CASES)
def test_rsa_oaep_sha256(keys: VectorKeys, group: dict[str, Any], case: dict[str, Any]) -> None:
    assert (group["sha"], group["mgfSha"], case["label"]) == ("SHA-256", "SHA-256", "")
    object_id = keys.rsa_private(group)
    ciphertext = bytes.fromhex(case["ct"])
    algorithm = EncryptionAlgorithm.RSAES_OAEP_SHA_256
    if not _oaep_sha256_supported(keys):
        with pytest.raises(Unimplemented):
            keys.backend.rsa_decrypt(keys.tenant, object_id, algorithm, ciphertext)
        return
    if _expected(case):
        plaintext = keys.backend.rsa_decrypt(keys.tenant, object_id, algorithm, ciphertext)
        assert plaintext == bytes.fromhex(case["msg"])
    else:
        with pytest.raises(DecryptionFailed):
            keys.backend.rsa_decrypt(keys.tenant, object_id, algorithm, ciphertext)


@pytest.mark.parametrize(("group", "case"), OAEP_LABEL_CASES)
def test_rsa_oaep_sha256_with_a_label_never_decrypts(
    keys: VectorKeys, group: dict[str, Any], case: dict[str, Any]
) -> None:
    """The API has no OAEP label: a labelled ciphertext must fail, never give a plaintext."""
    expected = Unimplemented if not _oaep_sha256_supported(keys) else DecryptionFailed
    with pytest.raises(expected):
        keys.backend.rsa_decrypt(
            keys.tenant,
            keys.rsa_private(group),
            EncryptionAlgorithm.RSAES_OAEP_SHA_256,
            bytes.fromhex(case["ct"]),
        )


@pytest.mark.parametrize(("group", "case"), OAEP_MISMATCH_CASES)
def test_rsa_oaep_sha1_decrypts_no_sha256_vector(
    keys: VectorKeys, group: dict[str, Any], case: dict[str, Any]
) -> None:
    """Neither file uses SHA-1 for the label hash, so under RSAES_OAEP_SHA_1 every case, valid
    or malformed (empty, 255, 257, 258 bytes), gets the one opaque DecryptionFailed."""
    assert group["sha"] == "SHA-256"
    assert EncryptionAlgorithm.RSAES_OAEP_SHA_1 in keys.capabilities().encryption
    with pytest.raises(DecryptionFailed):
        keys.backend.rsa_decrypt(
            keys.tenant,
            keys.rsa_private(group),
            EncryptionAlgorithm.RSAES_OAEP_SHA_1,
            bytes.fromhex(case["ct"]),
        )


# HMAC


def _verify_mac(keys: VectorKeys, case: dict[str, Any]) -> tuple[bool, bytes]:
    """hsmd/ops/mac.py's VerifyMac: the backend's full MAC compared in constant time."""
    mac = keys.backend.mac(
        keys.tenant, keys.hmac(case), MacAlgorithm.HMAC_SHA_256, bytes.fromhex(case["msg"])
    )
    return hmac.compare_digest(mac, bytes.fromhex(case["tag"])), mac


@pytest.mark.parametrize(("group", "case"), HMAC_CASES)
def test_hmac_sha256(keys: VectorKeys, group: dict[str, Any], case: dict[str, Any]) -> None:
    valid, _ = _verify_mac(keys, case)
    assert valid is _expected(case), case["comment"]


@pytest.mark.parametrize(("group", "case"), HMAC_TRUNCATED_CASES)
def test_hmac_sha256_truncated_tags_are_rejected(
    keys: VectorKeys, group: dict[str, Any], case: dict[str, Any]
) -> None:
    """VerifyMac takes only full-length tags; a valid truncated tag is just our MAC's prefix."""
    valid, mac = _verify_mac(keys, case)
    assert not valid
    tag = bytes.fromhex(case["tag"])
    assert (mac[: len(tag)] == tag) is _expected(case), case["comment"]


@pytest.mark.parametrize(("group", "case"), HMAC_SHORT_KEY_CASES)
def test_hmac_sha256_short_keys_fail_or_are_right(
    keys: VectorKeys, group: dict[str, Any], case: dict[str, Any]
) -> None:
    """SoftHSM2 refuses HMAC keys under 256 bits; whatever the library, never a wrong tag."""
    assert _expected(case)
    try:
        _, mac = _verify_mac(keys, case)
    except BackendError as exc:
        assert "KeySizeRange" in str(exc)
        return
    tag = bytes.fromhex(case["tag"])
    assert mac[: len(tag)] == tag


# Counts: a run that silently tests nothing (or less than it should) fails here.

EXPECTED_COUNTS = {
    "ecdsa-der": {"valid": 174, "invalid": 310},
    "ecdsa-p1363": {"valid": 173, "invalid": 89},
    "rsa-pkcs1": {"valid": 9, "invalid": 249, "acceptable": 1},
    "rsa-pss-s32": {"valid": 63, "invalid": 45},
    "rsa-pss-s0": {"valid": 61, "invalid": 42},
    "oaep-sha256": {"valid": 10, "invalid": 19},
    "oaep-sha256-label": {"valid": 8},
    "oaep-as-sha1": {"valid": 31, "invalid": 37},
    "hmac": {"valid": 30, "invalid": 54},
    "hmac-truncated": {"valid": 30, "invalid": 54},
    "hmac-short-key": {"valid": 6},
}


def test_every_file_runs_its_expected_cases() -> None:
    """The vector files are pinned (README sha256), so the counts are exact."""
    runs = {
        "ecdsa-der": ECDSA_DER_CASES,
        "ecdsa-p1363": ECDSA_P1363_CASES,
        "rsa-pkcs1": RSA_PKCS1_CASES,
        "rsa-pss-s32": RSA_PSS_32_CASES,
        "rsa-pss-s0": RSA_PSS_0_CASES,
        "oaep-sha256": OAEP_CASES,
        "oaep-sha256-label": OAEP_LABEL_CASES,
        "oaep-as-sha1": OAEP_MISMATCH_CASES,
        "hmac": HMAC_CASES,
        "hmac-truncated": HMAC_TRUNCATED_CASES,
        "hmac-short-key": HMAC_SHORT_KEY_CASES,
    }
    counts = {
        name: dict(Counter(param.values[1]["result"] for param in params))
        for name, params in runs.items()
    }
    assert counts == EXPECTED_COUNTS
    # Every HMAC case is in exactly one of the three runs.
    assert sum(len(runs[name]) for name in ("hmac", "hmac-truncated", "hmac-short-key")) == 174
