"""A peer region's answers that decide where material goes or whom a replica follows are taken
only as its own region certificate vouches for them (hsmd.transport.endorsement): a server
certificate for the peer's address is not enough."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from hsmd import devpki
from hsmd.auth.certificates import ClientCertificateVerifier
from hsmd.config import RegionSettings
from hsmd.domain import SystemClock
from hsmd.errors import ConfigError
from hsmd.transport import endorsement
from hsmd.transport.endorsement import NotEndorsed, RegionIdentity

DOMAIN = "hsmd.test"
STATEMENT = endorsement.transport_key("acme", b"a transport key (SPKI)")


@pytest.fixture(scope="module")
def ca() -> devpki.Issued:
    return devpki.create_ca("regions CA", datetime.now(UTC))


def _verifier(ca: devpki.Issued) -> ClientCertificateVerifier:
    return ClientCertificateVerifier(ca.cert_pem(), DOMAIN, SystemClock())


def _identity(
    ca: devpki.Issued,
    tmp_path: Path,
    name: str,
    uri: str | None = None,
    trusted: devpki.Issued | None = None,
    key_of: devpki.Issued | None = None,
) -> RegionIdentity:
    """Region `name`'s identity: its certificate issued by `ca` (with the key of `key_of`,
    if given), checked against `trusted`."""
    issued = devpki.issue(ca, name, uris=[uri or f"spiffe://{DOMAIN}/region/{name}"])
    (tmp_path / f"{name}.pem").write_bytes(issued.cert_pem())
    (tmp_path / f"{name}-key.pem").write_bytes((key_of or issued).key_pem())
    return RegionIdentity(
        RegionSettings(name, tmp_path / f"{name}.pem", tmp_path / f"{name}-key.pem"),
        _verifier(trusted or ca),
    )


def test_a_statement_the_region_signed_is_taken(ca: devpki.Issued, tmp_path: Path) -> None:
    endorsement.verify(_verifier(ca), "b", STATEMENT, *_identity(ca, tmp_path, "b").sign(STATEMENT))


def test_another_regions_signature_is_refused(ca: devpki.Issued, tmp_path: Path) -> None:
    signature, chain = _identity(ca, tmp_path, "c").sign(STATEMENT)
    with pytest.raises(NotEndorsed, match="signed by region/c, not region/b"):
        endorsement.verify(_verifier(ca), "b", STATEMENT, signature, chain)


@pytest.mark.parametrize("change", ["statement", "signature", "certificate"])
def test_a_statement_not_signed_as_sent_is_refused(
    ca: devpki.Issued, tmp_path: Path, change: str
) -> None:
    signature, chain = _identity(ca, tmp_path, "b").sign(STATEMENT)
    statement = STATEMENT
    if change == "statement":
        statement = endorsement.transport_key("globex", b"a transport key (SPKI)")
    elif change == "signature":
        signature = signature[:-1] + bytes([signature[-1] ^ 1])
    else:
        chain = b""
    with pytest.raises(NotEndorsed):
        endorsement.verify(_verifier(ca), "b", statement, signature, chain)


def test_a_primary_answer_is_bound_to_its_nonce() -> None:
    one = endorsement.primary("acme", "mrk-" + "0" * 32, "a", b"n" * 16)
    assert one != endorsement.primary("acme", "mrk-" + "0" * 32, "a", b"m" * 16)
    assert one != endorsement.primary("acme", "mrk-" + "0" * 32, "b", b"n" * 16)


def test_a_certificate_of_another_ca_is_refused(ca: devpki.Issued, tmp_path: Path) -> None:
    other = devpki.create_ca("another CA", datetime.now(UTC))
    signature, chain = _identity(other, tmp_path, "b").sign(STATEMENT)
    with pytest.raises(NotEndorsed, match="certificate is refused"):
        endorsement.verify(_verifier(ca), "b", STATEMENT, signature, chain)


def test_a_region_starts_only_with_its_own_certificate_and_key(
    ca: devpki.Issued, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="signed by tenant/acme/b, not region/b"):
        _identity(ca, tmp_path, "b", uri=f"spiffe://{DOMAIN}/tenant/acme/b")
    with pytest.raises(ConfigError, match="certificate is refused"):
        _identity(devpki.create_ca("another CA", datetime.now(UTC)), tmp_path, "b", trusted=ca)
    with pytest.raises(ConfigError, match="signature does not verify"):
        _identity(ca, tmp_path, "b", key_of=devpki.issue(ca, "stranger"))
