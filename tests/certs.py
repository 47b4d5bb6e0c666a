"""Client certificates of shapes that hsmd must refuse, made with cryptography's builder.

hsmd.devpki issues what an operator should issue; this makes what a misconfigured CA or an
attacker makes: a leaf with CA:TRUE or keyCertSign, a server-only or missing EKU, any set of
URI SANs, any validity period.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hsmd import devpki

CLIENT_AUTH = (ExtendedKeyUsageOID.CLIENT_AUTH,)
SERVER_AUTH = (ExtendedKeyUsageOID.SERVER_AUTH,)


def leaf(
    issuer: devpki.Issued,
    uris: Sequence[str],
    *,
    name: str = "client",
    ca: bool = False,
    key_cert_sign: bool = False,
    usages: Sequence[x509.ObjectIdentifier] | None = CLIENT_AUTH,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> devpki.Issued:
    """A client certificate signed by issuer. `ca` makes it a CA (CA:TRUE and keyCertSign, as a
    real CA); `key_cert_sign` only sets that usage; `usages=None` leaves out the EKU."""
    now = datetime.now(UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(issuer.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - timedelta(minutes=5))
        .not_valid_after(not_after or now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=ca or key_cert_sign), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.private_key.public_key()),
            critical=False,
        )
    )
    if usages is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
    if uris:
        names = [x509.UniformResourceIdentifier(uri) for uri in uris]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return devpki.Issued(builder.sign(issuer.private_key, hashes.SHA256()), key)


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )
