"""The watched [tls] files (hsmd/transport/tls.py), without a server: each group of files is
judged on its own, so a refused server certificate does not hold back a new CRL, and a file
refused once is looked at again when it (or its partner) changes."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hsmd import devpki
from hsmd.auth.certificates import ClientCertificateVerifier
from hsmd.auth.revocation import certificate_id
from hsmd.config import TlsSettings
from hsmd.transport.tls import TlsFiles

NOW = datetime.now(UTC)


@pytest.fixture(autouse=True)
def _now(monkeypatch: pytest.MonkeyPatch) -> None:
    """NOW is each test's start, not the module's import: certificates are issued valid from
    five minutes before the moment they are made, and a whole suite's run takes longer."""
    monkeypatch.setattr(f"{__name__}.NOW", datetime.now(UTC))


class _Clock:
    def now(self) -> datetime:
        return NOW


@pytest.fixture
def files(tmp_path: Path) -> tuple[TlsSettings, devpki.Issued]:
    ca = devpki.create_ca("watched CA", NOW)
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem())
    devpki.issue(ca, "localhost", hosts=["localhost"], server=True).write(
        tmp_path / "server.pem", tmp_path / "server-key.pem"
    )
    (tmp_path / "crl.pem").write_bytes(devpki.revocation_list(ca, [], NOW))
    settings = TlsSettings(
        tmp_path / "ca.pem",
        tmp_path / "server.pem",
        tmp_path / "server-key.pem",
        "hsmd.test",
        tmp_path / "crl.pem",
    )
    return settings, ca


def _touch(path: Path, data: bytes) -> None:
    """Writes the file and moves its time on, so a look sees it changed within one tick."""
    path.write_bytes(data)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_a_refused_server_pair_does_not_hold_back_the_crl(
    files: tuple[TlsSettings, devpki.Issued],
) -> None:
    settings, ca = files
    verifier = ClientCertificateVerifier(settings.ca_cert.read_bytes(), "hsmd.test", _Clock())
    watched = TlsFiles(settings, verifier, _Clock().now)
    revoked = devpki.issue(ca, "leaver", uris=["spiffe://hsmd.test/tenant/t/leaver"])
    renewed = devpki.issue(ca, "localhost", hosts=["localhost"], server=True)
    _touch(settings.server_cert, renewed.cert_pem())  # its key is not written yet
    _touch(settings.crl, devpki.revocation_list(ca, [revoked.certificate.serial_number], NOW))
    watched.check()
    assert certificate_id(revoked.certificate) in watched.revocations.revoked
    assert watched._fetch() is None  # the mismatched pair was refused
    _touch(settings.server_key, renewed.key_pem())  # the key arrives: the pair is taken
    watched.check()
    assert watched._fetch() is not None
    assert watched.server_not_after == renewed.certificate.not_valid_after_utc
