"""Client certificates that gRPC's TLS handshake accepts but hsmd must not, through the daemon.

Where gRPC's handshake itself refuses a certificate the client sees UNAVAILABLE and no RPC code
runs; where the handshake lets it through, hsmd's own check (hsmd.auth.certificates) answers
UNAUTHENTICATED with the reason, and logs that reason on one WARNING line. Each test says which
of the two it expects.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hsmclient import AdminClient, HsmClient, UnauthenticatedError, UnavailableError

from hsmd import devpki
from tests import certs
from tests.conftest import TENANT_A, TENANT_B
from tests.harness import TRUST_DOMAIN, DaemonProcess, TestPki, wait_until

ALPHA = devpki.tenant_uri(TRUST_DOMAIN, TENANT_A, "mallory")
BETA = devpki.tenant_uri(TRUST_DOMAIN, TENANT_B, "bob")


def _connect(
    daemon: DaemonProcess,
    cert: devpki.Issued,
    *chain: devpki.Issued,
    client: type[Any] = HsmClient,
) -> Any:
    """A client that presents cert, followed by chain as its intermediates."""
    pem = cert.cert_pem() + b"".join(issuer.cert_pem() for issuer in chain)
    return daemon.connect((pem, cert.key_pem()), client)


def _refused(daemon: DaemonProcess, call: Callable[[], object]) -> tuple[str, str]:
    """(the caller's message, the new lines of the daemon's log) for a refused call, once its
    access line is there (a thread of the daemon's writes the log, a moment after the call)."""
    offset = daemon.log.stat().st_size

    def new_lines() -> str:
        return daemon.log.read_bytes()[offset:].decode()

    with pytest.raises(UnauthenticatedError) as caught:
        call()
    wait_until(lambda: "UNAUTHENTICATED" in new_lines(), "the refusal's access line")
    return caught.value.message, new_lines()


def test_a_leaf_that_is_a_ca_is_unauthenticated(daemon: DaemonProcess) -> None:
    # The handshake accepts a CA:TRUE leaf from our CA: hsmd's check refuses it.
    rogue = certs.leaf(daemon.pki.ca, [ALPHA], ca=True)
    with _connect(daemon, rogue) as client:
        message, log = _refused(daemon, lambda: client.generate_random(8))
    assert "basicConstraints.cA" in message
    [line] = [line for line in log.splitlines() if "UNAUTHENTICATED" in line]
    assert " WARNING hsmd.access: " in line
    assert "basicConstraints.cA" in line
    assert "Traceback" not in log


def test_a_leaf_with_key_cert_sign_is_unauthenticated(daemon: DaemonProcess) -> None:
    # The handshake accepts it too.
    leaf = certs.leaf(daemon.pki.ca, [ALPHA], key_cert_sign=True)
    with _connect(daemon, leaf) as client:
        message, _ = _refused(daemon, lambda: client.generate_random(8))
    assert "keyCertSign" in message


def test_a_certificate_issued_by_a_ca_leaf_cannot_act_as_another_tenant(
    daemon: DaemonProcess,
) -> None:
    with daemon.client(TENANT_B, "bob") as bob:
        bob_key = bob.create_key(description="beta's").key_id
        assert bob_key in {key.key_id for key in bob.iter_keys()}
    rogue = certs.leaf(daemon.pki.ca, [ALPHA], name="rogue", ca=True)
    impostor = certs.leaf(rogue, [BETA], name="bob")
    # Sent with the rogue leaf as its intermediate, the handshake accepts the chain although the
    # root's path length is 0: hsmd's check refuses it, and beta's keys stay unlisted.
    with _connect(daemon, impostor, rogue) as client:
        message, log = _refused(daemon, lambda: list(client.iter_keys()))
    assert "path length" in message
    assert "path length" in log
    # Sent alone, it does not chain to our CA: the handshake refuses it (UNAVAILABLE).
    with _connect(daemon, impostor) as client, pytest.raises(UnavailableError):
        list(client.iter_keys())


@pytest.mark.parametrize(
    "uris",
    [
        [ALPHA, "https://alpha.example/mallory"],
        ["urn:example:mallory", ALPHA],
        [ALPHA, BETA],
    ],
    ids=["extra-https-uri", "urn-before-spiffe", "two-spiffe-uris"],
)
def test_a_certificate_with_more_than_one_uri_san_is_unauthenticated(
    daemon: DaemonProcess, uris: list[str]
) -> None:
    # gRPC checks nothing about SANs: hsmd's check refuses.
    with _connect(daemon, certs.leaf(daemon.pki.ca, uris)) as client:
        message, _ = _refused(daemon, lambda: client.generate_random(8))
    assert "exactly one URI SAN" in message


def test_a_server_only_certificate_is_refused(daemon: DaemonProcess) -> None:
    # gRPC's handshake itself refuses a client certificate whose EKU lacks clientAuth
    # (UNAVAILABLE); hsmd's check would too (tests/unit/test_client_certificates.py).
    leaf = certs.leaf(daemon.pki.ca, [ALPHA], usages=certs.SERVER_AUTH)
    with _connect(daemon, leaf) as client, pytest.raises(UnavailableError):
        client.generate_random(8)


def test_ordinary_tenant_and_operator_certificates_still_work(daemon: DaemonProcess) -> None:
    with daemon.client(TENANT_A, "alice") as alice:
        key_id = alice.create_key().key_id
        assert alice.decrypt(alice.encrypt(key_id, b"still works").ciphertext_blob).plaintext == (
            b"still works"
        )
    with daemon.admin() as admin:
        assert {TENANT_A, TENANT_B} <= {tenant.name for tenant in admin.list_tenants()}


def test_a_certificate_that_expires_is_refused_on_its_open_connection(
    new_daemon: Callable[..., DaemonProcess],
) -> None:
    daemon = new_daemon()
    daemon.create_tenant(TENANT_A)
    leaf = certs.leaf(
        daemon.pki.ca,
        [devpki.tenant_uri(TRUST_DOMAIN, TENANT_A, "brief")],
        not_after=datetime.now(UTC) + timedelta(days=2),
    )
    with _connect(daemon, leaf) as client:
        assert len(client.generate_random(8)) == 8
        daemon.advance_clock(timedelta(days=3))  # the daemon's clock; no new handshake
        message, _ = _refused(daemon, lambda: client.generate_random(8))
    assert "expired" in message
    with daemon.client(TENANT_A, "long-lived") as other:  # valid for 825 days
        assert len(other.generate_random(8)) == 8


SECOND_ROOT = devpki.create_ca("second root", datetime.now(UTC))


@pytest.fixture(scope="module")
def chained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """A daemon whose CA file holds a root that allows one intermediate, and SECOND_ROOT."""
    pki = TestPki(tmp_path_factory.mktemp("pki-chained"), path_length=1, also_trusted=[SECOND_ROOT])
    daemon = DaemonProcess(tmp_path_factory.mktemp("daemon-chained"), pki)
    daemon.start()
    try:
        daemon.create_tenant(TENANT_A)
        yield daemon
    finally:
        daemon.kill()


def test_an_intermediate_ca_within_the_roots_path_length_is_accepted(
    chained: DaemonProcess,
) -> None:
    now = datetime.now(UTC)
    # No path length of its own, so that only the root's limits the chain.
    intermediate = devpki.create_ca("team CA", now, path_length=None, issuer=chained.pki.ca)
    leaf = devpki.issue(
        intermediate, "app", uris=[devpki.tenant_uri(TRUST_DOMAIN, TENANT_A, "app")]
    )
    with _connect(chained, leaf, intermediate) as client:
        assert len(client.generate_random(8)) == 8
    # Without its intermediate the leaf does not chain: the handshake refuses (UNAVAILABLE).
    with _connect(chained, leaf) as client, pytest.raises(UnavailableError):
        client.generate_random(8)
    # One CA more than the root allows: the handshake lets it through (it does not apply a
    # trust anchor's path length); hsmd refuses.
    deeper = devpki.create_ca("sub-team CA", now, issuer=intermediate)
    beyond = devpki.issue(deeper, "app", uris=[devpki.tenant_uri(TRUST_DOMAIN, TENANT_A, "app")])
    with _connect(chained, beyond, deeper, intermediate) as client:
        message, _ = _refused(chained, lambda: client.generate_random(8))
    assert "path length" in message


def test_every_certificate_of_the_ca_file_is_trusted(chained: DaemonProcess) -> None:
    operator = devpki.issue(SECOND_ROOT, "ops2", uris=[devpki.operator_uri(TRUST_DOMAIN, "ops2")])
    with _connect(chained, operator, client=AdminClient) as admin:
        assert TENANT_A in {tenant.name for tenant in admin.list_tenants()}
