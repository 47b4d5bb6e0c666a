"""Calling peer regions (hsmd.ops.regions.Peers) over gRPC with mutual TLS.

This region presents [region] client_cert, whose URI SAN names
spiffe://<trust-domain>/region/<this region>, and trusts the peer's server certificate as the
deployment's CA issued it for the address [region] peers names. That alone would let anyone
with a server certificate of the CA for that address pose as the peer, so the one answer that
decides where material goes, a tenant token's transport key, must also be signed with the
peer's region certificate (RegionIdentity.endorse), which this region verifies as it verifies
any client certificate and which must name the region called.

A peer's answer comes back as the HsmdError a caller of this region should see: a refusal by
the peer is this region's FAILED_PRECONDITION naming the peer (the caller is not the one
refused), a peer that cannot be reached is UNAVAILABLE, NOT_FOUND stays NOT_FOUND (a replica
that is gone).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from hsmd.auth.certificates import ClientCertificateVerifier
from hsmd.config import RegionSettings
from hsmd.domain import Key, Principal, PrincipalKind
from hsmd.errors import (
    BackendError,
    ConfigError,
    FailedPrecondition,
    HsmdError,
    NotFound,
    RegionUnavailable,
    Unauthenticated,
)
from hsmd.ops.regions import ReplicaPackage
from hsmd.transport import convert
from hsmd.transport.forward import MAX_MESSAGE
from hsmd.v1 import region_pb2, region_pb2_grpc

log = logging.getLogger(__name__)

_R = TypeVar("_R")

_REFUSALS = frozenset(
    {
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
_UNREACHABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


_ENDORSED = b"hsmd region transport key v1\n"


def _endorsed(tenant: str, public_key: bytes) -> bytes:
    """What a region signs to vouch for a tenant token's transport key (region.proto)."""
    return _ENDORSED + tenant.encode() + b"\n" + public_key


class RegionIdentity:
    """This region's certificate and key ([region] client_cert, client_key), read once."""

    def __init__(self, settings: RegionSettings, verifier: ClientCertificateVerifier) -> None:
        """Raises ConfigError unless the certificate is one the peers accept as this region
        (verified as a client's, naming spiffe://<trust-domain>/region/<name>)."""
        assert settings.client_cert is not None and settings.client_key is not None
        self._chain = settings.client_cert.read_bytes()
        try:
            leaf, chain = _leaf_and_chain(self._chain)
            named = verifier.identify(leaf, chain)
        except (ValueError, Unauthenticated) as exc:
            raise ConfigError(
                f"region.client_cert is not a usable region certificate: {exc}"
            ) from None
        if named != Principal(PrincipalKind.REGION, str(settings.name)):
            raise ConfigError(f"region.client_cert names {named}, not region/{settings.name}")
        key = serialization.load_pem_private_key(settings.client_key.read_bytes(), None)
        if not isinstance(
            key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
        ):
            raise ConfigError("region.client_key must be an EC, Ed25519 or RSA private key")
        self._key = key

    def endorse(self, tenant: str, public_key: bytes) -> tuple[bytes, bytes]:
        """(signature, certificate chain PEM) vouching for the tenant's transport key."""
        data = _endorsed(tenant, public_key)
        key = self._key
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return key.sign(data, ec.ECDSA(hashes.SHA256())), self._chain
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return key.sign(data), self._chain
        return key.sign(data, _PSS, hashes.SHA256()), self._chain


def _leaf_and_chain(pem: bytes) -> tuple[bytes, bytes]:
    """A PEM bundle's first certificate, and the rest. Raises ValueError if it holds none."""
    certificates = x509.load_pem_x509_certificates(pem)
    encoded = [c.public_bytes(serialization.Encoding.PEM) for c in certificates]
    return encoded[0], b"".join(encoded[1:])


_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)


def verify_endorsement(
    verifier: ClientCertificateVerifier,
    region: str,
    tenant: str,
    answer: region_pb2.GetTransportKeyResponse,
) -> bytes:
    """The transport key of the answer, if the region's own certificate vouches for it.

    Raises:
        FailedPrecondition: it does not (another identity, a bad signature, no certificate).
    """
    try:
        leaf, chain = _leaf_and_chain(answer.certificate_chain)
    except ValueError:
        raise FailedPrecondition(
            f"region {region} sent its transport key without a certificate"
        ) from None
    try:
        signer = verifier.identify(leaf, chain)
    except Unauthenticated as exc:
        raise FailedPrecondition(f"region {region}'s certificate is refused: {exc}") from None
    if signer != Principal(PrincipalKind.REGION, region):
        raise FailedPrecondition(f"a transport key said to be region {region}'s is {signer}'s")
    certificate = x509.load_pem_x509_certificate(leaf)
    public_key, data = certificate.public_key(), _endorsed(tenant, answer.public_key)
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(answer.signature, data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(answer.signature, data)
        elif isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(answer.signature, data, _PSS, hashes.SHA256())
        else:
            raise InvalidSignature()
    except InvalidSignature:
        raise FailedPrecondition(
            f"region {region}'s transport key is not signed by its region certificate"
        ) from None
    return bytes(answer.public_key)


class GrpcPeers:
    """The peers of [region], one channel each, made on first use. reconfigure() takes a
    reloaded [region] (SIGHUP): a peer added or removed by an operator counts from then."""

    def __init__(
        self, settings: RegionSettings, ca_cert: Path, verifier: ClientCertificateVerifier
    ) -> None:
        self._lock = threading.Lock()
        self._ca_cert = ca_cert
        self._verifier = verifier
        self._settings = settings
        self._stubs: dict[str, tuple[grpc.Channel, region_pb2_grpc.RegionServiceStub]] = {}

    def reconfigure(self, settings: RegionSettings) -> None:
        if self._replace(settings):
            log.warning("region peers are now: %s", ", ".join(sorted(settings.peers)) or "none")

    def close(self) -> None:
        self._replace(RegionSettings())

    def _replace(self, settings: RegionSettings) -> bool:
        with self._lock:
            if settings == self._settings:
                return False
            self._settings = settings
            stale, self._stubs = self._stubs, {}
        for channel, _ in stale.values():
            channel.close()
        return True

    def trusts(self, region: str) -> bool:
        return region in self._settings.peers

    def transport_key(self, region: str, tenant: str) -> bytes:
        answer = self._call(
            region,
            lambda stub, **options: stub.GetTransportKey(
                region_pb2.GetTransportKeyRequest(tenant=tenant), **options
            ),
        )
        return verify_endorsement(self._verifier, region, tenant, answer)

    def primary_region(self, region: str, tenant: str, key_id: str) -> str:
        request = region_pb2.GetPrimaryRegionRequest(tenant=tenant, key_id=key_id)
        answer = self._call(
            region, lambda stub, **options: stub.GetPrimaryRegion(request, **options)
        )
        return str(answer.primary_region)

    def put_replica(self, region: str, package: ReplicaPackage) -> Key:
        request = region_pb2.PutReplicaRequest(
            key=convert.replica_key(package.key),
            versions=[convert.replica_version(version) for version in package.versions],
        )
        answer = self._call(region, lambda stub, **options: stub.PutReplica(request, **options))
        return convert.key_from_metadata(answer.key_metadata)

    def promote(self, region: str, key: Key) -> Key:
        request = region_pb2.PromoteReplicaRequest(key=convert.replica_key(key))
        answer = self._call(region, lambda stub, **options: stub.PromoteReplica(request, **options))
        return convert.key_from_metadata(answer.key_metadata)

    def forget_replica(self, region: str, tenant: str, key_id: str) -> None:
        request = region_pb2.ForgetReplicaRequest(tenant=tenant, key_id=key_id)
        self._call(region, lambda stub, **options: stub.ForgetReplica(request, **options))

    def _call(self, region: str, call: Callable[..., _R]) -> _R:
        stub = self._stub(region)
        try:
            return call(stub, timeout=self._settings.call_timeout_seconds)
        except grpc.RpcError as exc:
            raise _answer(region, exc) from None

    def _stub(self, region: str) -> region_pb2_grpc.RegionServiceStub:
        with self._lock:
            settings = self._settings
            address = settings.peers.get(region)
            if address is None:
                raise FailedPrecondition(f"region {region!r} is not a peer of this region")
            if region not in self._stubs:
                self._stubs[region] = _connect(settings, self._ca_cert, address)
            return self._stubs[region][1]


def _connect(
    settings: RegionSettings, ca_cert: Path, address: str
) -> tuple[grpc.Channel, region_pb2_grpc.RegionServiceStub]:
    assert settings.client_cert is not None and settings.client_key is not None
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca_cert.read_bytes(),
        private_key=settings.client_key.read_bytes(),
        certificate_chain=settings.client_cert.read_bytes(),
    )
    channel = grpc.secure_channel(
        address,
        credentials,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
        ],
    )
    return channel, region_pb2_grpc.RegionServiceStub(channel)


def _answer(region: str, exc: Any) -> HsmdError:
    code = exc.code()
    details = str(exc.details() or "")[:300]
    if code is grpc.StatusCode.NOT_FOUND:
        return NotFound(f"region {region}: {details}")
    if code in _REFUSALS:
        return FailedPrecondition(f"region {region} refused: {details}")
    if code in _UNREACHABLE:
        return RegionUnavailable(f"region {region} cannot be reached now; retry later")
    log.error("region %s answered %s: %s", region, code, details)
    return BackendError(f"region {region} answered {code.name}")
