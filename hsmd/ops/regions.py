"""Multi-region keys: a primary replicated to peer regions with the same id and material, its
versions kept in step, the primary role moved (docs/regions.md).

A multi-region key is made in its primary region (CreateKey multi_region). ReplicateKey sends a
peer region a package: the key's shared properties and each version's material, wrapped in the
primary's token for the peer token's transport key (hsmd.backend.regions), which the peer
unwraps in its token. The peer records the key with the same id, spec, usage and version
numbers, so a blob or a signature of one region is one of every region's. Rotations happen at
the primary only; each is pushed to the replicas at once, and a replica that was not reached
is pushed to again by every maintenance pass until it has every version (sync_due).

The calls between regions go through Peers (hsmd.transport.peers: gRPC over the same mutual
TLS, each region's certificate naming spiffe://<trust-domain>/region/<name>); a peer accepts
them only from a region in its own [region] peers.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Protocol

from hsmd.backend.api import CryptoBackend, UnwrapTarget
from hsmd.domain import (
    Clock,
    Key,
    KeyOrigin,
    KeyPolicy,
    KeyState,
    MultiRegion,
    Principal,
    PrincipalKind,
    Replica,
    RequestContext,
    RotationType,
)
from hsmd.errors import (
    REASON_UNSUPPORTED_OPERATION,
    AlreadyExists,
    FailedPrecondition,
    NotFound,
    PermissionDenied,
    RegionUnavailable,
)
from hsmd.keyspecs import SPECS
from hsmd.keystore.store import KeyStore
from hsmd.lifecycle import Operation
from hsmd.ops.keys import KeyMaker, check_new_key_fields, new_object_id
from hsmd.ops.resolve import usable_key
from hsmd.quotas import QuotaLimits, default_limits

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplicaVersion:
    """One version's material, wrapped for the receiving token's transport key, and for an
    asymmetric key its public key (SPKI)."""

    version: int
    created_at: datetime
    rotation_type: RotationType | None
    wrapped: bytes
    public_key: bytes = b""


@dataclass(frozen=True)
class ReplicaPackage:
    """What a primary sends a replica. key: as the primary holds it, with multi_region as the
    replica should record it, and the description, policy and tags a new replica starts with
    (a replica's own are its own afterwards, as in AWS KMS)."""

    key: Key
    versions: tuple[ReplicaVersion, ...]


class Peers(Protocol):
    """The other regions, as this one reaches them. Each call raises the HsmdError the peer
    answered with (NotFound, FailedPrecondition, PermissionDenied, ...), or BackendUnavailable
    when the peer cannot be reached."""

    def trusts(self, region: str) -> bool:
        """Whether the region is among this region's peers ([region] peers)."""
        ...

    def transport_key(self, region: str, tenant: str) -> bytes:
        """The SPKI of the tenant token's transport key in the region."""
        ...

    def put_replica(self, region: str, package: ReplicaPackage) -> Key:
        """Makes or brings up to date the key's replica in the region; returns it."""
        ...

    def promote(self, region: str, key: Key) -> Key:
        """Makes the region's replica of the key the primary, with key.multi_region's
        replicas and key's rotation period; returns the new primary."""
        ...

    def forget_replica(self, region: str, tenant: str, key_id: str) -> None:
        """Tells the primary in the region that this region's replica is gone."""
        ...


class ReplicationOps(KeyMaker):
    def __init__(
        self,
        store: KeyStore,
        backend: CryptoBackend,
        clock: Clock,
        region: str | None,
        peers: Peers | None,
        admit_tenant: Callable[[str], None],
        limits: Callable[[str], QuotaLimits] = default_limits,
    ) -> None:
        """region, peers: this instance's region and its peers (None: in no region).
        admit_tenant: raises unless this instance serves the tenant (TenantOps.admit)."""
        super().__init__(store, backend, clock, limits)
        self._region = region
        self._peers = peers
        self._admit_tenant = admit_tenant
        self._receiving = threading.Lock()  # one package at a time: rare, and versions race

    # What a tenant's principal asks of the primary

    def replicate(
        self,
        ctx: RequestContext,
        key_id: str,
        replica_region: str,
        description: str | None,
        key_policy: KeyPolicy | None,
        tags: Mapping[str, str],
    ) -> Key:
        """Makes a replica of the primary key key_id in replica_region; returns the replica.
        Its description defaults to the primary's and its policy to the tenant's default.

        Raises:
            FailedPrecondition: the key is not a multi-region primary, the region is not a
                peer, or the peer refused.
            AlreadyExists: the key has a replica in the region.
            BackendUnavailable: the peer cannot be reached; nothing changed.
        """
        key = usable_key(self._store, ctx, key_id, Operation.REPLICATE)
        regions = self._regions_of(key)
        peers = self._peer(replica_region)
        if regions.replica(replica_region) is not None:
            raise AlreadyExists(f"key {key.key_id} has a replica in region {replica_region}")
        description = key.description if description is None else description
        policy = check_new_key_fields(
            self._store, ctx, description, key_policy, tags, self._limits(ctx.tenant)
        )
        created = replace(
            key,
            description=description,
            policy=policy,
            tags=tuple(sorted(tags.items())),
            multi_region=replace(regions, replicas=(*regions.replicas, Replica(replica_region, 0))),
        )
        replica = peers.put_replica(replica_region, self._package(created, replica_region))
        self._record(key, replica_region, replica.primary_version)
        log.info("replicated key %s to region %s", key.key_id, replica_region)
        return replica

    def update_primary_region(self, ctx: RequestContext, key_id: str, primary_region: str) -> Key:
        """Makes the key's replica in primary_region its primary; this region's copy becomes
        a replica. Returns this region's copy.

        The move never leaves two primaries, which could each rotate and give one version
        number two materials: this copy steps down first, then the new primary is told. If
        that cannot be told (the region down, the answer lost), the copy stays a replica of
        it and the call fails; calling it again here finishes the move.

        Raises:
            FailedPrecondition: the key is not a multi-region primary (nor a replica whose
                move to primary_region is unfinished), or has no replica in the region.
            RegionUnavailable: the region cannot be reached (a move begun is finished by
                calling again).
        """
        key = usable_key(self._store, ctx, key_id, Operation.UPDATE_PRIMARY_REGION)
        regions = self._regions_of(key)
        peers = self._peer(primary_region)
        if not regions.is_primary:
            if regions.primary_region != primary_region:
                raise FailedPrecondition(
                    f"key {key.key_id} is a replica of the primary in {regions.primary_region}:"
                    " call UpdatePrimaryRegion there",
                    REASON_UNSUPPORTED_OPERATION,
                )
            return self._finish_move(key, peers)  # a move this region began
        if regions.replica(primary_region) is None:
            raise FailedPrecondition(f"key {key.key_id} has no replica in region {primary_region}")
        # The new primary has every version before it takes the role.
        peers.put_replica(primary_region, self._package(key, primary_region))
        replicas = tuple(
            [r for r in regions.replicas if r.region != primary_region]
            + [Replica(regions.region, key.primary_version)]
        )
        stepped_down = self._store.update_key(
            key.tenant,
            key.key_id,
            multi_region=MultiRegion(regions.region, primary_region, replicas),
            next_rotation_at=None,  # the new primary rotates
        )
        try:
            return self._finish_move(stepped_down, peers)
        except (FailedPrecondition, NotFound):  # refused outright: nothing changed there
            self._store.update_key(
                key.tenant,
                key.key_id,
                multi_region=regions,
                next_rotation_at=key.next_rotation_at,
            )
            raise

    def _finish_move(self, key: Key, peers: Peers) -> Key:
        """Tells the primary this copy names that it is the primary, with every other copy,
        this one included, as its replicas."""
        regions = self._regions_of(key)
        primary = regions.primary_region
        try:
            peers.promote(primary, replace(key, multi_region=replace(regions, region=primary)))
        except (FailedPrecondition, NotFound):
            raise
        except Exception as exc:
            raise RegionUnavailable(
                f"region {primary} was not told it is the primary of {key.key_id} ({exc}): this"
                " copy is a replica of it already; call UpdatePrimaryRegion again to finish"
            ) from exc
        log.info("key %s: its primary is now in region %s", key.key_id, primary)
        return key

    def push_versions(self, key: Key) -> None:
        """After a rotation: sends the primary's new version to each replica now; one not
        reached is sent it by a later maintenance pass (sync_due)."""
        if key.multi_region is None or not key.multi_region.is_primary:
            return
        for replica in key.multi_region.replicas:
            try:
                self._sync(key, replica.region)
            except Exception as exc:  # a region down: the maintenance passes retry
                log.warning(
                    "key %s: region %s did not take version %d now (%s); it will be retried",
                    key.key_id,
                    replica.region,
                    key.primary_version,
                    exc,
                )

    def sync_due(self) -> Iterator[tuple[Key, str]]:
        """Sends every replica that lacks versions of its primary here the versions it lacks;
        yields (key, region) for each replica brought up to date."""
        for key in self._store.multi_region_keys():
            regions = key.multi_region
            if regions is None or not regions.is_primary or self._peers is None:
                continue
            for replica in regions.replicas:
                if replica.versions >= key.primary_version:
                    continue
                try:
                    self._sync(key, replica.region)
                except Exception as exc:
                    log.warning(
                        "key %s: region %s is behind (version %d of %d) and could not be"
                        " brought up to date: %s",
                        key.key_id,
                        replica.region,
                        replica.versions,
                        key.primary_version,
                        exc,
                    )
                    continue
                yield key, replica.region

    def replica_destroyed(self, key: Key) -> None:
        """A replica here was destroyed: tells its primary, which stops sending it versions
        (if it cannot be told now, it learns at its next push, answered NOT_FOUND)."""
        regions = key.multi_region
        if regions is None or regions.is_primary or self._peers is None:
            return
        try:
            self._peers.forget_replica(regions.primary_region, key.tenant, key.key_id)
        except Exception as exc:
            log.warning(
                "key %s: region %s was not told its replica here is destroyed (%s); it learns"
                " at its next push",
                key.key_id,
                regions.primary_region,
                exc,
            )

    # What a peer region asks of this one (hsmd.transport.servicer.RegionServicer)

    def transport_key(self, caller: Principal, tenant: str) -> bytes:
        self._check_caller(caller, tenant)
        return self._backend.transport_key(tenant)

    def receive(self, caller: Principal, package: ReplicaPackage) -> Key:
        """Makes the replica the package describes, or adds the versions it lacks.

        Raises:
            PermissionDenied: the caller is not a peer, or the tenant is not served here.
            FailedPrecondition: the caller is not the key's primary, or the key here is.
            NotFound: the replica here was destroyed (a package that makes it anew excepted).
            InvalidArgument: a version's material does not unwrap in this token.
        """
        sent = package.key
        self._check_caller(caller, sent.tenant)
        regions = sent.multi_region
        if regions is None or regions.primary_region != caller.name:
            raise FailedPrecondition(f"region {caller.name} is not the primary of this key")
        entry = regions.replica(self._here())
        if entry is None:
            raise FailedPrecondition(f"region {self._here()} is not a replica of {sent.key_id}")
        with self._receiving:
            local = self._local(sent.tenant, sent.key_id)
            if local is not None and (local.multi_region is None or local.multi_region.is_primary):
                raise FailedPrecondition(f"key {sent.key_id} is not a replica in this region")
            if local is not None and local.state is KeyState.DESTROYED:
                if entry.versions:  # the primary is catching up a replica that is gone
                    raise NotFound(f"the replica of key {sent.key_id} here was destroyed")
                self._store.remove_key(local.tenant, local.key_id)  # replicated anew
                local = None
            here = MultiRegion(self._here(), regions.primary_region, regions.replicas)
            if local is None:
                local = self._create(sent, here)
            else:
                local = self._store.update_key(local.tenant, local.key_id, multi_region=here)
            return self._add_versions(local, package.versions)

    def promote(self, caller: Principal, key: Key) -> Key:
        """Makes the replica here the primary (UpdatePrimaryRegion at the old primary)."""
        self._check_caller(caller, key.tenant)
        local = self._local(key.tenant, key.key_id)
        if local is not None and local.multi_region and local.multi_region.is_primary:
            return local  # told again: a move the caller finishes after a lost answer
        local = self._replica_of(caller.name, key.tenant, key.key_id)
        if key.multi_region is None:
            raise FailedPrecondition("the promotion names no regions")
        period = key.rotation_period_days
        return self._store.update_key(
            local.tenant,
            local.key_id,
            multi_region=MultiRegion(self._here(), self._here(), key.multi_region.replicas),
            rotation_period_days=period,
            next_rotation_at=self._clock.now() + timedelta(days=period) if period else None,
        )

    def forget_replica(self, caller: Principal, tenant: str, key_id: str) -> Key:
        """The caller's replica of the primary here is gone."""
        self._check_caller(caller, tenant)
        local = self._local(tenant, key_id)
        if local is None or local.multi_region is None or not local.multi_region.is_primary:
            raise NotFound(f"key {key_id} has no primary here")
        return self._drop(local, caller.name)

    # Helpers

    def _peer(self, region: str) -> Peers:
        if self._peers is None or not self._peers.trusts(region):
            raise FailedPrecondition(
                f"region {region!r} is not a peer of this region: an operator adds it to"
                " [region] peers (docs/regions.md)"
            )
        return self._peers

    def _here(self) -> str:
        if self._region is None:
            raise FailedPrecondition("this instance is in no region")
        return self._region

    def _check_caller(self, caller: Principal, tenant: str) -> None:
        if caller.kind is not PrincipalKind.REGION or self._peers is None:
            raise PermissionDenied("only peer regions replicate keys")
        if not self._peers.trusts(caller.name):
            raise PermissionDenied(
                f"region {caller.name!r} is not a peer of region {self._region}: an operator"
                " of this region adds it to [region] peers"
            )
        self._admit_tenant(tenant)

    def _regions_of(self, key: Key) -> MultiRegion:
        if key.multi_region is None:  # lifecycle.check_allowed refused it already
            raise FailedPrecondition(f"key {key.key_id} is not a multi-region key")
        return key.multi_region

    def _local(self, tenant: str, key_id: str) -> Key | None:
        try:
            return self._store.get_key(tenant, key_id)
        except NotFound:
            return None

    def _replica_of(self, primary_region: str, tenant: str, key_id: str) -> Key:
        local = self._local(tenant, key_id)
        regions = local.multi_region if local else None
        if local is None or regions is None or regions.is_primary:
            raise NotFound(f"key {key_id} has no replica here")
        if regions.primary_region != primary_region:
            raise FailedPrecondition(f"region {primary_region} is not the primary of {key_id}")
        return local

    def _package(self, key: Key, region: str) -> ReplicaPackage:
        """Every version of the key, wrapped in this token for the region's token."""
        peers = self._peer(region)
        self._backend.trust_peer(key.tenant, region, peers.transport_key(region, key.tenant))
        asymmetric = SPECS[key.spec].family.asymmetric
        versions = tuple(
            ReplicaVersion(
                version.version,
                version.created_at,
                version.rotation_type,
                self._backend.wrap_for_peer(key.tenant, region, version.object_id, key.spec),
                self._backend.public_key(key.tenant, version.object_id, key.spec)
                if asymmetric
                else b"",
            )
            for version in self._store.versions(key.tenant, key.key_id)
        )
        return ReplicaPackage(key, versions)

    def _sync(self, key: Key, region: str) -> None:
        try:
            replica = self._peer(region).put_replica(region, self._package(key, region))
        except NotFound:
            log.warning("key %s: its replica in region %s was destroyed", key.key_id, region)
            self._drop(key, region)
            return
        self._record(key, region, replica.primary_version)

    def _record(self, key: Key, region: str, versions: int) -> None:
        current = self._store.get_key(key.tenant, key.key_id)
        regions = self._regions_of(current)
        replicas = [r for r in regions.replicas if r.region != region]
        self._store.update_key(
            key.tenant,
            key.key_id,
            multi_region=replace(regions, replicas=(*replicas, Replica(region, versions))),
        )

    def _drop(self, key: Key, region: str) -> Key:
        current = self._store.get_key(key.tenant, key.key_id)
        regions = self._regions_of(current)
        replicas = tuple(r for r in regions.replicas if r.region != region)
        return self._store.update_key(
            key.tenant, key.key_id, multi_region=replace(regions, replicas=replicas)
        )

    def _create(self, sent: Key, here: MultiRegion) -> Key:
        key = replace(
            sent,
            origin=KeyOrigin.GENERATED,
            state=KeyState.CREATING,
            primary_version=0,
            next_rotation_at=None,
            deletion_at=None,
            exportable=False,
            valid_to=None,
            material_fingerprint="",
            multi_region=here,
        )
        self._store.add_key(key, None, None, self._limits(key.tenant).max_keys)
        return key

    def _add_versions(self, local: Key, versions: tuple[ReplicaVersion, ...]) -> Key:
        """Unwraps the versions the replica lacks, in order, each by the recoverable protocol
        of a rotation (a CREATING row, the object, then the row enabled); the replica is
        ENABLED once its first versions are in."""
        have = max((v.version for v in self._store.versions(local.tenant, local.key_id)), default=0)
        for sent in sorted(versions, key=lambda v: v.version):
            if sent.version <= have:
                continue
            row = self._store.add_version(
                local.tenant, local.key_id, new_object_id(), sent.created_at, sent.rotation_type
            )
            try:
                if row.version != sent.version:
                    raise FailedPrecondition(
                        f"key {local.key_id}: version {sent.version} came before {row.version}"
                    )
                self._backend.unwrap_from_peer(
                    local.tenant,
                    sent.wrapped,
                    UnwrapTarget(
                        row.object_id,
                        local.spec,
                        local.usage,
                        public_key=sent.public_key or None,
                        replicable=True,
                    ),
                )
            except Exception:
                try:
                    self._backend.destroy(local.tenant, row.object_id)
                finally:
                    self._store.remove_version(local.tenant, local.key_id, row.version)
                raise
            self._store.activate_version(row, None)
            have = sent.version
        if local.state is KeyState.CREATING:
            return self._store.update_key(local.tenant, local.key_id, state=KeyState.ENABLED)
        return self._store.get_key(local.tenant, local.key_id)
