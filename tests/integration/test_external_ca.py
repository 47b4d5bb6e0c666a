"""docs/deploy.md's certificates from an existing CA, run as written: a CA made with OpenSSL
(as an operator's would be), the guide's commands for the server, a tenant service, an operator
and a CRL, and a daemon that serves with them: the operator and a service are accepted, and
the revoked service is refused."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from hsmclient import AdminClient, UnauthenticatedError

from tests.harness import TRUST_DOMAIN, DaemonProcess, TestPki

GUIDE = Path(__file__).parents[2] / "docs" / "deploy.md"
_BLOCK = re.compile(r"```sh\n(# issue-certificates.*?)```", re.DOTALL)


def _run(script: str, directory: Path) -> None:
    env = {**os.environ, "TRUST_DOMAIN": TRUST_DOMAIN, "SERVER_NAMES": "DNS:localhost,IP:127.0.0.1"}
    done = subprocess.run(
        ["bash", "-euc", script],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def test_certificates_issued_as_the_guide_says_are_served(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    match = _BLOCK.search(GUIDE.read_text())
    assert match, "docs/deploy.md has the issue-certificates block"
    pki_dir = tmp_path / "external"
    pki_dir.mkdir()
    _run(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30"
        " -subj '/CN=external CA' -keyout ca-key.pem -out ca.pem"
        " -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign"
        " -addext subjectKeyIdentifier=hash 2>/dev/null",
        pki_dir,
    )
    billing = (
        "\nissue billing keyUsage=critical,digitalSignature extendedKeyUsage=clientAuth"
        ' "subjectAltName=URI:spiffe://$TRUST_DOMAIN/tenant/acme/billing"\n'
    )
    _run(match.group(1) + billing, pki_dir)

    pki = TestPki(tmp_path / "pki")  # its files, replaced by the guide's
    for name, target in (
        ("ca.pem", pki.ca_cert),
        ("server.pem", pki.server_cert),
        ("server-key.pem", pki.server_key),
    ):
        shutil.copy(pki_dir / name, target)
    daemon = DaemonProcess(tmp_path / "state", pki, tls={"crl": str(pki_dir / "crl.pem")})
    daemon.start()
    try:

        def pair(name: str) -> tuple[bytes, bytes]:
            return (pki_dir / f"{name}.pem").read_bytes(), (
                pki_dir / f"{name}-key.pem"
            ).read_bytes()

        with daemon.connect(pair("ops"), AdminClient) as admin:
            admin.create_tenant("acme")
        with daemon.connect(pair("billing")) as billing_client:
            assert billing_client.create_key().key_spec == "AES_256"
        with (
            daemon.connect(pair("payroll")) as payroll,
            pytest.raises(UnauthenticatedError, match="revoked"),
        ):
            payroll.generate_random(8)
    finally:
        daemon.stop()
