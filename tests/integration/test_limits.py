"""Bounded input through the real daemon: every limited field is INVALID_ARGUMENT with a message
naming it and its limit, before any lookup, and the refused call makes one audit event of
bounded size; ListAuditEvents pages a key's events from the index, across a kill -9."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message

from hsmd import limits
from hsmd.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    resources_pb2,
    service_pb2,
    service_pb2_grpc,
)
from tests.conftest import TENANT_A
from tests.harness import DaemonProcess

NewDaemon = Callable[..., DaemonProcess]
HUGE = 4 * 1024 * 1024  # under the server's 8 MiB max receive message size
svc = service_pb2
LONG_ID = "k" * (limits.MAX_KEY_ID_CHARS + 1)
CONTEXT_PAIRS = {str(n): "" for n in range(limits.MAX_CONTEXT_PAIRS + 1)}
CONTEXT_BYTES = {"k": "v" * limits.MAX_CONTEXT_BYTES}
TOO_MANY_TAGS = {f"t{n}": "" for n in range(limits.MAX_TAGS + 1)}


def _policy(**fields: Any) -> resources_pb2.KeyPolicy:
    return resources_pb2.KeyPolicy(**fields)


def _valid_to_year_10000() -> svc.ImportKeyMaterialRequest:
    request = svc.ImportKeyMaterialRequest(key_id="k")
    request.valid_to.seconds = 253402300800
    return request


# (RPC, request, the field named in the message, the limit named in it). Admin RPCs are
# marked by an "admin:" prefix.
CASES: list[tuple[str, Message, str, str]] = [
    ("DescribeKey", svc.DescribeKeyRequest(key_id=LONG_ID), "key_id", "2048 characters"),
    ("Encrypt", svc.EncryptRequest(key_id=LONG_ID, plaintext=b"x"), "key_id", "2048"),
    (
        "CreateAlias",
        svc.CreateAliasRequest(alias_name="alias/a", target_key_id=LONG_ID),
        "target_key_id",
        "2048",
    ),
    ("ReEncrypt", svc.ReEncryptRequest(source_key_id=LONG_ID), "source_key_id", "2048"),
    (
        "ReEncrypt",
        svc.ReEncryptRequest(destination_key_id=LONG_ID),
        "destination_key_id",
        "2048",
    ),
    ("WrapKey", svc.WrapKeyRequest(key_id="k", wrapping_key_id=LONG_ID), "wrapping_key_id", "2048"),
    ("ListAuditEvents", svc.ListAuditEventsRequest(key_id=LONG_ID), "key_id", "2048"),
    (
        "DeleteAlias",
        svc.DeleteAliasRequest(alias_name="alias/" + "a" * 251),
        "alias_name",
        "256 characters",
    ),
    (
        "UpdateKeyDescription",
        svc.UpdateKeyDescriptionRequest(key_id="k", description="d" * 8193),
        "description",
        "8192 characters",
    ),
    ("TagKey", svc.TagKeyRequest(key_id="k", tags=TOO_MANY_TAGS), "tags", "50 entries"),
    ("TagKey", svc.TagKeyRequest(key_id="k", tags={"t" * 129: ""}), "tags key", "128"),
    ("TagKey", svc.TagKeyRequest(key_id="k", tags={"t": "v" * 257}), "tags value", "256"),
    ("ListKeys", svc.ListKeysRequest(tag_filter=TOO_MANY_TAGS), "tag_filter", "50 entries"),
    ("UntagKey", svc.UntagKeyRequest(key_id="k", tag_keys=["t"] * 51), "tag_keys", "50"),
    (
        "Encrypt",
        svc.EncryptRequest(key_id="k", plaintext=b"x", encryption_context=CONTEXT_PAIRS),
        "encryption_context",
        "64 entries",
    ),
    (
        "Decrypt",
        svc.DecryptRequest(ciphertext_blob=b"c" * 60, encryption_context=CONTEXT_BYTES),
        "encryption_context",
        "8192 bytes",
    ),
    (
        "GenerateDataKey",
        svc.GenerateDataKeyRequest(key_id="k", encryption_context={"k" * HUGE: ""}),
        "encryption_context",
        "8192 bytes",
    ),
    (
        "ReEncrypt",
        svc.ReEncryptRequest(source_encryption_context=CONTEXT_PAIRS),
        "source_encryption_context",
        "64",
    ),
    (
        "ReEncrypt",
        svc.ReEncryptRequest(destination_encryption_context=CONTEXT_BYTES),
        "destination_encryption_context",
        "8192",
    ),
    (
        "PutKeyPolicy",
        svc.PutKeyPolicyRequest(key_id="k", policy=_policy(administrators=["a"] * 65)),
        "policy.administrators",
        "64 entries",
    ),
    (
        "CreateKey",
        svc.CreateKeyRequest(policy=_policy(administrators=["a" * 129])),
        "policy.administrators entry",
        "128 characters",
    ),
    (
        "CreateKey",
        svc.CreateKeyRequest(policy=_policy(administrators=["a"] * 40, users=["u"] * 40)),
        "policy",
        "64 patterns",
    ),
    ("CreateKey", svc.CreateKeyRequest(client_token="c" * 65), "client_token", "64"),
    ("ListKeys", svc.ListKeysRequest(page_token="p" * 65), "page_token", "64"),
    ("ListAliases", svc.ListAliasesRequest(page_size=1001), "page_size", "1000"),
    ("ListAuditEvents", svc.ListAuditEventsRequest(page_size=1001), "page_size", "1000"),
    ("Encrypt", svc.EncryptRequest(key_id="k", plaintext=b"p" * 4097), "plaintext", "4096 bytes"),
    (
        "Decrypt",
        svc.DecryptRequest(ciphertext_blob=b"c" * 8193),
        "ciphertext_blob",
        "8192 bytes",
    ),
    ("Sign", svc.SignRequest(key_id="k", message=b"m" * 4097), "message", "4096 bytes"),
    ("Verify", svc.VerifyRequest(key_id="k", signature=b"s" * 6145), "signature", "6144 bytes"),
    ("VerifyMac", svc.VerifyMacRequest(key_id="k", mac=b"m" * 6145), "mac", "6144 bytes"),
    ("UnwrapKey", svc.UnwrapKeyRequest(wrapped_key=b"w" * 8193), "wrapped_key", "8192 bytes"),
    (
        "ImportKeyMaterial",
        svc.ImportKeyMaterialRequest(key_id="k", encrypted_key_material=b"e" * 8193),
        "encrypted_key_material",
        "8192 bytes",
    ),
    (
        "ImportKeyMaterial",
        svc.ImportKeyMaterialRequest(key_id="k", import_token=b"t" * 257),
        "import_token",
        "256 bytes",
    ),
    (
        "ImportKeyMaterial",
        svc.ImportKeyMaterialRequest(key_id="k", public_key=b"p" * 4097),
        "public_key",
        "4096 bytes",
    ),
    ("ImportKeyMaterial", _valid_to_year_10000(), "valid_to", "9999"),
    (
        "admin:CreateTenant",
        admin_pb2.CreateTenantRequest(name="t" * 27),
        "name",
        "26 characters",
    ),
    (
        "admin:CreateTenant",
        admin_pb2.CreateTenantRequest(name="t", admin_principals=["p"] * 33),
        "admin_principals",
        "32 entries",
    ),
    (
        "admin:ListAuditEvents",
        svc.ListAuditEventsRequest(tenant="t" * HUGE),
        "tenant",
        "26 characters",
    ),
    (
        "admin:DestroyQuarantinedObject",
        admin_pb2.DestroyQuarantinedObjectRequest(tenant="t", object_id="0" * 129),
        "object_id",
        "128 characters",
    ),
    (
        "admin:AdoptQuarantinedObject",
        admin_pb2.AdoptQuarantinedObjectRequest(tenant="t", object_id="00", key_id="k" * HUGE),
        "key_id",
        "2048 characters",
    ),
]


def _call(daemon: DaemonProcess, method: str, request: Message) -> grpc.RpcError:
    admin = method.startswith("admin:")
    name = method.removeprefix("admin:")
    cert, key = daemon.pki.operator_client() if admin else daemon.pki.tenant_client(TENANT_A, "app")
    credentials = grpc.ssl_channel_credentials(daemon.pki.ca_cert.read_bytes(), key, cert)
    options = [("grpc.max_send_message_length", 8 * 1024 * 1024)]
    with grpc.secure_channel(daemon.endpoint, credentials, options) as channel:
        stub: Any = (
            admin_pb2_grpc.AdminServiceStub(channel)
            if admin
            else service_pb2_grpc.KeyManagementServiceStub(channel)
        )
        try:
            getattr(stub, name)(request, timeout=30)
        except grpc.RpcError as error:
            return error
    raise AssertionError(f"{name} succeeded")


def _event_line(daemon: DaemonProcess, error: grpc.RpcError) -> bytes:
    request_id = dict(error.trailing_metadata())["x-request-id"]  # type: ignore[attr-defined]
    marker = f'"request_id":"{request_id}"'.encode()
    (line,) = [line for line in daemon.audit_log.read_bytes().splitlines() if marker in line]
    return line


@pytest.mark.parametrize(
    ("method", "request_message", "field", "limit"),
    CASES,
    ids=[f"{method}-{field}-{n}" for n, (method, _, field, _) in enumerate(CASES)],
)
def test_an_oversized_field_is_refused_by_name_and_audited_small(
    daemon: DaemonProcess, method: str, request_message: Message, field: str, limit: str
) -> None:
    error = _call(daemon, method, request_message)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    details: str = error.details()  # type: ignore[attr-defined]
    assert details.startswith(field) and limit in details, details
    assert len(details) < 200  # the value is never echoed
    line = _event_line(daemon, error)
    assert len(line) < limits.MAX_AUDIT_EVENT_BYTES
    event = json.loads(line)
    assert (event["operation"], event["outcome"]) == (
        method.removeprefix("admin:"),
        "INVALID_ARGUMENT",
    )


def test_ten_4_mb_key_ids_add_only_bounded_bytes_to_the_log(daemon: DaemonProcess) -> None:
    before = daemon.audit_log.stat().st_size
    for _ in range(10):
        error = _call(daemon, "DescribeKey", svc.DescribeKeyRequest(key_id="k" * HUGE))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    event = json.loads(_event_line(daemon, error))
    assert event["key_id"].startswith(f"oversized:{HUGE} characters:sha256:")
    # Checkpoint lines may land among them; each line is bounded all the same.
    assert daemon.audit_log.stat().st_size - before < 10 * 2 * 1024


def test_a_key_filter_pages_that_keys_events_across_a_kill_9(new_daemon: NewDaemon) -> None:
    daemon = new_daemon()
    daemon.create_tenant(TENANT_A)

    def by_key(key_id: str, page_size: int) -> Iterator[list[tuple[str, str]]]:
        with daemon.client(TENANT_A) as client:
            token = ""
            while True:
                events, token = client.list_audit_events(page_size, token, key_id)
                yield [(event.operation, event.key_id) for event in events]
                if not token:
                    return

    with daemon.client(TENANT_A) as client:
        watched, other = client.create_key().key_id, client.create_key().key_id
        for n in range(7):
            client.encrypt(watched, b"w")
            client.encrypt(other, b"o")
            if n % 3 == 0:
                client.describe_key(watched)
    pages = list(by_key(watched, 4))
    assert all(len(page) == 4 for page in pages[:-1]) and 1 <= len(pages[-1]) <= 4
    listed = [event for page in pages for event in page]
    assert all(key == watched for _, key in listed)
    # Each listing names the key as its filter, so its own event is the key's too.
    assert [event for event in listed if event[0] != "ListAuditEvents"] == [
        ("CreateKey", watched),
        *[("Encrypt", watched), ("DescribeKey", watched)],
        ("Encrypt", watched),
        ("Encrypt", watched),
        ("Encrypt", watched),
        ("DescribeKey", watched),
        ("Encrypt", watched),
        ("Encrypt", watched),
        ("Encrypt", watched),
        ("DescribeKey", watched),
    ]
    assert listed.count(("ListAuditEvents", watched)) == len(pages) - 1

    daemon.kill()
    daemon.start()
    with daemon.client(TENANT_A) as client:
        client.encrypt(watched, b"after")
    after = [event for page in by_key(watched, 1000) for event in page]
    assert after.count(("Encrypt", watched)) == 8
    assert after.count(("ListAuditEvents", watched)) == len(pages)
    with daemon.admin() as admin:
        assert [e.key_id for e in admin.iter_audit_events(key_id=other)] == [other] * 8
