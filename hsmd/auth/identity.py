"""The caller's identity, from the SAN of its verified client certificate and nothing else.

The certificate must carry exactly one URI SAN in all, whatever its scheme (SPIFFE's X509-SVID
rule; other kinds of name, such as DNS names, are allowed and ignored), and that URI must be
`spiffe://<trust-domain>/tenant/<tenant>/<principal>` for a tenant principal,
`spiffe://<trust-domain>/operator/<name>` for an operator, or
`spiffe://<trust-domain>/region/<name>` for another hsmd instance of the deployment (a
region). The chain, the leaf's key usages and its validity are checked before, by
`hsmd.auth.certificates`.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

from cryptography import x509

from hsmd.domain import Principal, PrincipalKind, is_valid_region_name
from hsmd.errors import InvalidArgument, Unauthenticated
from hsmd.names import is_valid_principal_name, validate_tenant_name


def principal_from_san(names: Sequence[x509.GeneralName], trust_domain: str) -> Principal:
    """The principal a certificate's subject alternative names give.

    Raises:
        Unauthenticated: not exactly one URI among the names, or that URI names no identity
            of the trust domain.
    """
    uris = [name.value for name in names if isinstance(name, x509.UniformResourceIdentifier)]
    if len(uris) != 1:
        raise Unauthenticated(
            f"the client certificate must carry exactly one URI SAN, a spiffe:// identity; "
            f"it has {len(uris)}"
        )
    return principal_from_uri(uris[0], trust_domain)


def principal_from_uri(uri: str, trust_domain: str) -> Principal:
    parts = urlsplit(uri)
    in_domain = parts.netloc.lower() == trust_domain.lower()
    if parts.scheme != "spiffe" or not in_domain or parts.query or parts.fragment:
        raise Unauthenticated(f"the certificate's identity is not in trust domain {trust_domain}")
    segments = parts.path.split("/")[1:]
    match segments:
        case ["tenant", tenant, name] if is_valid_principal_name(name) and _valid_tenant(tenant):
            return Principal(PrincipalKind.TENANT, name, tenant)
        case ["operator", name] if is_valid_principal_name(name):
            return Principal(PrincipalKind.OPERATOR, name)
        case ["region", name] if is_valid_region_name(name):
            return Principal(PrincipalKind.REGION, name)
    raise Unauthenticated(
        "the certificate's identity names no tenant principal, operator or region"
    )


def _valid_tenant(name: str) -> bool:
    try:
        validate_tenant_name(name)
    except InvalidArgument:
        return False
    return True
