"""Calling peer regions (hsmd.ops.regions.Peers) over gRPC with mutual TLS.

This region presents [region] client_cert, whose URI SAN names
spiffe://<trust-domain>/region/<this region>, and trusts the peer's server certificate as the
deployment's CA issued it for the address [region] peers names. That alone would let anyone
with a server certificate of the CA for that address pose as the peer, so the answers that
decide where material goes or whom a replica follows (a tenant token's transport key, a
key's primary region) must also be signed with the peer's region certificate
(hsmd.transport.endorsement).

A peer's answer comes back as the HsmdError a caller of this region should see: a refusal by
the peer is this region's FAILED_PRECONDITION naming the peer (the caller is not the one
refused), a peer that cannot be reached is UNAVAILABLE, NOT_FOUND stays NOT_FOUND (a replica
that is gone).
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc

from hsmd.auth.certificates import ClientCertificateVerifier
from hsmd.config import RegionSettings
from hsmd.domain import Key
from hsmd.errors import (
    BackendError,
    FailedPrecondition,
    HsmdError,
    NotFound,
    RegionUnavailable,
)
from hsmd.ops.regions import ReplicaPackage
from hsmd.transport import convert, endorsement
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
        statement = endorsement.transport_key(tenant, answer.public_key)
        self._check(region, statement, answer.signature, answer.certificate_chain)
        return bytes(answer.public_key)

    def primary_region(self, region: str, tenant: str, key_id: str) -> str:
        nonce = secrets.token_bytes(endorsement.NONCE_SIZE)
        request = region_pb2.GetPrimaryRegionRequest(tenant=tenant, key_id=key_id, nonce=nonce)
        answer = self._call(
            region, lambda stub, **options: stub.GetPrimaryRegion(request, **options)
        )
        statement = endorsement.primary(tenant, key_id, answer.primary_region, nonce)
        self._check(region, statement, answer.signature, answer.certificate_chain)
        return str(answer.primary_region)

    def _check(self, region: str, statement: bytes, signature: bytes, chain: bytes) -> None:
        try:
            endorsement.verify(self._verifier, region, statement, signature, chain)
        except endorsement.NotEndorsed as exc:
            raise FailedPrecondition(f"region {region}'s answer is refused: {exc}") from None

    def put_replica(self, region: str, package: ReplicaPackage) -> Key:
        request = region_pb2.PutReplicaRequest(
            key=convert.replica_key(package.key),
            versions=[convert.replica_version(version) for version in package.versions],
            new_replica=package.new,
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
