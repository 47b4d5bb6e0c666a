"""No key leaves: a default key cannot be wrapped, a wrapped key stays in its tenant, and no
RPC answers with a stored key's plaintext.

The walk calls every RPC of KeyManagementService and AdminService (read from the service
descriptors, so a new RPC cannot be forgotten) around keys whose material the test imported
and so knows, and searches every response, error and metadata for that material in raw, hex
and base64 form. WrapKey then UnwrapKey of an imported key proves the new key holds the same
material, by known answers computed locally.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message

from hsmd.transport.batch import UNARY_OPERATIONS
from hsmd.v1 import admin_pb2, admin_pb2_grpc, service_pb2_grpc
from hsmd.v1 import resources_pb2 as res
from hsmd.v1 import service_pb2 as svc
from tests.conftest import TENANT_A, TENANT_B
from tests.harness import DaemonProcess
from tests.stubs import (
    channel,
    import_key,
    import_request,
    key_ids,
    open_locally,
    seal_locally,
)

PRINCIPAL = "leaks"
CONTEXT = {"test": "no-key-leaves"}
MESSAGE = b"a message that is not key material"
Stub = service_pb2_grpc.KeyManagementServiceStub


@pytest.fixture(scope="module")
def alpha(daemon: DaemonProcess) -> Iterator[Stub]:
    with channel(daemon, daemon.pki.tenant_client(TENANT_A, PRINCIPAL)) as opened:
        yield Stub(opened)


@pytest.fixture(scope="module")
def beta(daemon: DaemonProcess) -> Iterator[Stub]:
    with channel(daemon, daemon.pki.tenant_client(TENANT_B, PRINCIPAL)) as opened:
        yield Stub(opened)


@pytest.fixture(scope="module")
def admin(daemon: DaemonProcess) -> Iterator[admin_pb2_grpc.AdminServiceStub]:
    with channel(daemon, daemon.pki.operator_client()) as opened:
        yield admin_pb2_grpc.AdminServiceStub(opened)


def create_key(
    stub: Stub,
    spec: res.KeySpec.ValueType,
    usage: res.KeyUsage.ValueType,
    *,
    exportable: bool = False,
) -> str:
    request = svc.CreateKeyRequest(key_spec=spec, key_usage=usage, exportable=exportable)
    return str(stub.CreateKey(request).key_metadata.key_id)


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def leaked_forms(material: bytes) -> list[bytes]:
    """The material, any 16 bytes of it, and its hex and base64 spellings."""
    forms = [material[i : i + 16] for i in range(len(material) - 15)]
    forms += [material.hex().encode(), material.hex().upper().encode()]
    forms += [base64.b64encode(material), base64.urlsafe_b64encode(material)]
    forms += [form.rstrip(b"=") for form in forms[-2:]]
    return forms


# --- the walk ---------------------------------------------------------------------------------


@dataclass
class Walk:
    """The key under test, what its requests need, and every answer received."""

    stub: Stub
    tenant: str
    kind: str  # "aes", "hmac" or "wrap"
    key_id: str
    material: bytes
    wrapping_key_id: str
    other_aes_key_id: str
    alias: str = field(default_factory=lambda: f"alias/leaks-{secrets.token_hex(6)}")
    answers: dict[str, list[bytes]] = field(default_factory=dict)
    codes: dict[str, list[grpc.StatusCode]] = field(default_factory=dict)
    last: dict[str, Any] = field(default_factory=dict)

    def call(self, method: Any, name: str, request: Message) -> Any:
        """Calls and records the response (or error) and both metadata, as bytes."""
        answer: list[bytes] = []
        try:
            response, call = method.with_call(request, timeout=30)
            answer.append(response.SerializeToString())
            answer.append(str(response).encode())
            code = grpc.StatusCode.OK
        except grpc.RpcError as error:
            response, call, code = None, error, error.code()
            answer.append(f"{error.details()} {error}".encode())
        for metadata in (call.initial_metadata(), call.trailing_metadata()):
            answer.append(repr(metadata).encode())
        self.answers.setdefault(name, []).extend(answer)
        self.codes.setdefault(name, []).append(code)
        if response is not None:
            self.last[name] = response
        return response


def _local_blob(walk: Walk) -> bytes:
    """A blob under the key: sealed here with its material when that is an AES key."""
    if walk.kind == "aes":
        return seal_locally(walk.tenant, walk.key_id, walk.material, MESSAGE, CONTEXT)
    return seal_locally(walk.tenant, walk.key_id, os.urandom(32), MESSAGE, CONTEXT)


def _wrapped(walk: Walk) -> bytes:
    response = walk.last.get("WrapKey")
    return bytes(response.wrapped_key) if response else b"hwk1\x01\x01\x01" + bytes(40)


def _pages(walk: Walk, method: Callable[..., Any], name: str, request: Message) -> None:
    """Calls a List method until its last page."""
    while True:
        response = walk.call(method, name, request)
        if response is None or not response.next_page_token:
            return
        request.page_token = response.next_page_token  # type: ignore[attr-defined]


def _policy(walk: Walk) -> res.KeyPolicy:
    response = walk.last.get("GetKeyPolicy")
    return response.policy if response else res.KeyPolicy(administrators=[PRINCIPAL])


# Each RPC of KeyManagementService: what the walk sends, in this order. The key ends where it
# began: ENABLED, with its material (deleted and imported again near the end).
KMS_REQUESTS: dict[str, Callable[[Walk], Message]] = {
    "CreateKey": lambda w: svc.CreateKeyRequest(description="no key leaves"),
    "DescribeKey": lambda w: svc.DescribeKeyRequest(key_id=w.key_id),
    "GetCapabilities": lambda w: svc.GetCapabilitiesRequest(),
    "GenerateRandom": lambda w: svc.GenerateRandomRequest(number_of_bytes=1024),
    "Encrypt": lambda w: svc.EncryptRequest(
        key_id=w.key_id, plaintext=MESSAGE, encryption_context=CONTEXT
    ),
    "Decrypt": lambda w: svc.DecryptRequest(
        ciphertext_blob=_local_blob(w), encryption_context=CONTEXT, key_id=w.key_id
    ),
    "ReEncrypt": lambda w: svc.ReEncryptRequest(
        ciphertext_blob=_local_blob(w),
        source_encryption_context=CONTEXT,
        destination_key_id=w.other_aes_key_id,
        destination_encryption_context=CONTEXT,
    ),
    "GenerateDataKey": lambda w: svc.GenerateDataKeyRequest(
        key_id=w.key_id, number_of_bytes=len(w.material)
    ),
    "GenerateDataKeyWithoutPlaintext": lambda w: svc.GenerateDataKeyWithoutPlaintextRequest(
        key_id=w.key_id, key_spec=res.DATA_KEY_AES_256
    ),
    "GenerateDataKeyPair": lambda w: svc.GenerateDataKeyPairRequest(
        key_id=w.key_id, key_pair_spec=res.EC_P256
    ),
    "GenerateDataKeyPairWithoutPlaintext": lambda w: svc.GenerateDataKeyPairWithoutPlaintextRequest(
        key_id=w.key_id, key_pair_spec=res.EC_P256
    ),
    "Sign": lambda w: svc.SignRequest(
        key_id=w.key_id, message=MESSAGE, signing_algorithm=res.ECDSA_SHA_256
    ),
    "Verify": lambda w: svc.VerifyRequest(
        key_id=w.key_id,
        message=MESSAGE,
        signing_algorithm=res.ECDSA_SHA_256,
        signature=bytes(70),
    ),
    "GetPublicKey": lambda w: svc.GetPublicKeyRequest(key_id=w.key_id),
    "GenerateMac": lambda w: svc.GenerateMacRequest(
        key_id=w.key_id, message=MESSAGE, mac_algorithm=res.HMAC_SHA_256
    ),
    "VerifyMac": lambda w: svc.VerifyMacRequest(
        key_id=w.key_id,
        message=MESSAGE,
        mac_algorithm=res.HMAC_SHA_256,
        mac=hmac.new(w.material, MESSAGE, hashlib.sha256).digest(),
    ),
    "UpdateKeyDescription": lambda w: svc.UpdateKeyDescriptionRequest(
        key_id=w.key_id, description="walked"
    ),
    "TagKey": lambda w: svc.TagKeyRequest(key_id=w.key_id, tags={"walk": "yes", "drop": "me"}),
    "UntagKey": lambda w: svc.UntagKeyRequest(key_id=w.key_id, tag_keys=["drop"]),
    "GetKeyPolicy": lambda w: svc.GetKeyPolicyRequest(key_id=w.key_id),
    "PutKeyPolicy": lambda w: svc.PutKeyPolicyRequest(key_id=w.key_id, policy=_policy(w)),
    "EnableKeyRotation": lambda w: svc.EnableKeyRotationRequest(key_id=w.key_id),
    "DisableKeyRotation": lambda w: svc.DisableKeyRotationRequest(key_id=w.key_id),
    "GetKeyRotationStatus": lambda w: svc.GetKeyRotationStatusRequest(key_id=w.key_id),
    "RotateKeyOnDemand": lambda w: svc.RotateKeyOnDemandRequest(key_id=w.key_id),
    # The shared daemon is in no region: refused, with nothing to leak (test_regions.py
    # proves the replication's material stays in the tokens).
    "ReplicateKey": lambda w: svc.ReplicateKeyRequest(key_id=w.key_id, replica_region="b"),
    "UpdatePrimaryRegion": lambda w: svc.UpdatePrimaryRegionRequest(
        key_id=w.key_id, primary_region="b"
    ),
    "ListKeyRotations": lambda w: svc.ListKeyRotationsRequest(key_id=w.key_id),
    "CreateAlias": lambda w: svc.CreateAliasRequest(alias_name=w.alias, target_key_id=w.key_id),
    "UpdateAlias": lambda w: svc.UpdateAliasRequest(alias_name=w.alias, target_key_id=w.key_id),
    "ListKeys": lambda w: svc.ListKeysRequest(page_size=1000),
    "ListAliases": lambda w: svc.ListAliasesRequest(key_id=w.key_id),
    "DeleteAlias": lambda w: svc.DeleteAliasRequest(alias_name=w.alias),
    "WrapKey": lambda w: svc.WrapKeyRequest(key_id=w.key_id, wrapping_key_id=w.wrapping_key_id),
    "UnwrapKey": lambda w: svc.UnwrapKeyRequest(
        wrapped_key=_wrapped(w), wrapping_key_id=w.wrapping_key_id, exportable=True
    ),
    "ScheduleKeyDeletion": lambda w: svc.ScheduleKeyDeletionRequest(
        key_id=w.key_id, pending_window_in_days=7
    ),
    "CancelKeyDeletion": lambda w: svc.CancelKeyDeletionRequest(key_id=w.key_id),
    "EnableKey": lambda w: svc.EnableKeyRequest(key_id=w.key_id),
    "DisableKey": lambda w: svc.DisableKeyRequest(key_id=w.key_id),
    "DeleteImportedKeyMaterial": lambda w: svc.DeleteImportedKeyMaterialRequest(key_id=w.key_id),
    "GetParametersForImport": lambda w: svc.GetParametersForImportRequest(
        key_id=w.key_id, wrapping_algorithm=res.WRAP_RSAES_OAEP_SHA_1
    ),
    "ImportKeyMaterial": lambda w: import_request(w.stub, w.key_id, w.material),
    "ListAuditEvents": lambda w: svc.ListAuditEventsRequest(page_size=1000, key_id=w.key_id),
}
PAGED = {"ListKeys", "ListAliases", "ListKeyRotations", "ListAuditEvents"}


def _batched(name: str, walk: Walk) -> Message:
    """The batch RPC of a unary one, carrying the unary request the walk sends."""
    request: Message = getattr(svc, f"Batch{name}Request")(requests=[KMS_REQUESTS[name](walk)])
    return request


# Each batch RPC, at the end (the key is ENABLED with its material again), with its unary
# twin's request.
for _unary in UNARY_OPERATIONS.values():
    KMS_REQUESTS[f"Batch{_unary}"] = partial(_batched, _unary)


def test_the_walk_covers_every_rpc() -> None:
    kms = svc.DESCRIPTOR.services_by_name["KeyManagementService"].methods_by_name
    admin = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].methods_by_name
    assert set(KMS_REQUESTS) == set(kms)
    assert set(ADMIN_REQUESTS) == set(admin)


def walk_every_rpc(walk: Walk) -> None:
    """Calls each RPC of KMS_REQUESTS on the walk's key, in order."""
    for name, build in KMS_REQUESTS.items():
        method = getattr(walk.stub, name)
        if name in PAGED:
            _pages(walk, method, name, build(walk))
        else:
            walk.call(method, name, build(walk))
    # back to ENABLED with the same material (ImportKeyMaterial enables it)
    describe = walk.call(
        walk.stub.DescribeKey, "DescribeKey", svc.DescribeKeyRequest(key_id=walk.key_id)
    )
    assert describe.key_metadata.key_state == res.ENABLED


def assert_nothing_leaked(walk: Walk) -> None:
    forms = leaked_forms(walk.material)
    for name, answers in walk.answers.items():
        for answer in answers:
            for form in forms:
                assert form not in answer, f"{name} answered with the key's material"


@pytest.fixture(scope="module")
def wrapping_key(alpha: Stub) -> str:
    return create_key(alpha, res.AES_256, res.WRAP_UNWRAP)


@pytest.fixture(scope="module")
def aes_key(alpha: Stub) -> str:
    return create_key(alpha, res.AES_256, res.ENCRYPT_DECRYPT)


KINDS = {
    "aes": (res.AES_256, res.ENCRYPT_DECRYPT, 32),
    "hmac": (res.HMAC_256, res.GENERATE_VERIFY_MAC, 32),
    "wrap": (res.AES_256, res.WRAP_UNWRAP, 32),
}
# What each walk must be able to do, so that the walk is not a list of refusals.
MUST_SUCCEED = {
    "CreateKey",
    "DescribeKey",
    "GetCapabilities",
    "GenerateRandom",
    "UpdateKeyDescription",
    "TagKey",
    "UntagKey",
    "GetKeyPolicy",
    "PutKeyPolicy",
    "GetKeyRotationStatus",
    "ListKeyRotations",
    "CreateAlias",
    "ListKeys",
    "ListAliases",
    "DeleteAlias",
    "ScheduleKeyDeletion",
    "CancelKeyDeletion",
    "EnableKey",
    "DisableKey",
    "DeleteImportedKeyMaterial",
    "GetParametersForImport",
    "ImportKeyMaterial",
    "ListAuditEvents",
}
MUST_SUCCEED_BY_KIND = {
    "aes": {
        "Encrypt",
        "Decrypt",
        "ReEncrypt",
        "GenerateDataKey",
        "GenerateDataKeyWithoutPlaintext",
        "GenerateDataKeyPair",
        "GenerateDataKeyPairWithoutPlaintext",
    },
    "hmac": {"GenerateMac", "VerifyMac"},
    "wrap": set(),
}


@pytest.mark.parametrize("exportable", [False, True], ids=["default", "exportable"])
@pytest.mark.parametrize("kind", KINDS)
def test_no_rpc_answers_with_a_stored_keys_material(
    daemon: DaemonProcess,
    alpha: Stub,
    wrapping_key: str,
    aes_key: str,
    kind: str,
    exportable: bool,
) -> None:
    """Every RPC, on an imported key whose material the test knows: none answers with it."""
    spec, usage, size = KINDS[kind]
    material = secrets.token_bytes(size)
    key = import_key(alpha, material, spec, usage, exportable=exportable)
    walk = Walk(alpha, TENANT_A, kind, key.key_id, material, wrapping_key, aes_key)
    walk_every_rpc(walk)
    assert_nothing_leaked(walk)
    # the walk did something: the key's own operations worked, and it still holds the material
    failed = {
        name
        for name in MUST_SUCCEED | MUST_SUCCEED_BY_KIND[kind]
        if grpc.StatusCode.OK not in walk.codes[name]
    }
    assert failed == set(), {name: walk.codes[name] for name in failed}
    if kind == "aes":
        assert (
            open_locally(TENANT_A, walk.last["Encrypt"].ciphertext_blob, material, CONTEXT)
            == MESSAGE
        )
        assert walk.last["Decrypt"].plaintext == MESSAGE
    if kind == "hmac":
        expected = hmac.new(material, MESSAGE, hashlib.sha256).digest()
        assert walk.last["GenerateMac"].mac == expected
        assert walk.last["VerifyMac"].mac_valid
    wrap_codes = walk.codes["WrapKey"]
    if exportable:
        assert wrap_codes == [grpc.StatusCode.OK]
        assert walk.codes["UnwrapKey"] == [grpc.StatusCode.OK]
    else:
        assert wrap_codes == [grpc.StatusCode.FAILED_PRECONDITION]
        assert walk.codes["UnwrapKey"] == [grpc.StatusCode.INVALID_ARGUMENT]


# A tenant the walk creates, then disables, enables, schedules for deletion and keeps.
THROWAWAY_TENANT = f"leaks-{secrets.token_hex(4)}"
ADMIN_REQUESTS: dict[str, Callable[[], Message]] = {
    "CreateTenant": lambda: admin_pb2.CreateTenantRequest(name=THROWAWAY_TENANT),
    "ListTenants": lambda: admin_pb2.ListTenantsRequest(),
    "DisableTenant": lambda: admin_pb2.DisableTenantRequest(name=THROWAWAY_TENANT),
    "EnableTenant": lambda: admin_pb2.EnableTenantRequest(name=THROWAWAY_TENANT),
    "DeleteTenant": lambda: admin_pb2.DeleteTenantRequest(name=THROWAWAY_TENANT),
    "CancelTenantDeletion": lambda: admin_pb2.CancelTenantDeletionRequest(name=THROWAWAY_TENANT),
    "ListAuditEvents": lambda: svc.ListAuditEventsRequest(page_size=1000),
    "VerifyAuditLog": lambda: admin_pb2.VerifyAuditLogRequest(),
    "ListQuarantinedObjects": lambda: admin_pb2.ListQuarantinedObjectsRequest(),
    "DestroyQuarantinedObject": lambda: admin_pb2.DestroyQuarantinedObjectRequest(
        tenant="alpha", object_id=secrets.token_hex(16)
    ),
    "AdoptQuarantinedObject": lambda: admin_pb2.AdoptQuarantinedObjectRequest(
        tenant="alpha", object_id=secrets.token_hex(16), key_id=str(uuid.uuid4()), key_version=1
    ),
    # alpha has no overrides: setting none leaves it as it is
    "SetTenantQuota": lambda: admin_pb2.SetTenantQuotaRequest(
        tenant="alpha", quota=admin_pb2.TenantQuota()
    ),
    "GetTenantQuota": lambda: admin_pb2.GetTenantQuotaRequest(tenant="alpha"),
    # The snapshot stays on the daemon's host: the answer names where, and counts.
    "Backup": lambda: admin_pb2.BackupRequest(),
}
# Nothing is in quarantine, so the calls that act on an object find none.
ADMIN_NOT_FOUND = {"DestroyQuarantinedObject", "AdoptQuarantinedObject"}


def test_no_admin_rpc_answers_with_a_stored_keys_material(
    alpha: Stub, admin: admin_pb2_grpc.AdminServiceStub, wrapping_key: str
) -> None:
    """The operator's RPCs, after keys of known material were used and wrapped."""
    material = secrets.token_bytes(32)
    key = import_key(alpha, material, res.AES_256, res.ENCRYPT_DECRYPT, exportable=True)
    alpha.Encrypt(svc.EncryptRequest(key_id=key.key_id, plaintext=MESSAGE))
    code_of(
        lambda: alpha.WrapKey(svc.WrapKeyRequest(key_id=key.key_id, wrapping_key_id=wrapping_key))
    )
    walk = Walk(alpha, TENANT_A, "aes", key.key_id, material, wrapping_key, "")
    for name, build in ADMIN_REQUESTS.items():
        method = getattr(admin, name)
        if name == "ListAuditEvents":
            _pages(walk, method, name, build())
        else:
            walk.call(method, name, build())
    assert_nothing_leaked(walk)
    assert {name: codes[0] for name, codes in walk.codes.items()} == {
        name: grpc.StatusCode.NOT_FOUND if name in ADMIN_NOT_FOUND else grpc.StatusCode.OK
        for name in ADMIN_REQUESTS
    }


def test_the_daemons_files_do_not_hold_known_material(daemon: DaemonProcess, alpha: Stub) -> None:
    """Not an RPC, but where a leak would show next: the log, the audit trail and the
    metadata database never hold an imported key's material."""
    material = secrets.token_bytes(32)
    key = import_key(alpha, material, res.AES_256, res.ENCRYPT_DECRYPT)
    alpha.Encrypt(svc.EncryptRequest(key_id=key.key_id, plaintext=MESSAGE))
    forms = leaked_forms(material)
    for path in (daemon.log, daemon.audit_log, daemon.database):
        for candidate in (path, path.with_name(path.name + "-wal")):
            if candidate.exists():
                data = candidate.read_bytes()
                assert not [form for form in forms if form in data], candidate


# --- default keys -----------------------------------------------------------------------------


def wrapping_keys_of(stub: Stub) -> list[str]:
    """Every ENABLED WRAP_UNWRAP key the principal sees in its tenant."""
    keys: list[str] = []
    token = ""
    while True:
        page = stub.ListKeys(svc.ListKeysRequest(page_size=1000, page_token=token))
        keys += [
            key.key_id
            for key in page.keys
            if key.key_usage == res.WRAP_UNWRAP and key.key_state == res.ENABLED
        ]
        token = page.next_page_token
        if not token:
            return keys


def test_a_default_key_cannot_be_wrapped_under_any_wrapping_key(
    daemon: DaemonProcess, alpha: Stub, wrapping_key: str
) -> None:
    """Generated and imported keys made without `exportable`, wrapping keys included: WrapKey
    is FAILED_PRECONDITION under every wrapping key, and their token objects are not
    extractable."""
    import_key(alpha, secrets.token_bytes(32), res.AES_256, res.WRAP_UNWRAP)
    defaults = [
        create_key(alpha, res.AES_256, res.ENCRYPT_DECRYPT),
        create_key(alpha, res.HMAC_224, res.GENERATE_VERIFY_MAC),
        create_key(alpha, res.HMAC_512, res.GENERATE_VERIFY_MAC),
        create_key(alpha, res.AES_256, res.WRAP_UNWRAP),
        import_key(alpha, secrets.token_bytes(32), res.AES_256, res.ENCRYPT_DECRYPT).key_id,
        import_key(alpha, secrets.token_bytes(48), res.HMAC_384, res.GENERATE_VERIFY_MAC).key_id,
    ]
    wrapping = wrapping_keys_of(alpha)
    assert wrapping_key in wrapping and len(wrapping) >= 3
    for key_id in defaults:
        assert not alpha.DescribeKey(svc.DescribeKeyRequest(key_id=key_id)).key_metadata.exportable
        for wrapping_key_id in wrapping:
            request = svc.WrapKeyRequest(key_id=key_id, wrapping_key_id=wrapping_key_id)
            with pytest.raises(grpc.RpcError) as refused:
                alpha.WrapKey(request)
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION, (
                key_id,
                wrapping_key_id,
                refused.value.details(),
            )
        (object_id,) = daemon.query("SELECT object_id FROM key_versions WHERE key_id = ?", key_id)[
            0
        ]
        for stored in daemon.token_objects(TENANT_A, bytes(object_id)):
            assert (stored["extractable"], stored["sensitive"]) == (False, True), stored


def test_an_exportable_keys_token_object_is_extractable_only_wrapped(
    daemon: DaemonProcess, alpha: Stub
) -> None:
    """Generated and imported exportable keys: sensitive (no plaintext read), extractable
    (so C_WrapKey can wrap them)."""
    keys = [
        create_key(alpha, res.AES_256, res.ENCRYPT_DECRYPT, exportable=True),
        import_key(
            alpha, secrets.token_bytes(32), res.AES_256, res.ENCRYPT_DECRYPT, exportable=True
        ).key_id,
    ]
    for key_id in keys:
        (object_id,) = daemon.query("SELECT object_id FROM key_versions WHERE key_id = ?", key_id)[
            0
        ]
        (stored,) = daemon.token_objects(TENANT_A, bytes(object_id))
        assert (stored["sensitive"], stored["value"]) == (True, "AttributeSensitive"), stored
        assert stored["extractable"] is True, (key_id, stored)


# --- across tenants ---------------------------------------------------------------------------


def test_a_key_wrapped_in_one_tenant_does_not_unwrap_in_another(
    daemon: DaemonProcess, alpha: Stub, beta: Stub, wrapping_key: str
) -> None:
    """Beta names alpha's wrapping key: NOT_FOUND; beta's own: INVALID_ARGUMENT; no key and
    no token object is made in beta."""
    exported = create_key(alpha, res.AES_256, res.ENCRYPT_DECRYPT, exportable=True)
    blob = alpha.WrapKey(
        svc.WrapKeyRequest(key_id=exported, wrapping_key_id=wrapping_key)
    ).wrapped_key
    assert blob[:4] == b"hwk1"
    beta_wrapping_key = create_key(beta, res.AES_256, res.WRAP_UNWRAP)
    keys_before = key_ids(beta)
    objects_before = sorted(obj["id"] for obj in daemon.token_objects(TENANT_B))
    for wrapping_key_id, expected in (
        (wrapping_key, grpc.StatusCode.NOT_FOUND),
        (beta_wrapping_key, grpc.StatusCode.INVALID_ARGUMENT),
    ):
        request = svc.UnwrapKeyRequest(wrapped_key=blob, wrapping_key_id=wrapping_key_id)
        with pytest.raises(grpc.RpcError) as refused:
            beta.UnwrapKey(request)
        assert refused.value.code() == expected, refused.value.details()
    # alpha's key id is as unknown to beta as any other
    with pytest.raises(grpc.RpcError) as missing:
        beta.WrapKey(svc.WrapKeyRequest(key_id=exported, wrapping_key_id=beta_wrapping_key))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert key_ids(beta) == keys_before
    assert sorted(obj["id"] for obj in daemon.token_objects(TENANT_B)) == objects_before
    # while in alpha the same blob does unwrap
    unwrapped = alpha.UnwrapKey(
        svc.UnwrapKeyRequest(wrapped_key=blob, wrapping_key_id=wrapping_key)
    ).key_metadata
    assert (unwrapped.origin, unwrapped.key_state) == (res.UNWRAPPED, res.ENABLED)


# --- the round trip ---------------------------------------------------------------------------


def test_wrap_then_unwrap_an_imported_key_gives_a_key_of_the_same_material(
    alpha: Stub, wrapping_key: str
) -> None:
    """Import K as exportable key A; wrap A, unwrap as B: B decrypts what K sealed and seals
    what K opens; B is of origin UNWRAPPED and, by default, cannot be wrapped again."""
    material = secrets.token_bytes(32)
    key_a = import_key(alpha, material, res.AES_256, res.ENCRYPT_DECRYPT, exportable=True)
    sealed_by_a = alpha.Encrypt(
        svc.EncryptRequest(key_id=key_a.key_id, plaintext=MESSAGE, encryption_context=CONTEXT)
    ).ciphertext_blob
    plaintext = open_locally(TENANT_A, sealed_by_a, material, CONTEXT)
    assert plaintext == MESSAGE
    wrapped = alpha.WrapKey(svc.WrapKeyRequest(key_id=key_a.key_id, wrapping_key_id=wrapping_key))
    assert (wrapped.key_id, wrapped.key_version, wrapped.wrapping_key_id) == (
        key_a.key_id,
        1,
        wrapping_key,
    )
    assert wrapped.wrapped_key[:7] == b"hwk1\x01\x01\x01"
    key_b = alpha.UnwrapKey(
        svc.UnwrapKeyRequest(wrapped_key=wrapped.wrapped_key, wrapping_key_id=wrapping_key)
    ).key_metadata
    assert key_b.key_id != key_a.key_id
    assert (key_b.key_spec, key_b.key_usage, key_b.origin, key_b.key_state) == (
        res.AES_256,
        res.ENCRYPT_DECRYPT,
        res.UNWRAPPED,
        res.ENABLED,
    )
    assert not key_b.exportable
    # what A encrypted (recovered above with K), sealed for B with K, opens under B ...
    opened = alpha.Decrypt(
        svc.DecryptRequest(
            ciphertext_blob=seal_locally(TENANT_A, key_b.key_id, material, plaintext, CONTEXT),
            encryption_context=CONTEXT,
        )
    )
    assert (opened.plaintext, opened.key_id) == (MESSAGE, key_b.key_id)
    # ... and what B encrypts opens with K
    sealed_by_b = alpha.Encrypt(
        svc.EncryptRequest(key_id=key_b.key_id, plaintext=MESSAGE, encryption_context=CONTEXT)
    ).ciphertext_blob
    assert open_locally(TENANT_A, sealed_by_b, material, CONTEXT) == MESSAGE
    with pytest.raises(grpc.RpcError) as refused:
        alpha.WrapKey(svc.WrapKeyRequest(key_id=key_b.key_id, wrapping_key_id=wrapping_key))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_an_exportable_unwrapped_key_wraps_to_the_same_blob(alpha: Stub, wrapping_key: str) -> None:
    """AES-KWP is deterministic: an exportable copy wraps to the original's bytes, and HMAC
    keys round-trip too (their MACs agree)."""
    material = secrets.token_bytes(32)
    original = import_key(alpha, material, res.HMAC_256, res.GENERATE_VERIFY_MAC, exportable=True)
    first = alpha.WrapKey(
        svc.WrapKeyRequest(key_id=original.key_id, wrapping_key_id=wrapping_key)
    ).wrapped_key
    copy = alpha.UnwrapKey(
        svc.UnwrapKeyRequest(wrapped_key=first, wrapping_key_id=wrapping_key, exportable=True)
    ).key_metadata
    assert copy.exportable and copy.origin == res.UNWRAPPED
    second = alpha.WrapKey(
        svc.WrapKeyRequest(key_id=copy.key_id, wrapping_key_id=wrapping_key)
    ).wrapped_key
    assert second == first
    expected = hmac.new(material, MESSAGE, hashlib.sha256).digest()
    for key_id in (original.key_id, copy.key_id):
        mac = alpha.GenerateMac(
            svc.GenerateMacRequest(key_id=key_id, message=MESSAGE, mac_algorithm=res.HMAC_SHA_256)
        ).mac
        assert mac == expected


def test_a_generated_exportable_key_round_trips(alpha: Stub, wrapping_key: str) -> None:
    """A generated key's material is unknown here; an exportable copy shows it is the same by
    wrapping to the same bytes."""
    original = create_key(alpha, res.AES_256, res.ENCRYPT_DECRYPT, exportable=True)
    first = alpha.WrapKey(svc.WrapKeyRequest(key_id=original, wrapping_key_id=wrapping_key))
    copy = alpha.UnwrapKey(
        svc.UnwrapKeyRequest(
            wrapped_key=first.wrapped_key, wrapping_key_id=wrapping_key, exportable=True
        )
    ).key_metadata
    second = alpha.WrapKey(svc.WrapKeyRequest(key_id=copy.key_id, wrapping_key_id=wrapping_key))
    assert second.wrapped_key == first.wrapped_key
