"""Client-certificate verification beyond the TLS handshake (hsmd.auth.certificates).

Each refused shape here was accepted by gRPC's handshake (tests/integration/test_certificates.py
shows it through the daemon), so these checks are the only thing between it and an identity.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from hsmd import devpki
from hsmd.auth.certificates import MAX_PRESENTED_BYTES, ClientCertificateVerifier
from hsmd.auth.revocation import Revocations, certificate_id, load_revocations
from hsmd.domain import Principal, PrincipalKind
from hsmd.errors import ConfigError, Unauthenticated
from tests import certs

DOMAIN = "hsmd.test"
NOW = datetime.now(UTC)


@pytest.fixture(autouse=True)
def _now(monkeypatch: pytest.MonkeyPatch) -> None:
    """NOW is each test's start, not the module's import: certificates are issued valid from
    five minutes before the moment they are made, and a whole suite's run takes longer."""
    monkeypatch.setattr(f"{__name__}.NOW", datetime.now(UTC))


ALPHA = devpki.tenant_uri(DOMAIN, "alpha", "app")
BETA = devpki.tenant_uri(DOMAIN, "beta", "app")


class MovableClock:
    def __init__(self, now: datetime) -> None:
        self.time = now

    def now(self) -> datetime:
        return self.time


@pytest.fixture(scope="module")
def ca() -> devpki.Issued:
    return devpki.create_ca("hsmd test CA", NOW)


@pytest.fixture
def clock() -> MovableClock:
    return MovableClock(NOW)


@pytest.fixture
def verifier(ca: devpki.Issued, clock: MovableClock) -> ClientCertificateVerifier:
    return ClientCertificateVerifier(ca.cert_pem(), DOMAIN, clock)


def _refusal(verifier: ClientCertificateVerifier, cert: devpki.Issued, chain: bytes = b"") -> str:
    with pytest.raises(Unauthenticated) as caught:
        verifier.identify(cert.cert_pem(), chain)
    return str(caught.value)


def test_a_tenant_certificate_from_the_ca_is_accepted(
    ca: devpki.Issued, verifier: ClientCertificateVerifier
) -> None:
    cert = devpki.issue(ca, "app", uris=[ALPHA])
    assert verifier.identify(cert.cert_pem()) == Principal(PrincipalKind.TENANT, "app", "alpha")


def test_an_operator_certificate_from_the_ca_is_accepted(
    ca: devpki.Issued, verifier: ClientCertificateVerifier
) -> None:
    cert = devpki.issue(ca, "ops", uris=[devpki.operator_uri(DOMAIN, "ops")])
    assert verifier.identify(cert.cert_pem()) == Principal(PrincipalKind.OPERATOR, "ops")


def test_a_certificate_without_an_eku_is_accepted(
    ca: devpki.Issued, verifier: ClientCertificateVerifier
) -> None:
    cert = certs.leaf(ca, [ALPHA], usages=None)
    assert verifier.identify(cert.cert_pem()).tenant == "alpha"


def test_other_kinds_of_san_beside_the_one_uri_are_ignored(
    ca: devpki.Issued, verifier: ClientCertificateVerifier
) -> None:
    # devpki puts the hosts in DNS and IP SANs: only URIs count towards "exactly one".
    cert = devpki.issue(ca, "app", uris=[ALPHA], hosts=["app.example", "10.0.0.1"])
    assert verifier.identify(cert.cert_pem()).tenant == "alpha"


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda ca: certs.leaf(ca, [ALPHA], ca=True), "basicConstraints.cA"),
        (lambda ca: certs.leaf(ca, [ALPHA], key_cert_sign=True), "keyCertSign"),
        (lambda ca: certs.leaf(ca, [ALPHA], usages=certs.SERVER_AUTH), "EKU"),
        (lambda ca: certs.leaf(ca, [ALPHA, "https://alpha.example/app"]), "exactly one URI SAN"),
        (lambda ca: certs.leaf(ca, ["https://alpha.example/app", ALPHA]), "exactly one URI SAN"),
        (lambda ca: certs.leaf(ca, [ALPHA, BETA]), "exactly one URI SAN"),
        (lambda ca: devpki.issue(ca, "app", hosts=["app.example"]), "exactly one URI SAN"),
        (lambda ca: certs.leaf(ca, []), "subjectAltName"),
        (lambda ca: certs.leaf(ca, ["spiffe://other.test/tenant/alpha/app"]), "trust domain"),
        (lambda ca: certs.leaf(ca, [f"spiffe://{DOMAIN}/tenant/alpha"]), "names no tenant"),
    ],
    ids=[
        "ca-true",
        "key-cert-sign",
        "server-auth-only",
        "extra-https-uri",
        "https-uri-first",
        "two-spiffe-uris",
        "no-uri",
        "no-san",
        "other-trust-domain",
        "no-principal",
    ],
)
def test_a_certificate_of_a_refused_shape_is_unauthenticated(
    ca: devpki.Issued,
    verifier: ClientCertificateVerifier,
    make: Callable[[devpki.Issued], devpki.Issued],
    reason: str,
) -> None:
    assert reason in _refusal(verifier, make(ca))


def test_a_certificate_issued_by_a_ca_leaf_is_refused(
    ca: devpki.Issued, verifier: ClientCertificateVerifier
) -> None:
    rogue = certs.leaf(ca, [ALPHA], name="rogue", ca=True)
    child = certs.leaf(rogue, [BETA], name="beta impostor")
    # With the rogue leaf as intermediate (what passed gRPC's handshake): the root's path
    # length 0 forbids it. Without it: no chain to the CA at all.
    assert "path length" in _refusal(verifier, child, rogue.cert_pem())
    assert "refused" in _refusal(verifier, child)


def test_a_certificate_from_another_ca_is_refused(verifier: ClientCertificateVerifier) -> None:
    other = devpki.create_ca("hsmd test CA", NOW)  # the same name, another key
    assert "refused" in _refusal(verifier, devpki.issue(other, "app", uris=[ALPHA]))


def test_an_expired_certificate_is_refused(
    ca: devpki.Issued, verifier: ClientCertificateVerifier
) -> None:
    cert = certs.leaf(
        ca, [ALPHA], not_before=NOW - timedelta(days=2), not_after=NOW - timedelta(seconds=1)
    )
    assert "expired" in _refusal(verifier, cert)


def test_a_certificate_not_valid_yet_is_refused(
    ca: devpki.Issued, verifier: ClientCertificateVerifier
) -> None:
    cert = certs.leaf(ca, [ALPHA], not_before=NOW + timedelta(hours=1))
    assert "not valid yet" in _refusal(verifier, cert)


def test_an_intermediate_within_the_roots_path_length_is_accepted(clock: MovableClock) -> None:
    root = devpki.create_ca("root", NOW, path_length=1)
    # No path length of its own: only the root's limits the chain (gRPC's handshake does not
    # apply a trust anchor's path length).
    intermediate = devpki.create_ca("intermediate", NOW, path_length=None, issuer=root)
    cert = devpki.issue(intermediate, "app", uris=[ALPHA])
    verifier = ClientCertificateVerifier(root.cert_pem(), DOMAIN, clock)
    assert verifier.identify(cert.cert_pem(), intermediate.cert_pem()).tenant == "alpha"
    assert "refused" in _refusal(verifier, cert)  # the client must send its intermediate
    deeper = devpki.create_ca("deeper", NOW, issuer=intermediate)
    beyond = devpki.issue(deeper, "app", uris=[ALPHA])
    chain = deeper.cert_pem() + intermediate.cert_pem()
    assert "path length" in _refusal(verifier, beyond, chain)


def test_an_intermediate_that_expires_first_bounds_the_chain(clock: MovableClock) -> None:
    root = devpki.create_ca("root", NOW, path_length=1)
    intermediate = devpki.create_ca("intermediate", NOW, days=1, issuer=root)
    cert = devpki.issue(intermediate, "app", uris=[ALPHA])  # valid for 825 days
    verifier = ClientCertificateVerifier(root.cert_pem(), DOMAIN, clock)
    assert verifier.identify(cert.cert_pem(), intermediate.cert_pem()).tenant == "alpha"
    clock.time = NOW + timedelta(days=2)
    with pytest.raises(Unauthenticated, match="expired"):
        verifier.identify(cert.cert_pem(), intermediate.cert_pem())


def test_every_certificate_of_the_ca_file_is_a_trust_anchor(
    ca: devpki.Issued, clock: MovableClock
) -> None:
    second = devpki.create_ca("second CA", NOW)
    verifier = ClientCertificateVerifier(ca.cert_pem() + second.cert_pem(), DOMAIN, clock)
    for issuer, uri in ((ca, ALPHA), (second, BETA)):
        assert verifier.identify(devpki.issue(issuer, "app", uris=[uri]).cert_pem()).name == "app"


def _root(*, critical: bool = True, key_cert_sign: bool = True) -> devpki.Issued:
    """A self-signed CA whose basicConstraints may be non-critical, or keyUsage without
    keyCertSign."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "odd root")])
    usage = x509.KeyUsage(True, False, False, False, False, key_cert_sign, True, False, False)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(minutes=5))
        .not_valid_after(NOW + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=critical)
        .add_extension(usage, critical=True)
        .sign(key, hashes.SHA256())
    )
    return devpki.Issued(certificate, key)


@pytest.mark.parametrize(
    "bundle",
    [
        b"",
        b"not a certificate",
        devpki.issue(devpki.create_ca("ca", NOW), "leaf", uris=[ALPHA]).cert_pem(),
        devpki.create_ca("ca", NOW).cert_pem() + _root(critical=False).cert_pem(),
        _root(key_cert_sign=False).cert_pem(),
    ],
    ids=["empty", "garbage", "a-leaf", "non-critical-ca", "no-key-cert-sign"],
)
def test_a_ca_file_pyca_cannot_use_stops_the_start(clock: MovableClock, bundle: bytes) -> None:
    with pytest.raises(ConfigError, match=r"tls\.ca_cert"):
        ClientCertificateVerifier(bundle, DOMAIN, clock)


def test_pyca_refuses_every_client_of_what_the_start_refuses() -> None:
    # The start-time check is no stricter than pyca's verifier (and notices if pyca relaxes).
    for root in (_root(critical=False), _root(key_cert_sign=False)):
        leaf = devpki.issue(root, "app", uris=[ALPHA])
        verifier = PolicyBuilder().store(Store([root.certificate])).time(NOW)
        with pytest.raises(VerificationError):
            verifier.build_client_verifier().verify(leaf.certificate, [])


def test_the_refusal_says_why_and_nothing_else(
    ca: devpki.Issued, verifier: ClientCertificateVerifier
) -> None:
    rogue = certs.leaf(ca, [ALPHA], name="internal-host-name-17", ca=True)
    message = _refusal(verifier, rogue)
    assert "basicConstraints.cA" in message
    assert "internal-host-name-17" not in message
    assert "encountered processing" not in message
    assert message.isprintable()


def test_unparsable_and_oversized_input_is_refused(
    ca: devpki.Issued, verifier: ClientCertificateVerifier
) -> None:
    with pytest.raises(Unauthenticated, match="cannot be parsed"):
        verifier.identify(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    cert = devpki.issue(ca, "app", uris=[ALPHA])
    with pytest.raises(Unauthenticated, match="too large"):
        verifier.identify(cert.cert_pem(), ca.cert_pem() * (MAX_PRESENTED_BYTES // 500))
    with pytest.raises(Unauthenticated, match="too many"):
        verifier.identify(cert.cert_pem(), ca.cert_pem() * 9)


# The cache: once per certificate, validity from the cached window on every call.


def test_a_known_certificate_is_neither_parsed_nor_verified_again(
    ca: devpki.Issued, verifier: ClientCertificateVerifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert = devpki.issue(ca, "app", uris=[ALPHA]).cert_pem()
    first = verifier.identify(cert)
    parses = []
    real_load = x509.load_pem_x509_certificate
    monkeypatch.setattr(
        x509, "load_pem_x509_certificate", lambda data: parses.append(data) or real_load(data)
    )
    for _ in range(5):
        assert verifier.identify(cert) == first
    assert verifier.verifications == 1
    assert parses == []
    other = devpki.issue(ca, "app", uris=[BETA]).cert_pem()
    assert verifier.identify(other).tenant == "beta"  # the spy does see a new certificate
    assert (verifier.verifications, len(parses)) == (2, 1)


def test_a_refused_certificate_is_remembered(
    ca: devpki.Issued, verifier: ClientCertificateVerifier
) -> None:
    rogue = certs.leaf(ca, [ALPHA], ca=True)
    first = _refusal(verifier, rogue)
    assert _refusal(verifier, rogue) == first
    assert verifier.verifications == 1


def test_a_certificate_that_expires_is_refused_at_its_next_call(
    ca: devpki.Issued, verifier: ClientCertificateVerifier, clock: MovableClock
) -> None:
    cert = certs.leaf(ca, [ALPHA], not_after=NOW + timedelta(hours=1))
    not_after = cert.certificate.not_valid_after_utc  # whole seconds
    assert verifier.identify(cert.cert_pem()).tenant == "alpha"
    clock.time = not_after
    assert verifier.identify(cert.cert_pem()).tenant == "alpha"  # the last valid second
    clock.time = not_after + timedelta(seconds=1)
    assert "expired" in _refusal(verifier, cert)
    assert verifier.verifications == 1


def test_a_certificate_not_valid_yet_is_accepted_once_it_is(
    ca: devpki.Issued, verifier: ClientCertificateVerifier, clock: MovableClock
) -> None:
    not_before = NOW + timedelta(hours=1)
    cert = certs.leaf(ca, [ALPHA], not_before=not_before)
    assert "not valid yet" in _refusal(verifier, cert)
    clock.time = not_before + timedelta(seconds=1)
    assert verifier.identify(cert.cert_pem()).tenant == "alpha"
    assert verifier.verifications == 1


def test_the_caches_are_bounded(ca: devpki.Issued, clock: MovableClock) -> None:
    verifier = ClientCertificateVerifier(
        ca.cert_pem(), DOMAIN, clock, verified_cache_size=2, refused_cache_size=1
    )
    good = [devpki.issue(ca, "app", uris=[ALPHA]).cert_pem() for _ in range(3)]
    for cert in good:
        verifier.identify(cert)
    verifier.identify(good[2])  # still cached
    assert verifier.verifications == 3
    verifier.identify(good[0])  # evicted by the third
    assert verifier.verifications == 4
    bad = [certs.leaf(ca, [ALPHA], ca=True).cert_pem() for _ in range(2)]
    for cert in (*bad, bad[0]):
        with pytest.raises(Unauthenticated):
            verifier.identify(cert)
    assert verifier.verifications == 7  # refusals do not evict the verified ones
    verifier.identify(good[0])
    assert verifier.verifications == 7


def test_many_threads_get_the_right_answer(ca: devpki.Issued, clock: MovableClock) -> None:
    verifier = ClientCertificateVerifier(
        ca.cert_pem(), DOMAIN, clock, verified_cache_size=3, refused_cache_size=1
    )
    good = {
        devpki.issue(ca, "app", uris=[ALPHA if i % 2 else BETA]).cert_pem(): i for i in range(4)
    }
    bad = [certs.leaf(ca, [ALPHA], ca=True).cert_pem() for _ in range(2)]
    wrong: list[str] = []

    def work() -> None:
        for _ in range(30):
            for cert, i in good.items():
                if verifier.identify(cert).tenant != ("alpha" if i % 2 else "beta"):
                    wrong.append("wrong principal")
            for cert in bad:
                try:
                    verifier.identify(cert)
                    wrong.append("accepted a CA leaf")
                except Unauthenticated:
                    pass

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []


# --- revocation and a new CA bundle (hsmd.auth.revocation) -------------------------------------


def _revoked(ca: devpki.Issued, *certificates: devpki.Issued) -> bytes:
    return devpki.revocation_list(ca, [c.certificate.serial_number for c in certificates], NOW)


def test_a_revoked_certificate_is_refused_at_its_next_call(
    verifier: ClientCertificateVerifier, ca: devpki.Issued
) -> None:
    leaver, stayer = devpki.issue(ca, "leaver", uris=[ALPHA]), devpki.issue(ca, "s", uris=[BETA])
    verifier.identify(leaver.cert_pem())  # verified and cached before the revocation
    verifier.revoke(load_revocations(_revoked(ca, leaver), verifier.anchors, NOW))
    assert _refusal(verifier, leaver) == "the client certificate (or its issuer) is revoked"
    assert verifier.identify(stayer.cert_pem()).tenant == "beta"
    verifier.revoke(Revocations.none())
    assert verifier.identify(leaver.cert_pem()).tenant == "alpha"


def test_a_revoked_intermediate_refuses_the_certificates_it_issued(clock: MovableClock) -> None:
    root = devpki.create_ca("root", NOW, path_length=1)
    intermediate = devpki.create_ca("intermediate", NOW, issuer=root)
    leaf = devpki.issue(intermediate, "leaf", uris=[ALPHA])
    verifier = ClientCertificateVerifier(root.cert_pem(), DOMAIN, clock)
    verifier.revoke(load_revocations(_revoked(root, intermediate), verifier.anchors, NOW))
    assert "revoked" in _refusal(verifier, leaf, intermediate.cert_pem())


def test_a_crl_file_holds_a_list_per_ca_in_pem_or_one_in_der(clock: MovableClock) -> None:
    first, second = devpki.create_ca("first", NOW), devpki.create_ca("second", NOW)
    one, two = devpki.issue(first, "one", uris=[ALPHA]), devpki.issue(second, "two", uris=[ALPHA])
    anchors = [first.certificate, second.certificate]
    both = load_revocations(_revoked(first, one) + _revoked(second, two), anchors, NOW)
    assert both.revoked == {certificate_id(one.certificate), certificate_id(two.certificate)}
    der = x509.load_pem_x509_crl(_revoked(first, one)).public_bytes(serialization.Encoding.DER)
    assert load_revocations(der, anchors, NOW).revoked == {certificate_id(one.certificate)}


@pytest.mark.parametrize(
    ("crl", "message"),
    [
        (lambda ca: b"not a list", "holds no CRL"),
        (lambda ca: _revoked(devpki.create_ca("stranger", NOW)), "not signed by a CA"),
        # A list in the CA's name, signed by another key: forged.
        (
            lambda ca: _revoked(
                devpki.Issued(ca.certificate, ec.generate_private_key(ec.SECP256R1()))
            ),
            "not signed by a CA",
        ),
    ],
)
def test_a_crl_that_does_not_load_is_refused_whole(
    ca: devpki.Issued, crl: Callable[[devpki.Issued], bytes], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_revocations(crl(ca), [ca.certificate], NOW)


def test_a_new_bundle_trusts_its_cas_and_forgets_the_verdicts(
    verifier: ClientCertificateVerifier, ca: devpki.Issued
) -> None:
    second = devpki.create_ca("second", NOW)
    newcomer, old = devpki.issue(second, "n", uris=[ALPHA]), devpki.issue(ca, "o", uris=[ALPHA])
    assert "refused" in _refusal(verifier, newcomer)
    verifier.identify(old.cert_pem())
    verifier.trust(second.cert_pem())
    assert verifier.identify(newcomer.cert_pem()).tenant == "alpha"
    assert "refused" in _refusal(verifier, old)  # the first CA is no longer trusted
    with pytest.raises(ConfigError):
        verifier.trust(b"no certificate")
    assert verifier.identify(newcomer.cert_pem()).tenant == "alpha"  # the bundle in use stays
