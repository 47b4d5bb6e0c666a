"""Per-tenant quotas through a real daemon: rates answered RESOURCE_EXHAUSTED with a
RetryInfo delay while another tenant is served, limits answered RESOURCE_EXHAUSTED with
nothing half-made, and quotas set at runtime that survive a restart."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hsmclient import HsmClient, ResourceExhaustedError, TenantQuota

from tests.harness import DaemonProcess, TestPki, serving

THROTTLED, NEIGHBOUR, LIMITED = "quota-a", "quota-b", "quota-c"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, pki: TestPki) -> Iterator[DaemonProcess]:
    yield from serving(tmp_path_factory.mktemp("quotas"), pki, (THROTTLED, NEIGHBOUR, LIMITED))


def test_a_tenant_over_its_rate_waits_the_retry_delay_while_another_is_served(
    daemon: DaemonProcess,
) -> None:
    with daemon.admin() as admin:
        admin.set_tenant_quota(THROTTLED, TenantQuota(symmetric_requests_per_second=0.2))
    with daemon.client(THROTTLED) as throttled, daemon.client(NEIGHBOUR) as neighbour:
        mine, theirs = throttled.create_key().key_id, neighbour.create_key().key_id
        throttled.encrypt(mine, b"the one call a burst holds")
        with pytest.raises(ResourceExhaustedError, match=r"0\.2 symmetric requests") as refused:
            throttled.encrypt(mine, b"one too many")
        # The bucket refills one call in 5 s: the daemon says how long is left of it.
        assert refused.value.retry_after is not None and 0 < refused.value.retry_after <= 5
        for _ in range(20):  # the same moment, another tenant: served every time
            neighbour.encrypt(theirs, b"unaffected")
        throttled.describe_key(mine)  # another class of the same tenant is not throttled
    events = [e for e in _audit(daemon, THROTTLED) if e.operation == "Encrypt"]
    assert [e.outcome for e in events][-2:] == ["OK", "RESOURCE_EXHAUSTED"]


def test_quotas_are_set_got_listed_and_survive_a_restart(daemon: DaemonProcess) -> None:
    with daemon.admin() as admin:
        set_quota = admin.set_tenant_quota(NEIGHBOUR, TenantQuota(max_keys=500, max_aliases=9))
        assert set_quota.overrides == TenantQuota(max_keys=500, max_aliases=9)
        assert set_quota.effective.max_keys == 500
        assert set_quota.effective.symmetric_requests_per_second == 10_000.0  # the default
    daemon.stop()
    daemon.start()
    with daemon.client(NEIGHBOUR) as neighbour_client:
        neighbour_client.list_keys()
    with daemon.admin() as admin:
        got = admin.get_tenant_quota(NEIGHBOUR)
        assert got.overrides == TenantQuota(max_keys=500, max_aliases=9)
        listed = {tenant.name: tenant for tenant in admin.list_tenants()}
    neighbour = listed[NEIGHBOUR]
    assert neighbour.quota is not None and neighbour.quota.max_keys == 500
    assert neighbour.usage is not None and neighbour.usage.keys >= 1
    assert neighbour.usage.audit_bytes > 0  # its calls since this start
    assert listed[LIMITED].quota is not None and listed[LIMITED].quota.max_keys == 10_000
    with daemon.admin() as admin:
        admin.set_tenant_quota(NEIGHBOUR, TenantQuota())
        assert admin.get_tenant_quota(NEIGHBOUR).overrides == TenantQuota()


def test_operators_set_and_get_quotas_with_the_hsmd_command(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    cert, key = daemon.pki.operator_client()
    (tmp_path / "op.pem").write_bytes(cert)
    (tmp_path / "op-key.pem").write_bytes(key)
    env = dict(
        os.environ,
        HSM_ENDPOINT=daemon.endpoint,
        HSM_CA_CERT=str(daemon.pki.ca_cert),
        HSM_CLIENT_CERT=str(tmp_path / "op.pem"),
        HSM_CLIENT_KEY=str(tmp_path / "op-key.pem"),
    )

    def hsmd(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "hsmd", "tenant", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    result = hsmd(
        "quota", "set", LIMITED, "--max-aliases", "42", "--audit-requests-per-second", "3"
    )
    assert result.returncode == 0, result.stderr
    assert "max_aliases\t42\tset" in result.stdout
    got = hsmd("quota", "get", LIMITED)
    assert "audit_requests_per_second\t3\tset" in got.stdout
    assert "max_keys\t10000\tdefault" in got.stdout
    bad = hsmd("quota", "set", LIMITED, "--max-tags-per-key", "99")
    assert bad.returncode == 1 and "max_tags_per_key must be between 0 and 50" in bad.stderr
    listed = hsmd("list")
    assert any(
        line.startswith(LIMITED) and "aliases 0/42" in line for line in listed.stdout.splitlines()
    )


def test_resource_limits_refuse_creations_and_leave_nothing_half_made(
    daemon: DaemonProcess,
) -> None:
    with daemon.admin() as admin:
        admin.set_tenant_quota(
            LIMITED,
            TenantQuota(max_keys=2, max_aliases=1, max_tags_per_key=2, max_pending_imports=1),
        )
    with daemon.client(LIMITED) as client:
        external = client.create_key(origin="EXTERNAL").key_id
        key = client.create_key(tags={"a": "1"}).key_id
        objects = len(daemon.token_objects(LIMITED))
        with pytest.raises(ResourceExhaustedError, match="at most 2 keys") as refused:
            client.create_key()
        assert refused.value.retry_after is None  # waiting will not lift a limit
        assert len(list(client.iter_keys())) == 2
        assert len(daemon.token_objects(LIMITED)) == objects
        client.create_alias("alias/first", key)
        with pytest.raises(ResourceExhaustedError, match="at most 1 aliases"):
            client.create_alias("alias/second", key)
        assert [a.alias_name for a in client.iter_aliases()] == ["alias/first"]
        with pytest.raises(ResourceExhaustedError, match="at most 2 tags"):
            client.tag_key(key, {"b": "2", "c": "3"})
        assert dict(client.describe_key(key).tags) == {"a": "1"}
        client.get_parameters_for_import(external, "RSAES_OAEP_SHA_1")
        objects = len(daemon.token_objects(LIMITED))
        with pytest.raises(ResourceExhaustedError, match="at most 1 pending import"):
            client.get_parameters_for_import(external, "RSAES_OAEP_SHA_1")
        assert len(daemon.token_objects(LIMITED)) == objects
    with daemon.admin() as admin:
        usage = {t.name: t.usage for t in admin.list_tenants()}[LIMITED]
        assert usage is not None
        assert (usage.keys, usage.aliases, usage.pending_imports) == (2, 1, 1)
        admin.set_tenant_quota(LIMITED, TenantQuota(max_keys=3))
    with daemon.client(LIMITED) as client:  # a raised limit applies at the next call
        client.create_key()


def _audit(daemon: DaemonProcess, tenant: str) -> list:  # type: ignore[type-arg]
    with daemon.admin() as admin:
        return list(admin.iter_audit_events(tenant=tenant))


def test_the_client_reads_the_delay_of_a_throttled_call(daemon: DaemonProcess) -> None:
    with daemon.admin() as admin:
        admin.set_tenant_quota(THROTTLED, TenantQuota(management_requests_per_second=0.01))
    client: HsmClient
    with daemon.client(THROTTLED) as client:
        client.list_keys()
        with pytest.raises(ResourceExhaustedError) as refused:
            client.list_keys()
    assert refused.value.retry_after is not None and 50 < refused.value.retry_after <= 100
    assert "retry after" in str(refused.value)


def test_a_call_over_its_rate_gets_the_rates_answer_while_its_tenants_slots_are_busy(
    new_daemon: Callable[..., DaemonProcess],
) -> None:
    """A call refused by its rate quota waits for one of its tenant's scheduler slots to
    record the refusal in (its tenant's cost, not the others'). When none frees within
    max_wait (the tenant's RSA-4096 generations hold them), it is still answered as the rate
    refusal, with the rate's retry delay, not as "the HSM is busy"; and it is audited."""
    daemon = new_daemon(scheduler={"max_wait_seconds": 0.5})
    daemon.create_tenant(THROTTLED)
    with daemon.admin() as admin:
        admin.set_tenant_quota(THROTTLED, TenantQuota(symmetric_requests_per_second=0.01))
    with daemon.client(THROTTLED) as client:
        key = client.create_key().key_id
        client.encrypt(key, b"the one call a burst holds")
        done = threading.Event()

        generating = threading.Barrier(3)  # both generators about to call, and this test

        def generate() -> None:  # seconds each, in the tenant's (two) slots
            with daemon.client(THROTTLED, "generator") as generator:
                generating.wait(60)
                while not done.is_set():
                    generator.create_key("RSA_4096", "SIGN_VERIFY")

        generators = [threading.Thread(target=generate) for _ in range(2)]
        for thread in generators:
            thread.start()
        refusals: list[tuple[ResourceExhaustedError, float]] = []
        try:
            generating.wait(60)
            deadline = time.monotonic() + 120
            while not refusals or refusals[-1][1] < 0.5:  # until one waited out max_wait
                assert time.monotonic() < deadline, "the generations never held the slots"
                started = time.monotonic()
                with pytest.raises(ResourceExhaustedError) as refused:
                    client.encrypt(key, b"one too many")
                refusals.append((refused.value, time.monotonic() - started))
        finally:
            done.set()
            for thread in generators:
                thread.join(120)
    for refusal, _ in refusals:
        assert "0.01 symmetric requests" in refusal.message
        assert refusal.retry_after is not None and refusal.retry_after > 0
    events = [e for e in _audit(daemon, THROTTLED) if e.operation == "Encrypt"]
    assert [e.outcome for e in events] == ["OK"] + ["RESOURCE_EXHAUSTED"] * len(refusals)
