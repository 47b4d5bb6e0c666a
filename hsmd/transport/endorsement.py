"""A region vouching for what it answers, with the key of its region certificate.

A peer's server certificate shows only that the deployment's CA issued it for an address. The
answers that decide where a key's material goes (a tenant token's transport key) or which
region a replica follows (a key's primary region) are therefore signed by the answering
region with the key of its region certificate, which the caller verifies as it verifies any
client certificate and which must name the region it called (region.proto has the formats).
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from hsmd.auth.certificates import ClientCertificateVerifier
from hsmd.config import RegionSettings
from hsmd.domain import Principal, PrincipalKind
from hsmd.errors import ConfigError, Unauthenticated

NONCE_SIZE = 16
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)


def transport_key(tenant: str, public_key: bytes) -> bytes:
    """The statement vouching for a tenant token's transport key."""
    return b"hsmd region transport key v1\n" + tenant.encode() + b"\n" + public_key


def primary(tenant: str, key_id: str, primary_region: str, nonce: bytes) -> bytes:
    """The statement of which region a copy of a key names as its primary."""
    return (
        b"\n".join(
            (b"hsmd region primary v1", tenant.encode(), key_id.encode(), primary_region.encode())
        )
        + b"\n"
        + nonce
    )


class NotEndorsed(Exception):
    """The statement is not signed by the region's certificate; the message says why."""


class RegionIdentity:
    """This region's certificate and key ([region] client_cert, client_key), read once."""

    def __init__(self, settings: RegionSettings, verifier: ClientCertificateVerifier) -> None:
        """Raises ConfigError unless the certificate is one the peers accept as this region
        (verified as a client's, naming spiffe://<trust-domain>/region/<name>) and the key is
        its key."""
        assert settings.client_cert is not None and settings.client_key is not None
        self._chain = settings.client_cert.read_bytes()
        key = serialization.load_pem_private_key(settings.client_key.read_bytes(), None)
        if not isinstance(
            key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
        ):
            raise ConfigError("region.client_key must be an EC, Ed25519 or RSA private key")
        self._key = key
        probe = b"hsmd region identity check"
        try:
            verify(verifier, str(settings.name), probe, *self.sign(probe))
        except NotEndorsed as exc:
            raise ConfigError(f"region.client_cert and client_key: {exc}") from None

    def sign(self, statement: bytes) -> tuple[bytes, bytes]:
        """(signature, certificate chain PEM) of a statement."""
        key = self._key
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return key.sign(statement, ec.ECDSA(hashes.SHA256())), self._chain
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return key.sign(statement), self._chain
        return key.sign(statement, _PSS, hashes.SHA256()), self._chain


def verify(
    verifier: ClientCertificateVerifier,
    region: str,
    statement: bytes,
    signature: bytes,
    chain_pem: bytes,
) -> None:
    """Raises NotEndorsed unless chain_pem is a region certificate of `region` (verified as a
    client's) whose key signed the statement."""
    try:
        certificates = x509.load_pem_x509_certificates(chain_pem)
    except ValueError:
        raise NotEndorsed("it carries no certificate") from None
    encoded = [c.public_bytes(serialization.Encoding.PEM) for c in certificates]
    try:
        signer = verifier.identify(encoded[0], b"".join(encoded[1:]))
    except Unauthenticated as exc:
        raise NotEndorsed(f"its certificate is refused: {exc}") from None
    if signer != Principal(PrincipalKind.REGION, region):
        raise NotEndorsed(f"it is signed by {signer}, not region/{region}")
    public_key = certificates[0].public_key()
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, statement, ec.ECDSA(hashes.SHA256()))
        elif isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(signature, statement)
        elif isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, statement, _PSS, hashes.SHA256())
        else:
            raise InvalidSignature()
    except InvalidSignature:
        raise NotEndorsed("its signature does not verify with its certificate") from None
