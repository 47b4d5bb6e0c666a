"""The Wycheproof AES-KW and AES-KWP vectors (256-bit wrapping keys) through the public API.

Each vector's wrapping key is imported (origin EXTERNAL, usage WRAP_UNWRAP) through
GetParametersForImport and ImportKeyMaterial; its ciphertext goes to UnwrapKey inside a
wrapped-key blob (hsmd/wrapped.py) whose spec fits the vector's message: 32 bytes AES_256,
28/48/64 bytes HMAC_224/384/512, any other length AES_256, which the daemon must refuse as the
wrong size. A key that unwraps is proved by a known answer against the vector's message; a
refused vector must leave no key and no token object behind.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.keywrap import aes_key_wrap, aes_key_wrap_with_padding

from hsmd import ciphertext
from hsmd.v1 import resources_pb2 as res
from hsmd.v1 import service_pb2 as svc
from hsmd.v1 import service_pb2_grpc
from tests.harness import DaemonProcess
from tests.stubs import channel, import_key, key_ids, open_locally, seal_locally
from tests.vectors import wycheproof

TENANT = "wrap-vectors"
PRINCIPAL = "vectors"
# The wrapping byte of the blob for each file, and the keySize-256 tests each file holds.
FILES = {"kw": ("aes_wrap_test.json", 2, 68), "kwp": ("aes_kwp_test.json", 1, 94)}
CONTEXT = {"suite": "wycheproof"}
PLAINTEXT = b"known answer through the daemon"


@dataclass(frozen=True)
class Fit:
    """The key spec and usage a material length unwraps into, and its known-answer check."""

    spec: res.KeySpec.ValueType
    usage: res.KeyUsage.ValueType
    mac_algorithm: res.MacAlgorithm.ValueType = res.MAC_ALGORITHM_UNSPECIFIED
    digest: Callable[[], Any] | None = None


AES = Fit(res.AES_256, res.ENCRYPT_DECRYPT)
FITS = {
    32: AES,
    28: Fit(res.HMAC_224, res.GENERATE_VERIFY_MAC, res.HMAC_SHA_224, hashlib.sha224),
    48: Fit(res.HMAC_384, res.GENERATE_VERIFY_MAC, res.HMAC_SHA_384, hashlib.sha384),
    64: Fit(res.HMAC_512, res.GENERATE_VERIFY_MAC, res.HMAC_SHA_512, hashlib.sha512),
}


@dataclass(frozen=True)
class Vector:
    file: str  # "kw" or "kwp"
    tc_id: int
    key: bytes
    msg: bytes
    ct: bytes
    result: str
    comment: str

    @property
    def fit(self) -> Fit:
        return FITS.get(len(self.msg), AES)

    @property
    def must_unwrap(self) -> bool:
        return self.result == "valid" and len(self.msg) in FITS

    def blob(self) -> bytes:
        wrapping = FILES[self.file][1]
        return b"hwk1" + bytes([self.fit.spec, self.fit.usage, wrapping]) + self.ct


def _load() -> list[Vector]:
    vectors = []
    for name, (file_name, _, _) in FILES.items():
        for group in wycheproof(file_name)["testGroups"]:
            if group["keySize"] != 256:
                continue
            vectors += [
                Vector(
                    name,
                    test["tcId"],
                    bytes.fromhex(test["key"]),
                    bytes.fromhex(test["msg"]),
                    bytes.fromhex(test["ct"]),
                    test["result"],
                    test["comment"],
                )
                for test in group["tests"]
            ]
    return vectors


VECTORS = _load()


@pytest.fixture(scope="module")
def stub(daemon: DaemonProcess) -> Iterator[service_pb2_grpc.KeyManagementServiceStub]:
    """The generated stub, as a principal of a tenant of this module's own."""
    daemon.create_tenant(TENANT)
    with channel(daemon, daemon.pki.tenant_client(TENANT, PRINCIPAL)) as opened:
        yield service_pb2_grpc.KeyManagementServiceStub(opened)


@pytest.fixture(scope="module")
def wrapping_keys(stub: service_pb2_grpc.KeyManagementServiceStub) -> Callable[[bytes], str]:
    """The imported WRAP_UNWRAP key of each distinct wrapping key, imported on first use."""
    cache: dict[bytes, str] = {}

    def get(material: bytes) -> str:
        if material not in cache:
            cache[material] = import_key(stub, material).key_id
        return cache[material]

    return get


def token_object_ids(daemon: DaemonProcess) -> Counter[str]:
    return Counter(obj["id"] for obj in daemon.token_objects(TENANT))


def unwrap(
    stub: service_pb2_grpc.KeyManagementServiceStub, blob: bytes, wrapping_key_id: str
) -> res.KeyMetadata | grpc.RpcError:
    """The new key's metadata, or the error that refused the blob."""
    request = svc.UnwrapKeyRequest(wrapped_key=blob, wrapping_key_id=wrapping_key_id)
    try:
        return stub.UnwrapKey(request).key_metadata
    except grpc.RpcError as error:
        return error


def prove_material(
    stub: service_pb2_grpc.KeyManagementServiceStub,
    key: res.KeyMetadata,
    material: bytes,
    fit: Fit,
) -> None:
    """A known-answer check that `key` holds `material`, in both directions for AES."""
    assert (key.key_spec, key.key_usage) == (fit.spec, fit.usage)
    if fit.digest is not None:
        mac = stub.GenerateMac(
            svc.GenerateMacRequest(
                key_id=key.key_id, message=PLAINTEXT, mac_algorithm=fit.mac_algorithm
            )
        ).mac
        assert mac == hmac.new(material, PLAINTEXT, fit.digest).digest()
        return
    sealed = stub.Encrypt(
        svc.EncryptRequest(key_id=key.key_id, plaintext=PLAINTEXT, encryption_context=CONTEXT)
    ).ciphertext_blob
    assert ciphertext.parse(sealed).key_id == key.key_id
    assert open_locally(TENANT, sealed, material, CONTEXT) == PLAINTEXT
    message = b"sealed locally under the vector's message"
    local = seal_locally(TENANT, key.key_id, material, message, CONTEXT)
    opened = stub.Decrypt(svc.DecryptRequest(ciphertext_blob=local, encryption_context=CONTEXT))
    assert (opened.plaintext, opened.key_id) == (message, key.key_id)


def test_every_file_has_its_256_bit_vectors() -> None:
    counts = Counter(vector.file for vector in VECTORS)
    assert counts == {name: count for name, (_, _, count) in FILES.items()}
    unwrapping = Counter(vector.file for vector in VECTORS if vector.must_unwrap)
    assert unwrapping == {"kw": 4, "kwp": 3}  # the 32-byte messages


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: f"{v.file}-tc{v.tc_id}")
def test_vector(
    stub: service_pb2_grpc.KeyManagementServiceStub,
    wrapping_keys: Callable[[bytes], str],
    vector: Vector,
    record_property: Callable[[str, object], None],
) -> None:
    """Valid vectors of a fitting size unwrap into the message; the rest leave no key."""
    wrapping_key_id = wrapping_keys(vector.key)
    before = key_ids(stub)
    outcome = unwrap(stub, vector.blob(), wrapping_key_id)
    after = key_ids(stub)
    if isinstance(outcome, grpc.RpcError):
        record_property("outcome", f"refused: {outcome.details()}")
        assert not vector.must_unwrap, f"{vector.comment}: {outcome.details()}"
        assert outcome.code() == grpc.StatusCode.INVALID_ARGUMENT, outcome.details()
        assert after == before
        return
    record_property("outcome", "unwrapped")
    assert vector.result != "invalid", f"an invalid vector unwrapped: {vector.comment}"
    assert len(vector.msg) in FITS, f"{len(vector.msg)} bytes unwrapped into a fixed-size key"
    assert after == before | {outcome.key_id}
    assert (outcome.origin, outcome.key_state, outcome.exportable) == (
        res.UNWRAPPED,
        res.ENABLED,
        False,
    )
    prove_material(stub, outcome, vector.msg, vector.fit)


def test_refused_vectors_leave_no_token_object(
    daemon: DaemonProcess,
    stub: service_pb2_grpc.KeyManagementServiceStub,
    wrapping_keys: Callable[[bytes], str],
) -> None:
    """Every vector that may be refused, at once: the token gains an object only for a key
    that was made (an "acceptable" vector may be either)."""
    refusable = [vector for vector in VECTORS if not vector.must_unwrap]
    assert len(refusable) == sum(count for _, _, count in FILES.values()) - 7
    for vector in refusable:
        wrapping_keys(vector.key)
    objects_before = token_object_ids(daemon)
    keys_before = key_ids(stub)
    made = []
    for vector in refusable:
        outcome = unwrap(stub, vector.blob(), wrapping_keys(vector.key))
        if isinstance(outcome, grpc.RpcError):
            assert outcome.code() == grpc.StatusCode.INVALID_ARGUMENT, (vector, outcome)
        else:
            made.append((vector, outcome.key_id))
    assert [vector for vector, _ in made if vector.result != "acceptable"] == []
    assert key_ids(stub) == keys_before | {key_id for _, key_id in made}
    objects_after = token_object_ids(daemon)
    assert objects_after - objects_before == Counter()
    assert objects_after.total() == objects_before.total() + len(made)


# Blobs wrapped here, to cover what the vectors do not: every spec's exact size (HMAC keys
# included) and the sizes around it, under both wrappings.
SIZES = {
    "AES_256": (AES, 32),
    "HMAC_224": (FITS[28], 28),
    "HMAC_256": (Fit(res.HMAC_256, res.GENERATE_VERIFY_MAC, res.HMAC_SHA_256, hashlib.sha256), 32),
    "HMAC_384": (FITS[48], 48),
    "HMAC_512": (FITS[64], 64),
}
LOCAL_CASES = [
    (spec, wrapping, size)
    for spec, (_, exact) in SIZES.items()
    for wrapping in ("kwp", "kw")
    for size in sorted(
        {16, exact - 8, exact - 4, exact - 1, exact, exact + 1, exact + 4, exact + 8}
    )
    if wrapping == "kwp" or size % 8 == 0
]
LOCAL_WRAPPING_KEY = bytes(range(32))


@pytest.mark.parametrize(
    ("spec", "wrapping", "size"), LOCAL_CASES, ids=[f"{s}-{w}-{n}" for s, w, n in LOCAL_CASES]
)
def test_locally_wrapped_material_unwraps_only_at_its_spec_size(
    stub: service_pb2_grpc.KeyManagementServiceStub,
    wrapping_keys: Callable[[bytes], str],
    spec: str,
    wrapping: str,
    size: int,
) -> None:
    """UnwrapKey checks the material's size against the blob's spec: to the byte, except that
    HMAC_224 takes 28-32 bytes (inside the token, AES-KWP only measures to within 8 bytes,
    and SoftHSM2's own minimum refuses 25-27; a longer HMAC key is not a weaker one)."""
    fit, exact = SIZES[spec]
    accepted = size == exact or (spec == "HMAC_224" and exact < size <= 32)
    material = (hashlib.sha512(f"{spec}/{wrapping}/{size}".encode()).digest() * 2)[:size]
    if wrapping == "kwp":
        wrapped, code = aes_key_wrap_with_padding(LOCAL_WRAPPING_KEY, material), 1
    else:
        wrapped, code = aes_key_wrap(LOCAL_WRAPPING_KEY, material), 2
    blob = b"hwk1" + bytes([fit.spec, fit.usage, code]) + wrapped
    wrapping_key_id = wrapping_keys(LOCAL_WRAPPING_KEY)
    before = key_ids(stub)
    outcome = unwrap(stub, blob, wrapping_key_id)
    if not accepted:
        assert isinstance(outcome, grpc.RpcError), f"{size} bytes unwrapped as a {spec} key"
        assert outcome.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert key_ids(stub) == before
        return
    assert not isinstance(outcome, grpc.RpcError), outcome.details()
    prove_material(stub, outcome, material, fit)
