"""Identity from the certificate's SPIFFE URI SAN, and nothing else."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from hsmd import devpki
from hsmd.auth.authorize import require_kind
from hsmd.auth.identity import principal_from_certificate, principal_from_uri
from hsmd.domain import Principal, PrincipalKind
from hsmd.errors import PermissionDenied, Unauthenticated

DOMAIN = "hsmd.test"


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        (
            f"spiffe://{DOMAIN}/tenant/acme/billing",
            Principal(PrincipalKind.TENANT, "billing", "acme"),
        ),
        (f"spiffe://{DOMAIN}/operator/ops", Principal(PrincipalKind.OPERATOR, "ops")),
    ],
)
def test_accepted_identities(uri: str, expected: Principal) -> None:
    assert principal_from_uri(uri, DOMAIN) == expected


@pytest.mark.parametrize(
    "uri",
    [
        "spiffe://other.test/tenant/acme/billing",
        f"https://{DOMAIN}/tenant/acme/billing",
        f"spiffe://{DOMAIN}/tenant/acme",
        f"spiffe://{DOMAIN}/tenant/acme/billing/extra",
        f"spiffe://{DOMAIN}/tenant/ACME/billing",
        f"spiffe://{DOMAIN}/tenant/acme/",
        f"spiffe://{DOMAIN}/tenant//billing",
        f"spiffe://{DOMAIN}/operator/",
        f"spiffe://{DOMAIN}/admin/root",
        f"spiffe://{DOMAIN}/tenant/acme/billing?x=1",
    ],
)
def test_refused_identities(uri: str) -> None:
    with pytest.raises(Unauthenticated):
        principal_from_uri(uri, DOMAIN)


def test_certificate_needs_exactly_one_spiffe_uri() -> None:
    ca = devpki.create_ca("ca", datetime.now(UTC))
    one = devpki.issue(ca, "x", uris=[devpki.tenant_uri(DOMAIN, "acme", "x")])
    assert principal_from_certificate(one.cert_pem(), DOMAIN).tenant == "acme"
    for uris in ([], [devpki.tenant_uri(DOMAIN, "a", "x"), devpki.tenant_uri(DOMAIN, "b", "x")]):
        with pytest.raises(Unauthenticated):
            principal_from_certificate(devpki.issue(ca, "x", uris=uris).cert_pem(), DOMAIN)


def test_a_server_only_certificate_is_not_a_client_identity() -> None:
    ca = devpki.create_ca("ca", datetime.now(UTC))
    server = devpki.issue(ca, "x", uris=[devpki.tenant_uri(DOMAIN, "acme", "x")], server=True)
    eku = server.certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH not in eku
    with pytest.raises(Unauthenticated, match="client authentication"):
        principal_from_certificate(server.cert_pem(), DOMAIN)


def test_principal_kind_is_checked_per_service() -> None:
    tenant = Principal(PrincipalKind.TENANT, "x", "acme")
    operator = Principal(PrincipalKind.OPERATOR, "ops")
    require_kind(tenant, PrincipalKind.TENANT)
    require_kind(operator, PrincipalKind.OPERATOR)
    with pytest.raises(PermissionDenied):
        require_kind(operator, PrincipalKind.TENANT)
    with pytest.raises(PermissionDenied):
        require_kind(tenant, PrincipalKind.OPERATOR)
