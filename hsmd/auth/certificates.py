"""Client-certificate verification beyond the TLS handshake, once per certificate.

gRPC Python's TLS handshake accepted, as a client identity, a leaf with CA:TRUE or keyCertSign,
a certificate issued by such a leaf (the root's path length of 0 was not applied), and any set
of SANs. So every certificate the handshake lets through is verified again here, with
pyca/cryptography's X.509 client verifier (`PolicyBuilder().build_client_verifier()`), against
the trust anchors of `tls.ca_cert` (every certificate in that file) and the intermediates the
client sent. What that verifier checks, in cryptography 51:

- a chain from the leaf to an anchor: names, signatures, basicConstraints CA:TRUE (critical)
  and keyCertSign on every CA, and every CA's path length constraint;
- the leaf: not CA:TRUE, no keyCertSign, clientAuth in its EKU if it has one, a SAN extension
  and an authorityKeyIdentifier present, X.509 v3;
- Web PKI algorithms: CA keys RSA of 2,048 bits or more or EC P-256, P-384, P-521 (no Ed25519
  CA), signatures RSA or ECDSA with SHA-2 (the leaf's own key is not constrained);
- every certificate of the chain valid at the validation time.

It returns the leaf's SANs without judging them; `identity.principal_from_san` then requires
exactly one URI SAN naming an identity of our trust domain. Revocation (hsmd.auth.revocation) is
checked at every call, against the leaf and the intermediates of the verified chain: a revoked
client's next call fails, whatever its connection. The trust anchors and the revocations are
replaced while the daemon runs (hsmd.transport.tls), each as one reference.

Cost: gRPC exposes no connection object, so results are cached by the exact certificate and
chain bytes in two bounded LRUs (verified and refused). A call with a known certificate costs a
dictionary lookup and a comparison of the chain's validity window with the injected clock; a
certificate that expires while its connection is open is refused at its next call. To make the
cached verdict independent of the moment it was reached, the verifier runs at a validation time
inside the leaf's validity (now, while the leaf is valid); "valid now" is this module's own check,
against the intersection of the validity periods of the whole verified chain.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from hsmd.auth.identity import principal_from_san
from hsmd.auth.revocation import CertificateId, Revocations, certificate_id
from hsmd.domain import Clock, Principal
from hsmd.errors import ConfigError, Unauthenticated

# A client sends its leaf and usually zero or one intermediate; these bound what one bad client
# can make the daemon parse, verify and keep in the cache.
MAX_PRESENTED_BYTES = 16 * 1024
MAX_INTERMEDIATES = 8
VERIFIED_CACHE_SIZE = 1024
REFUSED_CACHE_SIZE = 256
_REASON_CHARS = 200

_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


@dataclass(frozen=True, slots=True)
class _Verified:
    principal: Principal
    not_before: datetime  # the latest not-before of the chain
    not_after: datetime  # the earliest not-after of the chain
    revocable: frozenset[CertificateId]  # the chain but its anchor, as CRLs name them


class _Lru(Generic[_K, _V]):
    """A bounded least-recently-used map; the caller holds the lock."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: OrderedDict[_K, _V] = OrderedDict()

    def get(self, key: _K) -> _V | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: _K, value: _V) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()


class ClientCertificateVerifier:
    """Turns the client certificate of a TLS connection into a Principal, or refuses it.

    Built once from the CA bundle, the trust domain and the daemon's clock; thread-safe.
    """

    def __init__(
        self,
        ca_bundle: bytes,
        trust_domain: str,
        clock: Clock,
        *,
        verified_cache_size: int = VERIFIED_CACHE_SIZE,
        refused_cache_size: int = REFUSED_CACHE_SIZE,
    ) -> None:
        """Raises ConfigError if the bundle holds no certificate or one that is not a CA."""
        self.anchors = _trust_anchors(ca_bundle)
        self._store = Store(self.anchors)
        self._generation = 0  # CA bundles trusted so far, less one
        self._revocations = Revocations.none()
        self._trust_domain = trust_domain
        self._clock = clock
        self._lock = threading.Lock()
        self._verified: _Lru[tuple[bytes, bytes], _Verified] = _Lru(verified_cache_size)
        self._refused: _Lru[tuple[bytes, bytes], str] = _Lru(refused_cache_size)
        self.verifications = 0
        """How many certificates were verified in full (cache misses), for tests and metrics."""

    def trust(self, ca_bundle: bytes) -> None:
        """Verifies against the CAs of a new bundle from now on; forgets every verdict.

        Raises:
            ConfigError: as the constructor; the CAs in use stay.
        """
        anchors = _trust_anchors(ca_bundle)
        with self._lock:
            self.anchors, self._store = anchors, Store(anchors)
            self._generation += 1  # a verdict reached against the old CAs is not kept
            self._verified.clear()
            self._refused.clear()

    def revoke(self, revocations: Revocations) -> None:
        """Refuses, from the next call on, every certificate `revocations` names (and every
        one that chains through a revoked intermediate); the previous list is replaced."""
        self._revocations = revocations

    def identify(self, certificate_pem: bytes, chain_pem: bytes = b"") -> Principal:
        """The principal of a client certificate (PEM) and the intermediates it sent (PEM).

        Raises:
            Unauthenticated: the certificate is refused; the message says why.
        """
        key = (certificate_pem, chain_pem)
        now = self._clock.now()
        with self._lock:
            verified = self._verified.get(key)
            refused = None if verified else self._refused.get(key)
        if refused is not None:
            raise Unauthenticated(refused)
        if verified is None:
            verified = self._verify_and_remember(key, now)
        if now < verified.not_before:
            raise Unauthenticated("the client certificate (or its issuer) is not valid yet")
        if now > verified.not_after:
            raise Unauthenticated("the client certificate (or its issuer) has expired")
        if verified.revocable & self._revocations.revoked:
            raise Unauthenticated("the client certificate (or its issuer) is revoked")
        return verified.principal

    def _verify_and_remember(self, key: tuple[bytes, bytes], now: datetime) -> _Verified:
        """Verifies in full, outside the lock (two threads may verify the same certificate at
        once; both reach the same verdict), and caches the verdict."""
        certificate_pem, chain_pem = key
        if len(certificate_pem) + len(chain_pem) > MAX_PRESENTED_BYTES:
            raise Unauthenticated("the client certificate chain is too large")
        with self._lock:
            generation, store = self._generation, self._store
        try:
            verified = self._verify(certificate_pem, chain_pem, now, store)
        except Unauthenticated as exc:
            with self._lock:
                self.verifications += 1
                if generation == self._generation:
                    self._refused.put(key, str(exc))
            raise
        with self._lock:
            self.verifications += 1
            if generation == self._generation:
                self._verified.put(key, verified)
        return verified

    def _verify(
        self, certificate_pem: bytes, chain_pem: bytes, now: datetime, store: Store
    ) -> _Verified:
        try:
            leaf = x509.load_pem_x509_certificate(certificate_pem)
            intermediates = x509.load_pem_x509_certificates(chain_pem) if chain_pem else []
        except ValueError:
            raise Unauthenticated("the client certificate cannot be parsed") from None
        if len(intermediates) > MAX_INTERMEDIATES:
            raise Unauthenticated("the client sent too many intermediate certificates")
        # Verify at a moment inside the leaf's validity, so that the verdict does not depend on
        # when the certificate was first seen; identify() compares the window with the clock.
        moment = min(max(now, leaf.not_valid_before_utc), leaf.not_valid_after_utc)
        verifier = PolicyBuilder().store(store).time(moment).build_client_verifier()
        try:
            client = verifier.verify(leaf, intermediates)
        except VerificationError as exc:
            raise Unauthenticated(
                f"the client certificate chain is refused: {_reason(exc)}"
            ) from None
        principal = principal_from_san(client.subjects or [], self._trust_domain)
        return _Verified(
            principal,
            max(certificate.not_valid_before_utc for certificate in client.chain),
            min(certificate.not_valid_after_utc for certificate in client.chain),
            frozenset(certificate_id(certificate) for certificate in client.chain[:-1]),
        )


def _trust_anchors(bundle: bytes) -> list[x509.Certificate]:
    """The certificates of the CA file. Refuses, at start, anchors that pyca's verifier would
    refuse as issuers of every client (it wants a critical CA:TRUE and keyCertSign), so that
    such a file stops the daemon instead of making every call UNAUTHENTICATED."""
    try:
        anchors = x509.load_pem_x509_certificates(bundle)
    except ValueError:
        raise ConfigError(
            "tls.ca_cert holds no PEM certificate, or one that cannot be parsed"
        ) from None
    for anchor in anchors:
        extensions = anchor.extensions
        try:
            constraints = extensions.get_extension_for_class(x509.BasicConstraints)
            usage = extensions.get_extension_for_class(x509.KeyUsage).value
        except x509.ExtensionNotFound:
            constraints, usage = None, None
        is_ca = constraints and constraints.critical and constraints.value.ca
        if not (is_ca and usage and usage.key_cert_sign):
            raise ConfigError(
                f"tls.ca_cert: {anchor.subject.rfc4514_string()} is not a CA certificate "
                "(it needs basicConstraints CA:TRUE, marked critical, and keyUsage keyCertSign)"
            )
    return anchors


_CONTEXT = re.compile(r"\s*\(encountered processing .*$", re.DOTALL)


def _reason(error: VerificationError) -> str:
    """pyca's reason, without the certificate it names, printable and bounded."""
    text = _CONTEXT.sub("", str(error)).removeprefix("validation failed: ")
    text = "".join(c if c.isprintable() else " " for c in text)
    return text[:_REASON_CHARS]
