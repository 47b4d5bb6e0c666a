"""A coordinator and two worker processes (`[server] processes = 2`, hsmd/workers.py) through
real mTLS: workers serve operations on existing keys, everything else reaches the coordinator,
and the daemon still behaves as one: one audit chain, tenants' quotas counted across workers,
changes seen at once, another tenant's key answered like a missing one, a worker that dies
started again, workers gone with their coordinator."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hsmclient import (
    EncryptItem,
    FailedPreconditionError,
    HsmClient,
    HsmError,
    NotFoundError,
    ResourceExhaustedError,
    TenantQuota,
)

from tests.harness import DaemonProcess, TestPki, run_hsmd

MINE, THEIRS, THROTTLED = "procs-a", "procs-b", "procs-c"
# Connections per check: SO_REUSEPORT spreads them over the workers at random, so with 24
# the chance that one worker got none is 2^-23.
CONNECTIONS = 24


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, pki: TestPki) -> Iterator[DaemonProcess]:
    process = DaemonProcess(tmp_path_factory.mktemp("processes"), pki, processes=2)
    process.start()
    try:
        for tenant in (MINE, THEIRS, THROTTLED):
            process.create_tenant(tenant)
        process.stop()
        process.start()  # the workers open the tokens of the tenants there are at their start
        yield process
    finally:
        if process.process is not None:
            process.stop()


def _each_connection(daemon: DaemonProcess, tenant: str, call: Callable[[HsmClient], None]) -> None:
    for _ in range(CONNECTIONS):
        with daemon.client(tenant) as client:
            call(client)


def _served_by(daemon: DaemonProcess, operation: str, tenant: str) -> set[str]:
    """Which processes' access lines show the operation for the tenant: "coordinator" or
    "worker-N"."""
    pattern = re.compile(rf"INFO (worker-\d+ )?hsmd\.access: \S+ \S+/{operation} tenant/{tenant}/")
    return {
        (match.group(1) or "coordinator ").strip()
        for match in pattern.finditer(daemon.log.read_text())
    }


def _worker_pids(daemon: DaemonProcess) -> list[int]:
    assert daemon.process is not None
    pids = []
    for task in Path(f"/proc/{daemon.process.pid}/task").iterdir():  # children are per thread
        with contextlib.suppress(FileNotFoundError):  # a thread that just ended
            pids += [int(pid) for pid in (task / "children").read_text().split()]
    return pids


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def test_workers_serve_the_operations_on_keys_and_the_coordinator_the_rest(
    daemon: DaemonProcess,
) -> None:
    with daemon.client(MINE) as client:
        key_id = client.create_key().key_id
        signing = client.create_key(key_spec="EC_P256", key_usage="SIGN_VERIFY").key_id

    def use(client: HsmClient) -> None:
        blob = client.encrypt(key_id, b"on any worker").ciphertext_blob
        assert client.decrypt(blob).plaintext == b"on any worker"
        signature = client.sign(signing, b"message", "ECDSA_SHA_256").signature
        assert client.verify(signing, b"message", signature, "ECDSA_SHA_256").signature_valid
        items = client.batch_encrypt([EncryptItem(key_id, b"item %d" % i) for i in range(3)])
        assert not any(isinstance(item, HsmError) for item in items)

    _each_connection(daemon, MINE, use)
    assert _served_by(daemon, "Encrypt", MINE) == {"worker-0", "worker-1"}
    assert _served_by(daemon, "BatchEncrypt", MINE) == {"worker-0", "worker-1"}
    assert _served_by(daemon, "CreateKey", MINE) == {"coordinator"}


def test_a_change_made_through_the_coordinator_is_seen_by_every_worker_at_once(
    daemon: DaemonProcess,
) -> None:
    with daemon.client(MINE) as client:
        key_id = client.create_key().key_id
        client.disable_key(key_id)

    def refused(client: HsmClient) -> None:
        with pytest.raises(FailedPreconditionError, match="DISABLED"):
            client.encrypt(key_id, b"x")

    _each_connection(daemon, MINE, refused)
    with daemon.client(MINE) as client:
        client.enable_key(key_id)
    _each_connection(daemon, MINE, lambda client: client.encrypt(key_id, b"again"))
    with daemon.admin() as admin:
        admin.disable_tenant(MINE)
    try:

        def tenant_refused(client: HsmClient) -> None:
            with pytest.raises(FailedPreconditionError, match="disabled by an operator"):
                client.encrypt(key_id, b"x")

        _each_connection(daemon, MINE, tenant_refused)
    finally:
        with daemon.admin() as admin:
            admin.enable_tenant(MINE)


def test_another_tenants_key_looks_missing_on_every_worker(daemon: DaemonProcess) -> None:
    with daemon.client(THEIRS) as client:
        theirs = client.create_key().key_id
    missing = "00000000-0000-4000-8000-000000000000"

    def same_answer(client: HsmClient) -> None:
        answers = []
        for key_id in (theirs, missing):
            with pytest.raises(NotFoundError) as refused:
                client.encrypt(key_id, b"x")
            answers.append(str(refused.value).replace(key_id, "<id>"))
        assert answers[0] == answers[1]

    _each_connection(daemon, MINE, same_answer)


def test_a_tenant_made_after_the_workers_started_is_served(daemon: DaemonProcess) -> None:
    daemon.create_tenant("procs-late")
    with daemon.client("procs-late") as client:
        key_id = client.create_key().key_id
        blob = client.encrypt(key_id, b"through the coordinator").ciphertext_blob
        assert client.decrypt(blob).plaintext == b"through the coordinator"


def test_a_rate_quota_counts_the_calls_of_every_worker(daemon: DaemonProcess) -> None:
    with daemon.client(THROTTLED) as client:
        key_id = client.create_key().key_id
    with daemon.admin() as admin:
        admin.set_tenant_quota(THROTTLED, TenantQuota(symmetric_requests_per_second=0.05))
    admitted, refused = [], []

    def call(client: HsmClient) -> None:
        try:
            client.encrypt(key_id, b"x")
            admitted.append(1)
        except ResourceExhaustedError as exc:
            assert exc.retry_after is not None and 0 < exc.retry_after <= 20
            refused.append(1)

    _each_connection(daemon, THROTTLED, call)
    # One call a burst holds, and one more if 20 s passed: not one per worker.
    assert len(admitted) == 1 and len(refused) == CONNECTIONS - 1
    assert _served_by(daemon, "Encrypt", THROTTLED) == {"worker-0", "worker-1"}


def test_one_audit_chain_holds_every_process_events(daemon: DaemonProcess) -> None:
    with daemon.client(MINE) as client:
        key_id = client.create_key().key_id
    _each_connection(daemon, MINE, lambda client: client.encrypt(key_id, b"audited"))
    with daemon.admin() as admin:
        events = [e for e in admin.iter_audit_events(tenant=MINE) if e.key_id == key_id]
    assert [e.operation for e in events] == ["CreateKey"] + ["Encrypt"] * CONNECTIONS
    assert all(e.peer.startswith("ipv4:127.0.0.1:") for e in events)  # the client's address
    checked = run_hsmd(
        "audit",
        "verify",
        f"--log={daemon.audit_log}",
        f"--checkpoint={daemon.checkpoint_file}",
        f"--public-key={daemon.public_key_file}",
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_worker_that_dies_is_started_again(daemon: DaemonProcess) -> None:
    with daemon.client(MINE) as client:
        key_id = client.create_key().key_id
    victim = _worker_pids(daemon)[0]
    os.kill(victim, signal.SIGKILL)
    _wait_for(
        lambda: len(_worker_pids(daemon)) == 2 and victim not in _worker_pids(daemon),
        "a new worker in the dead one's place",
    )
    _wait_for(lambda: daemon.log.read_text().count("serves on port") >= 5, "it listens")
    _each_connection(daemon, MINE, lambda client: client.encrypt(key_id, b"after"))


def test_workers_exit_with_their_coordinator(
    tmp_path: Path, pki: TestPki, daemon: DaemonProcess
) -> None:
    own = DaemonProcess(tmp_path / "own", pki, processes=2)
    own.start()
    workers = _worker_pids(own)
    own.kill()
    _wait_for(
        lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers),
        "the workers exit once their coordinator is gone",
    )
