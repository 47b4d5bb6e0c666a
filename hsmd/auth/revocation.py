"""Certificate revocation lists: which client certificates a CA has revoked.

The file of `tls.crl` holds one CRL per CA, PEM (several blocks) or DER (one). Each must be
signed by a certificate of `tls.ca_cert`; an unsigned, forged or unparsable list is refused as a
whole, so that a bad file never lifts a revocation. A list past its nextUpdate still counts (a
warning says so): an old list still names what it revoked, and refusing every client because a
CA was late would make the CA's publishing an outage.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509

from hsmd.errors import ConfigError

log = logging.getLogger(__name__)

_PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", re.DOTALL)

# A certificate as a revocation list names it: its issuer's name (DER) and its serial number.
CertificateId = tuple[bytes, int]


@dataclass(frozen=True)
class Revocations:
    """The certificates revoked by the lists of one file, and when the soonest list is due to
    be replaced (None: no list, or none says)."""

    revoked: frozenset[CertificateId]
    next_update: datetime | None

    @classmethod
    def none(cls) -> Revocations:
        return cls(frozenset(), None)


def certificate_id(certificate: x509.Certificate) -> CertificateId:
    return certificate.issuer.public_bytes(), certificate.serial_number


def load_revocations(data: bytes, anchors: list[x509.Certificate], now: datetime) -> Revocations:
    """The revocations in a CRL file, each list checked against the CA that signed it.

    Raises:
        ConfigError: the file holds no list, one that cannot be parsed, or one that no
            certificate of tls.ca_cert signed.
    """
    blocks = _PEM_CRL.findall(data)
    try:
        lists = [x509.load_pem_x509_crl(block) for block in blocks] or [
            x509.load_der_x509_crl(data)
        ]
    except ValueError:
        raise ConfigError(
            "tls.crl holds no CRL (PEM or DER), or one that cannot be parsed"
        ) from None
    revoked: set[CertificateId] = set()
    updates = []
    for crl in lists:
        issuer = _signer(crl, anchors)
        issuer_name = crl.issuer.public_bytes()
        revoked.update((issuer_name, entry.serial_number) for entry in crl)
        if crl.next_update_utc is not None:
            updates.append(crl.next_update_utc)
            if crl.next_update_utc < now:
                log.warning(
                    "tls.crl: the list of %s was due to be replaced at %s; it still counts",
                    issuer.subject.rfc4514_string(),
                    crl.next_update_utc.isoformat(),
                )
    return Revocations(frozenset(revoked), min(updates, default=None))


def _signer(
    crl: x509.CertificateRevocationList, anchors: list[x509.Certificate]
) -> x509.Certificate:
    for anchor in anchors:
        if anchor.subject == crl.issuer and crl.is_signature_valid(anchor.public_key()):  # type: ignore[arg-type]
            return anchor
    raise ConfigError(
        f"tls.crl: the list of {crl.issuer.rfc4514_string()} is not signed by a CA of tls.ca_cert"
    )
