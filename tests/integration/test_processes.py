"""A coordinator and two worker processes (`[server] processes = 2`, hsmd/workers.py) through
real mTLS: workers serve operations on existing keys, everything else reaches the coordinator,
and the daemon still behaves as one: one audit chain, tenants' quotas counted across workers,
changes seen at once, another tenant's key answered like a missing one, a worker that dies
started again, workers gone with their coordinator."""

from __future__ import annotations

import os
import re
import signal
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from hsmclient import (
    EncryptItem,
    FailedPreconditionError,
    HsmClient,
    HsmError,
    NotFoundError,
    ResourceExhaustedError,
    TenantQuota,
    UnavailableError,
)

from hsmd import devpki
from hsmd.v1 import service_pb2, service_pb2_grpc
from tests.harness import TRUST_DOMAIN, DaemonProcess, TestPki, run_hsmd, wait_until
from tests.stubs import channel

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


def _assert_served_by(daemon: DaemonProcess, operation: str, tenant: str, *by: str) -> None:
    """The access lines say exactly these processes served the operation, once the log has
    them (each process's own thread writes its lines, a moment after the call)."""
    wait_until(
        lambda: _served_by(daemon, operation, tenant) == set(by),
        f"the access lines to say {by} served {operation} of {tenant}",
        timeout=10,
    )


def _worker_pids(daemon: DaemonProcess) -> list[int]:
    return daemon.pids()[1:]


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
    _assert_served_by(daemon, "Encrypt", MINE, "worker-0", "worker-1")
    _assert_served_by(daemon, "BatchEncrypt", MINE, "worker-0", "worker-1")
    _assert_served_by(daemon, "CreateKey", MINE, "coordinator")


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
    _assert_served_by(daemon, "Encrypt", "procs-late", "coordinator")  # forwarded


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
    # The one call a burst holds (the next only after 20 s), not one per worker.
    assert len(admitted) == 1 and len(refused) == CONNECTIONS - 1
    _assert_served_by(daemon, "Encrypt", THROTTLED, "worker-0", "worker-1")


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


def test_a_worker_refuses_to_answer_while_the_audit_log_is_moved_away(
    daemon: DaemonProcess,
) -> None:
    with daemon.client(MINE) as client:
        key_id = client.create_key().key_id
        blob = client.encrypt(key_id, b"secret").ciphertext_blob
    moved = daemon.audit_log.with_suffix(".moved")
    daemon.audit_log.rename(moved)
    try:

        def refused(client: HsmClient) -> None:
            with pytest.raises(UnavailableError):
                client.decrypt(blob)

        _each_connection(daemon, MINE, refused)
    finally:
        moved.rename(daemon.audit_log)
    _each_connection(daemon, MINE, lambda client: client.decrypt(blob))


def test_a_long_certificate_chain_is_forwarded_whole(tmp_path: Path) -> None:
    """Forwarded calls carry the chain in metadata: 6 RSA-4096 intermediates (~12 KiB) are
    over gRPC's default metadata limit, which refuses calls at random from 8 KiB."""
    pki = TestPki(tmp_path / "pki", path_length=6)
    own = DaemonProcess(tmp_path / "own", pki, processes=2)
    own.start()
    try:
        own.create_tenant("chained")
        key = rsa.generate_private_key(65537, 4096)  # one key for every intermediate: faster
        issuer, chain = pki.ca, []
        for depth in range(6):
            issuer = _rsa_intermediate(f"intermediate {depth}", issuer, key)
            chain.insert(0, issuer)
        uri = devpki.tenant_uri(TRUST_DOMAIN, "chained", "app")
        leaf = devpki.issue(issuer, "app", uris=[uri])
        presented = leaf.cert_pem() + b"".join(ca.cert_pem() for ca in chain)
        assert len(presented) > 11 * 1024
        with own.connect((presented, leaf.key_pem()), HsmClient) as client:
            for _ in range(40):
                client.create_key()  # forwarded to the coordinator
    finally:
        own.stop()


def _rsa_intermediate(name: str, issuer: devpki.Issued, key: rsa.RSAPrivateKey) -> devpki.Issued:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.private_key.public_key()),
            critical=False,
        )
        .sign(issuer.private_key, hashes.SHA256())
    )
    return devpki.Issued(certificate, key)


def test_a_worker_that_dies_is_started_again(daemon: DaemonProcess) -> None:
    with daemon.client(MINE) as client:
        key_id = client.create_key().key_id
    victim = _worker_pids(daemon)[0]
    os.kill(victim, signal.SIGKILL)
    wait_until(
        lambda: len(_worker_pids(daemon)) == 2 and victim not in _worker_pids(daemon),
        "a new worker in the dead one's place",
    )
    wait_until(lambda: daemon.log.read_text().count("serves on port") >= 5, "it listens")
    _each_connection(daemon, MINE, lambda client: client.encrypt(key_id, b"after"))


def test_workers_exit_with_their_coordinator(tmp_path: Path, pki: TestPki) -> None:
    own = DaemonProcess(tmp_path / "own", pki, processes=2)
    own.start()
    workers = _worker_pids(own)
    own.stop(signal.SIGKILL)  # the coordinator alone (own.kill() would kill the workers too)
    wait_until(
        lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers),
        "the workers exit once their coordinator is gone",
    )


def test_a_call_without_a_deadline_is_forwarded(daemon: DaemonProcess) -> None:
    """gRPC Python gives such a call ~9.2e18 s to live, which as a timeout fails at once."""
    with channel(daemon, daemon.pki.tenant_client(MINE, "app")) as opened:
        stub = service_pb2_grpc.KeyManagementServiceStub(opened)
        created = stub.CreateKey(service_pb2.CreateKeyRequest())  # no timeout
        assert created.key_metadata.key_id


def test_a_forwarded_call_in_flight_at_a_stop_is_answered(tmp_path: Path, pki: TestPki) -> None:
    own = DaemonProcess(tmp_path / "own", pki, processes=2)
    own.start()
    try:
        own.create_tenant("late")  # after the workers started: its calls are forwarded
        answers: list[object] = []
        with own.client("late") as client:
            generating = threading.Thread(
                target=lambda: answers.append(client.create_key(key_spec="RSA_4096"))
            )
            generating.start()
            wait_until(
                lambda: own.query("SELECT count(*) FROM keys WHERE state = 'CREATING'")[0][0],
                "the RSA-4096 generation under way in the coordinator",
            )
            own.send(signal.SIGTERM)
            generating.join(60)
        assert len(answers) == 1  # answered, not cancelled by the worker's stop
        assert own.process is not None and own.process.wait(60) == 0
    finally:
        if own.process is not None and own.process.poll() is None:
            own.stop()
