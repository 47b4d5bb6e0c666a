"""The caller's identity, from the client certificate of the TLS handshake and nothing else.

The certificate must carry exactly one SPIFFE URI SAN in our trust domain:
`spiffe://<trust-domain>/tenant/<tenant>/<principal>` for a tenant principal or
`spiffe://<trust-domain>/operator/<name>` for an operator, and, if it has an extended key
usage extension, clientAuth in it. The TLS layer has already checked the chain and validity.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from hsmd.domain import Principal, PrincipalKind
from hsmd.errors import InvalidArgument, Unauthenticated
from hsmd.names import is_valid_principal_name, validate_tenant_name


def principal_from_certificate(pem: bytes, trust_domain: str) -> Principal:
    """Raises Unauthenticated unless the certificate names exactly one identity we accept."""
    try:
        certificate = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise Unauthenticated("the client certificate cannot be parsed") from None
    _require_client_auth(certificate)
    uris = _spiffe_uris(certificate)
    if len(uris) != 1:
        raise Unauthenticated("the client certificate must carry exactly one spiffe:// URI SAN")
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
    raise Unauthenticated("the certificate's identity names no tenant principal or operator")


def _valid_tenant(name: str) -> bool:
    try:
        validate_tenant_name(name)
    except InvalidArgument:
        return False
    return True


def _spiffe_uris(certificate: x509.Certificate) -> list[str]:
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    return [uri for uri in uris if uri.lower().startswith("spiffe://")]


def _require_client_auth(certificate: x509.Certificate) -> None:
    try:
        eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    except x509.ExtensionNotFound:
        return
    if ExtendedKeyUsageOID.CLIENT_AUTH not in eku.value:
        raise Unauthenticated("the client certificate is not for client authentication")
