"""A peer region's transport key is taken only as its own region certificate vouches for it
(hsmd.transport.peers): a server certificate for the peer's address is not enough."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from hsmd import devpki
from hsmd.auth.certificates import ClientCertificateVerifier
from hsmd.config import RegionSettings
from hsmd.domain import SystemClock
from hsmd.errors import ConfigError, FailedPrecondition
from hsmd.transport.peers import RegionIdentity, verify_endorsement
from hsmd.v1 import region_pb2

DOMAIN = "hsmd.test"
SPKI = b"a transport key (SPKI)"


@pytest.fixture(scope="module")
def ca() -> devpki.Issued:
    return devpki.create_ca("regions CA", datetime.now(UTC))


def _identity(
    ca: devpki.Issued,
    tmp_path: Path,
    name: str,
    uri: str | None = None,
    trusted: devpki.Issued | None = None,
) -> RegionIdentity:
    """Region `name`'s identity, its certificate issued by `ca`, checked against `trusted`."""
    issued = devpki.issue(ca, name, uris=[uri or f"spiffe://{DOMAIN}/region/{name}"])
    issued.write(tmp_path / f"{name}.pem", tmp_path / f"{name}-key.pem")
    return RegionIdentity(
        RegionSettings(name, tmp_path / f"{name}.pem", tmp_path / f"{name}-key.pem"),
        _verifier(trusted or ca),
    )


def _answer(
    identity: RegionIdentity, tenant: str, public_key: bytes = SPKI
) -> region_pb2.GetTransportKeyResponse:
    signature, chain = identity.endorse(tenant, public_key)
    return region_pb2.GetTransportKeyResponse(
        public_key=public_key, signature=signature, certificate_chain=chain
    )


def _verifier(ca: devpki.Issued) -> ClientCertificateVerifier:
    return ClientCertificateVerifier(ca.cert_pem(), DOMAIN, SystemClock())


def test_a_key_the_region_signed_is_taken(ca: devpki.Issued, tmp_path: Path) -> None:
    answer = _answer(_identity(ca, tmp_path, "b"), "acme")
    assert verify_endorsement(_verifier(ca), "b", "acme", answer) == SPKI


def test_another_regions_signature_is_refused(ca: devpki.Issued, tmp_path: Path) -> None:
    answer = _answer(_identity(ca, tmp_path, "c"), "acme")
    with pytest.raises(FailedPrecondition, match="said to be region b's is region/c's"):
        verify_endorsement(_verifier(ca), "b", "acme", answer)


@pytest.mark.parametrize("change", ["public_key", "tenant", "signature", "certificate"])
def test_a_key_not_signed_as_sent_is_refused(
    ca: devpki.Issued, tmp_path: Path, change: str
) -> None:
    answer = _answer(_identity(ca, tmp_path, "b"), "acme")
    tenant = "acme"
    if change == "public_key":
        answer.public_key = SPKI + b"!"
    elif change == "tenant":
        tenant = "globex"
    elif change == "signature":
        answer.signature = b""
    else:
        answer.certificate_chain = b""
    with pytest.raises(FailedPrecondition, match="region b"):
        verify_endorsement(_verifier(ca), "b", tenant, answer)


def test_a_certificate_of_another_ca_is_refused(ca: devpki.Issued, tmp_path: Path) -> None:
    other = devpki.create_ca("another CA", datetime.now(UTC))
    answer = _answer(_identity(other, tmp_path, "b"), "acme")
    with pytest.raises(FailedPrecondition, match="certificate is refused"):
        verify_endorsement(_verifier(ca), "b", "acme", answer)


def test_a_region_starts_only_with_a_certificate_that_names_it(
    ca: devpki.Issued, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="names tenant/acme/b, not region/b"):
        _identity(ca, tmp_path, "b", uri=f"spiffe://{DOMAIN}/tenant/acme/b")
    with pytest.raises(ConfigError, match="not a usable region certificate"):
        _identity(devpki.create_ca("another CA", datetime.now(UTC)), tmp_path, "b", trusted=ca)
