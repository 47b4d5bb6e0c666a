"""Single-tenant mode and tenant administration through real daemons: a dedicated instance
serves its tenant with the whole API and refuses every other; operators disable, enable,
delete and cancel; a deleted tenant is destroyed, token and all, only after its window."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from hsmclient import (
    FailedPreconditionError,
    HsmClient,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
)

from hsmd.backend.softhsm_files import scan_tokens
from tests.conftest import TENANT_A
from tests.harness import DaemonProcess

NewDaemon = Callable[..., DaemonProcess]
SOLO = "solo"
DEDICATED = {"mode": "single", "tenant": SOLO}


def _tour(client: HsmClient) -> None:
    """A representative use of the API, as one application of the tenant would make it."""
    key = client.create_key(description="tour")
    assert key.tenancy_mode == "DEDICATED"
    assert client.describe_key(key.key_id).tenancy_mode == "DEDICATED"
    blob = client.encrypt(key.key_id, b"secret", {"purpose": "tour"}).ciphertext_blob
    assert client.decrypt(blob, {"purpose": "tour"}).plaintext == b"secret"
    signing = client.create_key(key_spec="EC_P256", key_usage="SIGN_VERIFY").key_id
    signature = client.sign(signing, b"message", "ECDSA_SHA_256").signature
    assert client.verify(signing, b"message", signature, "ECDSA_SHA_256").signature_valid
    data_key = client.generate_data_key(key.key_id)
    assert client.decrypt(data_key.ciphertext_blob).plaintext == data_key.plaintext
    client.create_alias("alias/tour", key.key_id)
    via_alias = client.encrypt("alias/tour", b"again").ciphertext_blob
    client.rotate_key_on_demand(key.key_id)
    assert client.describe_key(key.key_id).primary_version == 2
    assert client.decrypt(blob, {"purpose": "tour"}).plaintext == b"secret"
    assert client.decrypt(via_alias).plaintext == b"again"
    assert client.schedule_key_deletion(signing, 7).key_state == "PENDING_DELETION"
    assert [k.key_id for k in client.iter_keys()] == [key.key_id, signing]


def test_a_dedicated_instance_serves_its_tenant_with_the_whole_api(new_daemon: NewDaemon) -> None:
    daemon = new_daemon(tenancy=DEDICATED)
    with daemon.client(SOLO) as client:
        assert client.get_capabilities().tenancy_mode == "DEDICATED"
        _tour(client)
    with daemon.admin() as admin:
        assert [(t.name, t.state) for t in admin.list_tenants()] == [(SOLO, "ACTIVE")]


def test_a_dedicated_instance_refuses_every_other_tenant_and_create_tenant(
    new_daemon: NewDaemon,
) -> None:
    daemon = new_daemon(tenancy=DEDICATED)
    refusals = []
    for other in ("intruder", "another"):
        with daemon.client(other) as client, pytest.raises(PermissionDeniedError) as refused:
            client.create_key()
        refusals.append(refused.value.message)
    # The same words for any other tenant: nothing says whether it exists.
    assert refusals == ["this instance serves one tenant only"] * 2
    with daemon.admin() as admin:
        with pytest.raises(FailedPreconditionError, match="one tenant only"):
            admin.create_tenant("another")
        assert [t.name for t in admin.list_tenants()] == [SOLO]
    # After a restart the tenant is the same one, with its keys; still no other.
    with daemon.client(SOLO) as client:
        key_id = client.create_key().key_id
    daemon.stop()
    daemon.start()
    with daemon.client(SOLO) as client:
        assert client.describe_key(key_id).key_state == "ENABLED"
    with daemon.client("intruder") as client, pytest.raises(PermissionDeniedError):
        client.generate_random(8)


def test_a_shared_instance_says_so(daemon: DaemonProcess) -> None:
    with daemon.client(TENANT_A) as client:
        assert client.get_capabilities().tenancy_mode == "SHARED"
        assert client.create_key().tenancy_mode == "SHARED"


def test_a_dedicated_instance_will_not_start_on_a_database_with_other_tenants(
    new_daemon: NewDaemon,
) -> None:
    daemon = new_daemon()
    daemon.create_tenant("first")
    daemon.stop()
    text = daemon.config.read_text()
    daemon.config.write_text(text + '\n[tenancy]\nmode = "single"\ntenant = "second"\n')
    code, output = daemon.start_fails()
    assert code != 0
    assert "also holds first" in output


def test_a_disabled_tenant_is_refused_and_comes_back_with_its_keys(new_daemon: NewDaemon) -> None:
    daemon = new_daemon()
    daemon.create_tenant("paused")
    daemon.create_tenant("busy")
    with daemon.client("paused") as paused, daemon.client("busy") as busy, daemon.admin() as admin:
        key_id = paused.create_key().key_id
        blob = paused.encrypt(key_id, b"kept").ciphertext_blob
        assert admin.disable_tenant("paused").state == "DISABLED"
        with pytest.raises(FailedPreconditionError, match="'paused' is disabled"):
            paused.decrypt(blob)
        with pytest.raises(FailedPreconditionError, match="disabled"):
            paused.describe_key(key_id)
        busy.create_key()  # another tenant is not affected
        assert admin.disable_tenant("paused").state == "DISABLED"  # again: no change
        states = {t.name: t.state for t in admin.list_tenants()}
        assert states == {"paused": "DISABLED", "busy": "ACTIVE"}
        assert admin.enable_tenant("paused").state == "ACTIVE"
        assert paused.decrypt(blob).plaintext == b"kept"
        assert paused.describe_key(key_id).key_state == "ENABLED"
        with pytest.raises(NotFoundError):
            admin.disable_tenant("nobody")
        with pytest.raises(InvalidArgumentError):
            admin.enable_tenant("Not A Name")
        events = [e for e in admin.iter_audit_events(tenant="paused") if "Tenant" in e.operation]
        assert [(e.operation, e.principal) for e in events] == [
            ("CreateTenant", "operator/ops"),
            ("DisableTenant", "operator/ops"),
            ("DisableTenant", "operator/ops"),
            ("EnableTenant", "operator/ops"),
        ]


def test_a_tenant_deletion_can_be_cancelled(new_daemon: NewDaemon) -> None:
    daemon = new_daemon()
    daemon.create_tenant("doomed")
    with daemon.client("doomed") as client, daemon.admin() as admin:
        key_id = client.create_key().key_id
        with pytest.raises(InvalidArgumentError, match="7 to 30"):
            admin.delete_tenant("doomed", 6)
        before = datetime.now(UTC)
        scheduled = admin.delete_tenant("doomed", 7)
        assert scheduled.state == "PENDING_DELETION"
        assert scheduled.deletion_time is not None
        assert scheduled.deletion_time >= before + timedelta(days=7)
        with pytest.raises(FailedPreconditionError, match="scheduled for deletion"):
            client.describe_key(key_id)
        with pytest.raises(FailedPreconditionError, match="PENDING_DELETION"):
            admin.delete_tenant("doomed")
        with pytest.raises(FailedPreconditionError, match="PENDING_DELETION"):
            admin.enable_tenant("doomed")
        (listed,) = admin.list_tenants()
        assert (listed.state, listed.deletion_time) == ("PENDING_DELETION", scheduled.deletion_time)
        cancelled = admin.cancel_tenant_deletion("doomed")
        assert (cancelled.state, cancelled.deletion_time) == ("DISABLED", None)
        with pytest.raises(FailedPreconditionError, match="DISABLED"):
            admin.cancel_tenant_deletion("doomed")
        admin.enable_tenant("doomed")
        assert client.describe_key(key_id).key_state == "ENABLED"
        assert admin.delete_tenant("doomed").deletion_time is not None  # 0 means 30 days


def test_a_deleted_tenant_is_destroyed_after_its_window_and_no_sooner(
    new_daemon: NewDaemon,
) -> None:
    daemon = new_daemon()
    daemon.create_tenant("gone")
    daemon.create_tenant("stays")
    with daemon.client("gone") as gone, daemon.client("stays") as stays, daemon.admin() as admin:
        for _ in range(2):
            gone.create_key()
        kept = stays.create_key().key_id
        blob = stays.encrypt(kept, b"still here").ciphertext_blob
        admin.delete_tenant("gone", 7)
        daemon.advance_clock(timedelta(days=6))
        daemon.wait_for_maintenance()
        daemon.wait_for_maintenance()
        assert {t.name: t.state for t in admin.list_tenants()}["gone"] == "PENDING_DELETION"
        assert "hsmd/gone" in {token.label for token in scan_tokens(daemon.tokens)}
        daemon.advance_clock(timedelta(days=2))
        daemon.wait_for(lambda: [t.name for t in admin.list_tenants()] == ["stays"])
        assert {token.label for token in scan_tokens(daemon.tokens)} == {
            "hsmd/stays",
            "hsmd:daemon",
        }
        assert daemon.query("SELECT COUNT(*) FROM keys WHERE tenant = 'gone'") == [(0,)]
        with pytest.raises(PermissionDeniedError, match="not served"):
            gone.generate_random(8)
        assert stays.decrypt(blob).plaintext == b"still here"
        (destroyed,) = [e for e in admin.iter_audit_events() if e.operation == "DestroyTenant"]
        assert (destroyed.tenant, destroyed.principal, destroyed.outcome) == (
            "gone",
            "daemon",
            "OK",
        )
        # The name is free again: a new tenant of that name starts empty.
        admin.create_tenant("gone")
        assert list(gone.iter_keys()) == []
    daemon.stop()
    daemon.start()  # the removed token's slot is gone after a restart; both tenants are served
    with daemon.client("gone") as gone, daemon.client("stays") as stays:
        gone.create_key()
        assert stays.decrypt(blob).plaintext == b"still here"
