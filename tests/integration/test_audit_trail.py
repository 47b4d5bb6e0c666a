"""The audit trail through the real daemon: one event per RPC, a hash chain that shows any
tampering, no secrets in the file, fail-closed when it cannot be written, and per-tenant reads.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from hsmclient import (
    AdminClient,
    AlreadyExistsError,
    AuditEvent,
    HsmClient,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
    UnavailableError,
)

from hsmd.backend.pins import PinDeriver
from hsmd.v1 import service_pb2, service_pb2_grpc
from tests.conftest import TENANT_A, TENANT_B
from tests.harness import DaemonProcess

NewDaemon = Callable[..., DaemonProcess]
OPERATOR = "operator/ops"  # the harness's operator certificate
APP = f"tenant/{TENANT_A}/app"


def _fresh(new_daemon: NewDaemon) -> DaemonProcess:
    """A daemon of the test's own with tenant alpha, whose log holds only CreateTenant."""
    daemon = new_daemon()
    daemon.create_tenant(TENANT_A)
    return daemon


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _rewrite_in_place(path: Path, content: bytes) -> None:
    """Replaces the file's bytes without replacing the file, so the daemon keeps writing it."""
    with path.open("r+b") as f:
        f.write(content)
        f.truncate()


def _all_events(admin: AdminClient) -> list[AuditEvent]:
    """Every event in one page (a second page would see the first page's own event)."""
    events, token = admin.list_audit_events(page_size=1000)
    assert token == ""
    return events


# --- one event per RPC ---------------------------------------------------------------------


def test_every_rpc_appears_exactly_once_in_order(new_daemon: NewDaemon) -> None:
    daemon = new_daemon()
    expected: list[tuple[str, str, str, str]] = []  # (operation, outcome, principal, tenant)

    def made(operation: str, outcome: str, principal: str, about: str = "") -> None:
        """about: the tenant an operator's tenant administration names."""
        tenant = principal.split("/")[1] if principal.startswith("tenant/") else about
        expected.append((operation, outcome, principal, tenant))

    marker = uuid.uuid4().hex
    context = {"purpose": f"purpose-value-{marker}", "order": f"order-value-{marker}"}
    missing = str(uuid.uuid4())
    with (
        daemon.admin() as admin,
        daemon.client(TENANT_A, "app") as app,
        daemon.client(TENANT_A, "intruder") as intruder,
        daemon.connect(daemon.pki.client("nobody", [])) as anonymous,
    ):
        admin.create_tenant(TENANT_A)
        made("CreateTenant", "OK", OPERATOR, TENANT_A)
        with pytest.raises(AlreadyExistsError):
            admin.create_tenant(TENANT_A)
        made("CreateTenant", "ALREADY_EXISTS", OPERATOR, TENANT_A)
        key_id = app.create_key().key_id
        made("CreateKey", "OK", APP)
        first = app.encrypt(key_id, b"first", context).ciphertext_blob
        made("Encrypt", "OK", APP)
        assert app.decrypt(first, context).plaintext == b"first"
        made("Decrypt", "OK", APP)
        assert app.rotate_key_on_demand(key_id).key_version == 2
        made("RotateKeyOnDemand", "OK", APP)
        second = app.encrypt(key_id, b"second").ciphertext_blob
        made("Encrypt", "OK", APP)
        app.decrypt(first, context)  # still made by version 1
        made("Decrypt", "OK", APP)
        app.decrypt(second)
        made("Decrypt", "OK", APP)
        with pytest.raises(NotFoundError):
            app.describe_key(missing)
        made("DescribeKey", "NOT_FOUND", APP)
        with pytest.raises(PermissionDeniedError):
            intruder.encrypt(key_id, b"x", context)
        made("Encrypt", "PERMISSION_DENIED", f"tenant/{TENANT_A}/intruder")
        with pytest.raises(InvalidArgumentError):
            app.generate_random(0)
        made("GenerateRandom", "INVALID_ARGUMENT", APP)
        with pytest.raises(UnauthenticatedError):
            anonymous.generate_random(8)
        made("GenerateRandom", "UNAUTHENTICATED", "")
        assert [t.name for t in admin.list_tenants()] == [TENANT_A]
        made("ListTenants", "OK", OPERATOR)
        app.list_audit_events()
        made("ListAuditEvents", "OK", APP)

        events = _all_events(admin)
        assert [(e.operation, e.outcome, e.principal, e.tenant) for e in events] == expected
        assert [e.sequence for e in events] == list(range(1, len(expected) + 1))
        assert len({e.request_id for e in events}) == len(events)
        assert all(e.peer for e in events)

        encrypts = [e for e in events if e.operation in ("Encrypt", "Decrypt")]
        assert [(e.operation, e.key_id, e.key_version) for e in encrypts] == [
            ("Encrypt", key_id, 1),
            ("Decrypt", key_id, 1),
            ("Encrypt", key_id, 2),
            ("Decrypt", key_id, 1),
            ("Decrypt", key_id, 2),
            ("Encrypt", key_id, 0),  # refused: the key the caller named, no version
        ]
        assert [e.encryption_context_keys for e in encrypts] == [
            ("order", "purpose"),
            ("order", "purpose"),
            (),
            ("order", "purpose"),
            (),
            ("order", "purpose"),
        ]
        described = [e.key_id for e in events if e.operation == "DescribeKey"]
        assert described == [missing]  # a NOT_FOUND event names what was asked for

        # The listing is itself an event, recorded once, after what it listed.
        again = _all_events(admin)
        assert again[: len(events)] == events
        assert [(e.operation, e.principal) for e in again[len(events) :]] == [
            ("ListAuditEvents", OPERATOR)
        ]
    log_text = daemon.audit_log.read_text()
    assert marker not in log_text
    assert len(log_text.splitlines()) == len(expected) + 2  # and the two listings


def test_a_caller_refused_for_its_kind_of_identity_is_named(new_daemon: NewDaemon) -> None:
    """The certificate was authenticated, so the event says who was refused."""
    daemon = _fresh(new_daemon)
    with daemon.connect(daemon.pki.operator_client(), HsmClient) as operator:
        with pytest.raises(PermissionDeniedError):
            operator.generate_random(8)
    with daemon.client("unserved", "ghost") as ghost, pytest.raises(PermissionDeniedError):
        ghost.generate_random(8)
    with daemon.admin() as admin:
        events = _all_events(admin)[1:]
    assert [(e.operation, e.outcome, e.principal) for e in events] == [
        ("GenerateRandom", "PERMISSION_DENIED", OPERATOR),
        ("GenerateRandom", "PERMISSION_DENIED", "tenant/unserved/ghost"),
    ]
    assert events[0].tenant == ""


def test_a_keys_events_name_it_from_its_creation_on(new_daemon: NewDaemon) -> None:
    """ListAuditEvents(key_id=...) finds what was done to a key, CreateKey included."""
    daemon = _fresh(new_daemon)
    with daemon.client(TENANT_A, "app") as app:
        key_id = app.create_key().key_id
        app.encrypt(key_id, b"x")
        app.disable_key(key_id)
        events = list(app.iter_audit_events(key_id=key_id))
    assert [(e.operation, e.key_id) for e in events] == [
        ("CreateKey", key_id),
        ("Encrypt", key_id),
        ("DisableKey", key_id),
    ]


# --- the hash chain ------------------------------------------------------------------------


def _delete(lines: list[bytes], position: int) -> list[bytes]:
    return lines[: position - 1] + lines[position:]


def _edit(lines: list[bytes], position: int) -> list[bytes]:
    """Changes one value and re-encodes the line canonically, so only its hash is wrong."""
    obj = json.loads(lines[position - 1])
    obj["principal"] = "tenant/alpha/someone-else"
    changed = list(lines)
    changed[position - 1] = (
        json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
    )
    return changed


def _swap(lines: list[bytes], position: int) -> list[bytes]:
    changed = list(lines)
    changed[position - 1], changed[position] = changed[position], changed[position - 1]
    return changed


# Positions from the end are negative: -1 is the last line (the first VerifyAuditLog's event).
_TAMPERING = [
    pytest.param(tamper, position, id=f"{tamper.__name__[1:]}-{position}")
    for tamper, positions in ((_delete, (1, 4, -1)), (_edit, (1, 4, -1)), (_swap, (1, 4, -2)))
    for position in positions
]


@pytest.mark.parametrize(("tamper", "position"), _TAMPERING)
def test_tampering_with_one_line_is_reported_at_its_position_and_stops_the_log(
    new_daemon: NewDaemon, tamper: Callable[[list[bytes], int], list[bytes]], position: int
) -> None:
    daemon = _fresh(new_daemon)
    with daemon.client(TENANT_A, "app") as app:
        key_id = app.create_key().key_id
        for _ in range(5):
            app.encrypt(key_id, b"x")
    with daemon.admin() as admin:
        first = admin.verify_audit_log()
        assert (first.valid, first.events_checked, first.first_broken_position) == (True, 7, 0)
        original = daemon.audit_log.read_bytes()
        lines = _lines(daemon.audit_log)
        assert len(lines) == 8  # CreateTenant, CreateKey, 5 x Encrypt, VerifyAuditLog
        at = position if position > 0 else len(lines) + 1 + position
        tampered = b"".join(tamper(lines, at))
        _rewrite_in_place(daemon.audit_log, tampered)

        result = admin.verify_audit_log()
        assert (result.valid, result.first_broken_position, result.events_checked) == (
            False,
            at,
            at - 1,
        )
        assert result.problem
        if tamper is _delete and at == len(lines):
            assert "truncated" in result.problem

        # Nothing more goes into a file that no longer holds what the daemon wrote.
        with pytest.raises(UnavailableError):
            admin.list_tenants()
        with pytest.raises(UnavailableError):
            admin.verify_audit_log()
        assert daemon.audit_log.read_bytes() == tampered
    assert "is broken" in daemon.log.read_text()

    # Putting the line back and restarting mends it.
    _rewrite_in_place(daemon.audit_log, original)
    daemon.stop()
    daemon.start()
    with daemon.admin() as admin:
        mended = admin.verify_audit_log()
        assert (mended.valid, mended.events_checked) == (True, 8)


def test_a_restarted_daemon_continues_the_chain(new_daemon: NewDaemon) -> None:
    daemon = _fresh(new_daemon)
    daemon.stop()  # a clean stop signs a checkpoint: line 2
    daemon.start()
    with daemon.admin() as admin:
        admin.list_tenants()
        result = admin.verify_audit_log()
        assert (result.valid, result.events_checked) == (True, 3)
        assert (result.checkpoints_verified, result.last_checkpoint_position) == (1, 2)
        assert (result.last_checkpoint_head, result.checkpoint_file_position) == (1, 2)
        # Checkpoints are lines of the chain, not events: the listing skips them.
        assert [e.sequence for e in _all_events(admin)] == [1, 3, 4]


# --- no secrets in the log -----------------------------------------------------------------


def _forms(secret: bytes) -> dict[str, bytes]:
    return {
        "raw": secret,
        "hex": secret.hex().encode(),
        "HEX": secret.hex().upper().encode(),
        "base64": base64.b64encode(secret),
        "base64url": base64.urlsafe_b64encode(secret).rstrip(b"="),
        "base64-unpadded": base64.b64encode(secret).rstrip(b"="),
    }


def test_the_log_holds_no_plaintext_data_key_pin_or_context_value(
    daemon: DaemonProcess,
) -> None:
    secrets: dict[str, bytes] = {"master secret": daemon.master_secret}
    marker = uuid.uuid4().hex
    context_key, context_value = f"ctx-key-{marker}", f"ctx-value-{marker}"
    context = {context_key: context_value}
    with daemon.client(TENANT_A, "app") as app:
        key_id = app.create_key().key_id
        for n in range(3):
            plaintext = f"plaintext-{n}-{uuid.uuid4().hex}".encode()
            secrets[f"plaintext {n}"] = plaintext
            blob = app.encrypt(key_id, plaintext, context).ciphertext_blob
            assert app.decrypt(blob, context).plaintext == plaintext
        data_key = app.generate_data_key(key_id, encryption_context=context)
        secrets["data key"] = data_key.plaintext
        assert app.decrypt(data_key.ciphertext_blob, context).plaintext == data_key.plaintext
        secrets["64-byte data key"] = app.generate_data_key(key_id, number_of_bytes=64).plaintext
        for spec in ("EC_P256", "RSA_2048"):
            pair = app.generate_data_key_pair(key_id, spec, encryption_context=context)
            secrets[f"{spec} private key"] = pair.private_key_plaintext
        secrets["random bytes"] = app.generate_random(32)
    pins = PinDeriver(daemon.master_secret)
    for tenant in (TENANT_A, TENANT_B):
        for role, pin in (("user", pins.user_pin(tenant)), ("SO", pins.so_pin(tenant))):
            secrets[f"{tenant} {role} PIN"] = pin.encode()
            secrets[f"{tenant} {role} PIN, decoded"] = base64.urlsafe_b64decode(pin)

    log = daemon.audit_log.read_bytes()
    found = [
        f"{name} ({form})"
        for name, secret in secrets.items()
        for form, encoded in _forms(secret).items()
        if encoded in log
    ]
    assert found == []
    assert context_key.encode() in log
    assert not any(encoded in log for encoded in _forms(context_value.encode()).values())
    assert context_value.encode() not in daemon.log.read_bytes()


# --- fail closed ---------------------------------------------------------------------------


def test_with_the_log_moved_away_requests_fail_and_nothing_is_applied(
    new_daemon: NewDaemon,
) -> None:
    """One attempt per call (tests/conftest.py): one event each."""
    daemon = _fresh(new_daemon)
    moved = daemon.audit_log.with_name("audit.jsonl.moved")
    alias = "alias/never"
    with daemon.client(TENANT_A, "app") as app, daemon.admin() as admin:
        key = app.create_key()
        os.rename(daemon.audit_log, moved)
        try:
            refused: list[tuple[str, Callable[[], object]]] = [
                ("CreateKey", lambda: app.create_key(description="never")),
                ("Encrypt", lambda: app.encrypt(key.key_id, b"x")),
                ("CreateAlias", lambda: app.create_alias(alias, key.key_id)),
                ("ScheduleKeyDeletion", lambda: app.schedule_key_deletion(key.key_id, 7)),
                ("CreateTenant", lambda: admin.create_tenant(TENANT_B)),
                ("VerifyAuditLog", admin.verify_audit_log),
            ]
            for _, call in refused:
                with pytest.raises(UnavailableError):
                    call()
        finally:
            os.rename(moved, daemon.audit_log)

        assert [k.key_id for k in app.iter_keys()] == [key.key_id]
        assert daemon.query("SELECT key_id, state FROM keys") == [(key.key_id, "ENABLED")]
        assert daemon.query("SELECT count(*) FROM aliases") == [(0,)]
        assert list(app.iter_aliases()) == []
        after = app.describe_key(key.key_id)
        assert (after.key_state, after.deletion_date) == ("ENABLED", None)
        assert [t.name for t in admin.list_tenants()] == [TENANT_A]
        assert app.encrypt(key.key_id, b"served again").key_id == key.key_id
        result = admin.verify_audit_log()
        assert result.valid
        # The refusals reached the same file: each is recorded, once, as UNAVAILABLE.
        events = _all_events(admin)
    assert [(e.operation, e.outcome) for e in events[2:8]] == [
        (operation, "UNAVAILABLE") for operation, _ in refused
    ]
    assert [(e.operation, e.outcome) for e in events[8:]] == [
        ("ListKeys", "OK"),
        ("ListAliases", "OK"),
        ("DescribeKey", "OK"),
        ("ListTenants", "OK"),
        ("Encrypt", "OK"),
        ("VerifyAuditLog", "OK"),
    ]
    assert result.events_checked == len(events) - 1


# --- who reads what ------------------------------------------------------------------------


def _raw_list_audit_events(
    daemon: DaemonProcess, tenant: str, request: service_pb2.ListAuditEventsRequest
) -> grpc.StatusCode:
    cert, key = daemon.pki.tenant_client(tenant, "app")
    credentials = grpc.ssl_channel_credentials(daemon.pki.ca_cert.read_bytes(), key, cert)
    with grpc.secure_channel(daemon.endpoint, credentials) as channel:
        stub = service_pb2_grpc.KeyManagementServiceStub(channel)
        try:
            stub.ListAuditEvents(request, timeout=10)
        except grpc.RpcError as error:
            return error.code()
    return grpc.StatusCode.OK


def test_a_tenant_sees_only_its_own_events_and_an_operator_sees_all(
    daemon: DaemonProcess,
) -> None:
    with daemon.client(TENANT_A, "app") as alpha, daemon.client(TENANT_B, "app") as beta:
        alpha_key = alpha.create_key().key_id
        alpha.encrypt(alpha_key, b"alpha's")
        beta_key = beta.create_key().key_id
        beta.encrypt(beta_key, b"beta's")
        with pytest.raises(NotFoundError):
            beta.describe_key(alpha_key)  # beta's call, though it names alpha's key

        seen_by_alpha = list(alpha.iter_audit_events(page_size=1000))
        assert {e.tenant for e in seen_by_alpha} == {TENANT_A}
        # Its own principals' calls, and the operators' administration of the tenant.
        own = [e for e in seen_by_alpha if e.principal.startswith("tenant/")]
        assert {e.principal.split("/")[1] for e in own} == {TENANT_A}
        administration = {e.operation for e in seen_by_alpha if e not in own}
        assert administration == {"CreateTenant"}
        assert beta_key not in {e.key_id for e in seen_by_alpha}
        assert ("Encrypt", alpha_key) in {(e.operation, e.key_id) for e in seen_by_alpha}
        assert alpha.list_audit_events(key_id=beta_key) == ([], "")
        assert [e.operation for e in beta.iter_audit_events(key_id=alpha_key)] == ["DescribeKey"]

    with daemon.admin() as admin:
        seen_by_operator = list(admin.iter_audit_events(page_size=1000))
        assert {TENANT_A, TENANT_B} <= {e.tenant for e in seen_by_operator}
        # By key: what was done to it, and alpha's listing that named it as its filter.
        by_key = [
            (e.tenant, e.operation, e.outcome)
            for e in admin.iter_audit_events(key_id=beta_key)
            if e.operation != "CreateKey"  # see test_a_keys_events_name_it_from_its_creation_on
        ]
        assert by_key == [(TENANT_B, "Encrypt", "OK"), (TENANT_A, "ListAuditEvents", "OK")]
        beta_only = list(admin.iter_audit_events(tenant=TENANT_B, page_size=1000))
        assert {e.tenant for e in beta_only} == {TENANT_B}
        assert [e for e in seen_by_operator if e.tenant == TENANT_B] == beta_only
        assert list(admin.iter_audit_events(tenant="nosuchtenant")) == []

    asked = service_pb2.ListAuditEventsRequest(tenant=TENANT_B)
    assert _raw_list_audit_events(daemon, TENANT_A, asked) == grpc.StatusCode.INVALID_ARGUMENT
    own = service_pb2.ListAuditEventsRequest(tenant=TENANT_A)
    assert _raw_list_audit_events(daemon, TENANT_A, own) == grpc.StatusCode.INVALID_ARGUMENT


def test_tenant_principals_cannot_call_the_admin_audit_rpcs(daemon: DaemonProcess) -> None:
    with daemon.connect(daemon.pki.tenant_client(TENANT_A, "app"), AdminClient) as tenant:
        with pytest.raises(PermissionDeniedError):
            tenant.verify_audit_log()
        with pytest.raises(PermissionDeniedError):
            tenant.list_audit_events()


def test_the_log_file_is_readable_by_its_owner_only(daemon: DaemonProcess) -> None:
    assert stat.S_IMODE(daemon.audit_log.stat().st_mode) == 0o600
