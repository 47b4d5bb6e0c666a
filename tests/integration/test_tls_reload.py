"""Certificates that rotate and revoke without a restart (hsmd/transport/tls.py), through a real
daemon: a new server certificate and CA bundle written over the old are used by new
connections, a client whose serial joins the CRL fails at its next call on the connection it
has, and a broken new file is refused with a log line while the one in use stays.

Each test has a PKI of its own: it rewrites the files the daemon reads."""

from __future__ import annotations

import signal
import socket
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from hsmclient import HsmClient, UnauthenticatedError, UnavailableError

from hsmd import devpki
from tests.harness import TRUST_DOMAIN, DaemonProcess, TestPki, wait_until

TENANT = "rotating"
CHECK_SECONDS = 0.2  # how often the daemon looks at its files, in the tests that poll


@pytest.fixture
def pki(tmp_path: Path) -> TestPki:
    return TestPki(tmp_path / "pki")


def _daemon(directory: Path, pki: TestPki, check_seconds: float) -> DaemonProcess:
    crl = pki.directory / "crl.pem"
    crl.write_bytes(devpki.revocation_list(pki.ca, [], datetime.now(UTC)))
    daemon = DaemonProcess(
        directory, pki, tls={"crl": str(crl), "reload_check_seconds": check_seconds}
    )
    daemon.start()
    daemon.create_tenant(TENANT)
    return daemon


@pytest.fixture
def daemon(tmp_path: Path, pki: TestPki) -> Iterator[DaemonProcess]:
    process = _daemon(tmp_path / "state", pki, CHECK_SECONDS)
    yield process
    process.stop()


def _works(client: HsmClient) -> bool:
    try:
        client.generate_random(8)
    except (UnauthenticatedError, UnavailableError):
        return False
    return True


def _served_certificate(daemon: DaemonProcess, pki: TestPki) -> x509.Certificate:
    """The certificate a new connection's handshake shows (a TLS client of our own)."""
    cert, key = pki.tenant_client(TENANT, "probe")
    (pki.directory / "probe.pem").write_bytes(cert)
    (pki.directory / "probe-key.pem").write_bytes(key)
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    context.load_cert_chain(pki.directory / "probe.pem", pki.directory / "probe-key.pem")
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_a_revoked_client_fails_at_its_next_call(daemon: DaemonProcess, pki: TestPki) -> None:
    revoked_pair = pki.tenant_client(TENANT, "leaver")
    serial = x509.load_pem_x509_certificate(revoked_pair[0]).serial_number
    with daemon.connect(revoked_pair) as leaver, daemon.client(TENANT, "stayer") as stayer:
        assert _works(leaver) and _works(stayer)
        (pki.directory / "crl.pem").write_bytes(
            devpki.revocation_list(pki.ca, [serial], datetime.now(UTC))
        )
        # The same client, on the connection it already has.
        wait_until(lambda: not _works(leaver), "the revoked client is refused", timeout=30)
        with pytest.raises(UnauthenticatedError, match="revoked"):
            leaver.generate_random(8)
        assert _works(stayer)


def test_a_new_server_certificate_is_used_by_new_connections(
    daemon: DaemonProcess, pki: TestPki
) -> None:
    before = _served_certificate(daemon, pki)
    renewed = devpki.issue(pki.ca, "localhost", hosts=["localhost", "127.0.0.1"], server=True)
    renewed.write(pki.server_cert, pki.server_key)
    wait_until(
        lambda: _served_certificate(daemon, pki).serial_number == renewed.certificate.serial_number,
        "new connections show the renewed certificate",
        timeout=30,
    )
    assert before.serial_number != renewed.certificate.serial_number
    with daemon.client(TENANT) as client:
        assert _works(client)


def test_a_new_ca_bundle_trusts_its_clients_without_a_restart(
    daemon: DaemonProcess, pki: TestPki
) -> None:
    second_ca = devpki.create_ca("second CA", datetime.now(UTC))
    newcomer = pki.client(
        "new@rotating", [devpki.tenant_uri(TRUST_DOMAIN, TENANT, "new")], ca=second_ca
    )
    with daemon.connect(newcomer) as client:
        assert not _works(client)  # its CA is not trusted yet
    pki.ca_cert.write_bytes(pki.ca.cert_pem() + second_ca.cert_pem())

    def newcomer_works() -> bool:
        with daemon.connect(newcomer) as fresh:
            return _works(fresh)

    wait_until(newcomer_works, "a client of the added CA is served", timeout=30)
    with daemon.client(TENANT) as client:
        assert _works(client)  # the first CA's clients too


def test_a_broken_file_is_refused_and_the_one_in_use_stays(
    daemon: DaemonProcess, pki: TestPki
) -> None:
    in_use = _served_certificate(daemon, pki)
    good_key = pki.server_key.read_bytes()
    other_key = devpki.issue(pki.ca, "other", server=True).key_pem()
    pki.server_key.write_bytes(other_key)  # not the certificate's key
    wait_until(
        lambda: "tls.server_key is not the key of tls.server_cert" in daemon.log.read_text(),
        "the mismatched key is refused in the log",
        timeout=30,
    )
    (pki.directory / "crl.pem").write_bytes(b"not a CRL")
    wait_until(
        lambda: "tls.crl holds no CRL" in daemon.log.read_text(),
        "the broken CRL is refused in the log",
        timeout=30,
    )
    assert _served_certificate(daemon, pki).serial_number == in_use.serial_number
    with daemon.client(TENANT) as client:
        assert _works(client)
    pki.server_key.write_bytes(good_key)


def test_sighup_looks_at_the_files_at_once(tmp_path: Path, pki: TestPki) -> None:
    daemon = _daemon(tmp_path / "state", pki, check_seconds=3600)
    try:
        renewed = devpki.issue(pki.ca, "localhost", hosts=["localhost", "127.0.0.1"], server=True)
        renewed.write(pki.server_cert, pki.server_key)
        assert _served_certificate(daemon, pki).serial_number != renewed.certificate.serial_number
        daemon.send(signal.SIGHUP)
        wait_until(
            lambda: (
                _served_certificate(daemon, pki).serial_number == renewed.certificate.serial_number
            ),
            "after SIGHUP, new connections show the renewed certificate",
            timeout=30,
        )
    finally:
        daemon.stop()


def test_a_crl_that_no_trusted_ca_signed_stops_start_up(tmp_path: Path, pki: TestPki) -> None:
    crl = pki.directory / "crl.pem"
    stranger = devpki.create_ca("stranger", datetime.now(UTC))
    crl.write_bytes(devpki.revocation_list(stranger, [1], datetime.now(UTC)))
    daemon = DaemonProcess(tmp_path / "state", pki, tls={"crl": str(crl)})
    code, output = daemon.start_fails()
    assert code != 0
    assert "tls.crl: the list of CN=stranger is not signed by a CA of tls.ca_cert" in output
