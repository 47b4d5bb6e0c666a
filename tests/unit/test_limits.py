"""Every request field has a size limit, and an audit event has a bounded size whatever the
input (hsmd/limits.py, hsmd/transport/bounds.py, hsmd/audit/events.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from google.protobuf.descriptor import Descriptor

from hsmd import limits
from hsmd.audit.events import AuditEvent, bounded_keys, bounded_text, chain, encode_line
from hsmd.errors import InvalidArgument
from hsmd.transport.bounds import FIXED_SIZE_TYPES, RULES, check_request
from hsmd.v1 import admin_pb2, region_pb2, resources_pb2, service_pb2


def _request_types() -> list[Descriptor]:
    """Every request message, and every message a request field holds (a peer region's
    ReplicaKey, its versions, ...), whose fields the guard checks by the same rules."""
    found: dict[str, Descriptor] = {}
    pending = [
        method.input_type
        for module in (service_pb2, admin_pb2, region_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    ]
    while pending:
        message = pending.pop()
        if message.full_name in found or message.GetOptions().map_entry:
            continue
        found[message.full_name] = message
        pending += [
            field.message_type
            for field in message.fields
            if field.message_type is not None
            and field.message_type.full_name != "google.protobuf.Timestamp"
        ]
    return sorted(found.values(), key=lambda message: message.full_name)


def _fields(message: Descriptor) -> list[tuple[str, object]]:
    return [(f"{message.name}.{field.name}", field) for field in message.fields]


@pytest.mark.parametrize(
    ("name", "field"),
    [pair for message in _request_types() for pair in _fields(message)],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_every_request_field_has_a_limit(name: str, field: object) -> None:
    assert field.name in RULES or (  # type: ignore[attr-defined]
        field.type in FIXED_SIZE_TYPES and not field.is_repeated  # type: ignore[attr-defined]
    ), f"{name} needs a rule in hsmd/transport/bounds.py and a limit in hsmd/limits.py"


@pytest.mark.parametrize(
    ("request_message", "field", "limit"),
    [
        (service_pb2.DescribeKeyRequest(key_id="k" * 2049), "key_id", "2048 characters"),
        (service_pb2.CreateAliasRequest(alias_name="a" * 257), "alias_name", "256 characters"),
        (
            service_pb2.EncryptRequest(encryption_context={str(n): "" for n in range(65)}),
            "encryption_context",
            "64 entries",
        ),
        (
            service_pb2.DecryptRequest(encryption_context={"k": "v" * 8192}),
            "encryption_context",
            "8192 bytes",
        ),
        (
            service_pb2.CreateKeyRequest(
                policy=resources_pb2.KeyPolicy(administrators=["a"] * 40, users=["u"] * 40)
            ),
            "policy",
            "64 patterns",
        ),
        (
            service_pb2.PutKeyPolicyRequest(
                policy=resources_pb2.KeyPolicy(administrators=["a" * 129])
            ),
            "policy.administrators entry",
            "128 characters",
        ),
        (service_pb2.ListKeysRequest(tag_filter={"t" * 129: ""}), "tag_filter key", "128"),
        (service_pb2.UntagKeyRequest(tag_keys=["t"] * 51), "tag_keys", "50 entries"),
        (service_pb2.ListKeysRequest(page_size=1001), "page_size", "1000"),
        (service_pb2.SignRequest(message=b"m" * 4097), "message", "4096 bytes"),
    ],
)
def test_an_oversized_field_is_named_with_its_limit_and_not_echoed(
    request_message: object, field: str, limit: str
) -> None:
    with pytest.raises(InvalidArgument) as raised:
        check_request(request_message)  # type: ignore[arg-type]
    message = str(raised.value)
    assert message.startswith(field) and limit in message
    assert len(message) < 200


def test_valid_to_outside_what_a_time_can_hold_is_refused() -> None:
    request = service_pb2.ImportKeyMaterialRequest()
    request.valid_to.seconds = 253402300800  # year 10000
    with pytest.raises(InvalidArgument, match="valid_to"):
        check_request(request)


def test_fields_at_their_limits_pass() -> None:
    check_request(
        service_pb2.ReEncryptRequest(
            source_key_id="k" * limits.MAX_KEY_ID_CHARS,
            destination_key_id="alias/" + "a" * 250,
            source_encryption_context={str(n): "" for n in range(64)},
            destination_encryption_context={"k": "v" * 8191},
            ciphertext_blob=b"c" * limits.MAX_CIPHERTEXT_BLOB_BYTES,
        )
    )


def test_a_value_within_its_budget_is_recorded_as_sent() -> None:
    assert bounded_text("alias/orders", limits.AUDIT_KEY_ID_BYTES) == "alias/orders"
    assert bounded_text("k" * 2048, limits.AUDIT_KEY_ID_BYTES) == "k" * 2048
    assert bounded_keys(["b", "a", "a"], limits.AUDIT_CONTEXT_KEYS_BYTES) == ("a", "b")


def test_an_oversized_value_is_recorded_as_its_length_and_digest() -> None:
    recorded = bounded_text("k" * 4_000_000, limits.AUDIT_KEY_ID_BYTES)
    assert recorded.startswith("oversized:4000000 characters:sha256:")
    assert recorded != bounded_text("k" * 3_999_999 + "j", limits.AUDIT_KEY_ID_BYTES)
    # Escapes count: 400 control characters take 2,400 bytes in JSON.
    assert bounded_text("\x01" * 400, limits.AUDIT_KEY_ID_BYTES).startswith("oversized:400 ")
    (keys,) = bounded_keys([str(n) * 100 for n in range(100)], limits.AUDIT_CONTEXT_KEYS_BYTES)
    assert keys.startswith("oversized:100 keys:sha256:")


def test_the_longest_event_fits_the_documented_maximum() -> None:
    worst = "\x01" * 100_000  # every character escaped as \\u0001
    event = AuditEvent(
        time=datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        request_id="f" * 32,
        tenant="t" * limits.MAX_TENANT_NAME_CHARS,
        principal=f"tenant/{'t' * 26}/{'p' * limits.MAX_PRINCIPAL_PATTERN_CHARS}",
        operation="GenerateDataKeyPairWithoutPlaintext",
        key_id=bounded_text("k" * (limits.AUDIT_KEY_ID_BYTES - 2), limits.AUDIT_KEY_ID_BYTES),
        key_version=2**32 - 1,
        encryption_context_keys=bounded_keys(
            [f"{n:04}" + "k" * 120 for n in range(64)], limits.AUDIT_CONTEXT_KEYS_BYTES
        ),
        outcome="FAILED_PRECONDITION",
        peer=bounded_text("ipv6:[" + "f" * 247 + "]", limits.AUDIT_PEER_BYTES),
    )
    assert len(event.key_id) == limits.MAX_KEY_ID_CHARS
    assert len(event.encryption_context_keys) == 64
    line = encode_line(chain(event, 2**62, "0" * 64))
    assert len(line) <= limits.MAX_AUDIT_EVENT_BYTES
    assert len(bounded_text(worst, limits.AUDIT_PEER_BYTES)) < 100
