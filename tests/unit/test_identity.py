"""Identity from the certificate's one URI SAN, and nothing else (the certificate itself:
test_client_certificates.py)."""

from __future__ import annotations

import pytest
from cryptography import x509

from hsmd.auth.authorize import require_kind
from hsmd.auth.identity import principal_from_san, principal_from_uri
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


def test_exactly_one_uri_san_of_any_scheme() -> None:
    uri = x509.UniformResourceIdentifier(f"spiffe://{DOMAIN}/tenant/acme/x")
    other_kinds = [x509.DNSName("x.example"), x509.RFC822Name("x@example.com")]
    assert principal_from_san([*other_kinds, uri], DOMAIN).tenant == "acme"
    for names in (
        [],
        other_kinds,
        [uri, x509.UniformResourceIdentifier("https://example.com/x")],
        [x509.UniformResourceIdentifier("urn:x"), uri],
        [uri, x509.UniformResourceIdentifier(f"spiffe://{DOMAIN}/tenant/other/x")],
    ):
        with pytest.raises(Unauthenticated, match="exactly one URI SAN"):
            principal_from_san(names, DOMAIN)


def test_principal_kind_is_checked_per_service() -> None:
    tenant = Principal(PrincipalKind.TENANT, "x", "acme")
    operator = Principal(PrincipalKind.OPERATOR, "ops")
    require_kind(tenant, PrincipalKind.TENANT)
    require_kind(operator, PrincipalKind.OPERATOR)
    with pytest.raises(PermissionDenied):
        require_kind(operator, PrincipalKind.TENANT)
    with pytest.raises(PermissionDenied):
        require_kind(tenant, PrincipalKind.OPERATOR)
