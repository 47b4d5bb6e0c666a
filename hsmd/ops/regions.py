"""Multi-region keys: a primary replicated to peer regions with the same id and material, its
versions kept in step, the primary role moved (docs/regions.md).

A multi-region key is made in its primary region (CreateKey multi_region). ReplicateKey sends a
peer region a package: the key's shared properties and each version's material, wrapped in the
primary's token for the peer token's transport key (hsmd.backend.regions), which the peer
unwraps in its token. The peer records the key with the same id, spec, usage and version
numbers, so a blob or a signature of one region is one of every region's. Rotations happen at
the primary only; after each, a maintenance pass runs at once and pushes the new version to
every replica, and each later pass pushes again to a replica that was not reached (sync_due).

Which copy is the primary is the one thing two regions must never disagree on while both act:
two primaries could each rotate and give one version number two materials. So a region acts
as primary only on its own row, the old primary steps down before it tells the new one, a
replica takes versions only from the primary its row names (or one that primary vouches
for), and every change of a key's regions or versions here is made under that key's lock.

The calls between regions go through Peers (hsmd.transport.peers: gRPC over the same mutual
TLS, each region's certificate naming spiffe://<trust-domain>/region/<name>); a peer accepts
them only from a region in its own [region] peers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
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
    VersionState,
)
from hsmd.errors import (
    REASON_UNSUPPORTED_OPERATION,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RegionUnavailable,
)
from hsmd.keyspecs import SPECS
from hsmd.keystore.store import KeyStore
from hsmd.lifecycle import Operation
from hsmd.ops.keys import KeyMaker, check_new_key_fields, new_version
from hsmd.ops.resolve import as_now, usable_key
from hsmd.quotas import QuotaLimits, default_limits

log = logging.getLogger(__name__)

# The states in which a replica takes versions, or the primary role.
_RECEIVING = (KeyState.ENABLED, KeyState.DISABLED)
# How long a replica that refused a push (pending deletion, other material) is left alone.
REFUSAL_BACKOFF_SECONDS = 300


@dataclass(frozen=True)
class ReplicaVersion:
    """One version's material, wrapped for the receiving token's transport key, for an
    asymmetric key its public key (SPKI), and a value that tells whether two tokens hold the
    same material for it (CryptoBackend.check_value)."""

    version: int
    created_at: datetime
    rotation_type: RotationType | None
    wrapped: bytes
    public_key: bytes = b""
    check_value: str = ""  # the backend's check_value of the version (hex)


@dataclass(frozen=True)
class ReplicaPackage:
    """What a primary sends a replica. key: as the primary holds it, with multi_region as the
    replica should record it, and the description, policy and tags a new replica starts with
    (a replica's own are its own afterwards, as in AWS KMS). Only a package of ReplicateKey
    (new) makes a replica where one was destroyed: a push that catches a replica up never
    brings back one its region deleted."""

    key: Key
    versions: tuple[ReplicaVersion, ...]
    new: bool = False  # ReplicateKey's: may make anew a replica destroyed here before


@dataclass(frozen=True)
class Replicated:
    """What a maintenance pass did between regions, for its audit event: SyncReplica (a
    replica brought up to date), DropReplica (the primary learnt its replica is gone) or
    ForgetReplica (a replica's region told the primary it is gone)."""

    operation: str
    key: Key
    regions: tuple[str, str]  # this region, the other


class Peers(Protocol):
    """The other regions, as this one reaches them. Each call raises the HsmdError the peer
    answered with (NotFound, FailedPrecondition, ...), or RegionUnavailable when the peer
    cannot be reached or its answer was lost (then it may have acted)."""

    def trusts(self, region: str) -> bool:
        """Whether the region is among this region's peers ([region] peers)."""
        ...

    def transport_key(self, region: str, tenant: str) -> bytes:
        """The SPKI of the tenant token's transport key in the region, as the region's own
        certificate vouches for it."""
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

    def primary_region(self, region: str, tenant: str, key_id: str) -> str:
        """Which region the region's copy of the key names as its primary."""
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
        # One lock per key, held by every change of its regions or versions here (rotations
        # too, through exclusive()): each reads what it changes. Per key, so that two regions
        # moving the roles of different keys towards each other do not wait on each other.
        self._locks: dict[tuple[str, str], threading.RLock] = {}
        self._locks_lock = threading.Lock()
        self._wake: Callable[[], None] = lambda: None
        # (tenant, key id, region) -> when that replica last refused a push (monotonic).
        self._refused: dict[tuple[str, str, str], float] = {}

    def wake_with(self, wake: Callable[[], None]) -> None:
        """What rotated() calls: a maintenance pass now (hsmd.ops.maintenance)."""
        self._wake = wake

    def exclusive(self, key: Key) -> AbstractContextManager[bool]:
        """Held by a rotation of the key (hsmd.ops.rotation): no move of its primary role,
        no package received and no version recorded in the meantime."""
        return self._locked(key.tenant, key.key_id)

    def _locked(self, tenant: str, key_id: str) -> threading.RLock:
        with self._locks_lock:
            return self._locks.setdefault((tenant, key_id), threading.RLock())

    def rotated(self, key: Key) -> None:
        """After a rotation of a primary with replicas: the maintenance pass that pushes the
        new version runs now (audited, and retried by later passes if a region is down)."""
        if key.multi_region is not None and key.multi_region.replicas:
            self._wake()

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
            RegionUnavailable: the peer cannot be reached, or its answer was lost (calling
                again is safe: a replica there is brought up to date).
        """
        key = usable_key(self._store, ctx, key_id, Operation.REPLICATE)
        regions = self._regions_of(key)
        peers = self._peer(replica_region)
        if replica_region == regions.region:
            raise InvalidArgument(f"key {key.key_id} is in region {replica_region} already")
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
        # As it is now, under its lock: a deletion or a move of the role cannot come between.
        with as_now(self._store, self.exclusive, key, Operation.REPLICATE):
            package = replace(self._package(created, replica_region), new=True)
            replica = peers.put_replica(replica_region, package)
            self._record(key, replica_region, replica.primary_version, adding=True)
        log.info("replicated key %s to region %s", key.key_id, replica_region)
        return replica

    def update_primary_region(self, ctx: RequestContext, key_id: str, primary_region: str) -> Key:
        """Makes the key's replica in primary_region its primary; this region's copy becomes
        a replica. Returns this region's copy.

        This copy steps down before it tells the new primary, so there are never two. If that
        cannot be told (the region down, the answer lost), the copy stays a replica of it and
        the call fails; calling it again here finishes the move.

        Raises:
            FailedPrecondition: the key is not a multi-region primary (nor a replica whose
                move to primary_region is unfinished), has no replica in the region, or the
                region refused (then nothing changed).
            RegionUnavailable: the region cannot be reached (a move begun is finished by
                calling again).
        """
        key = usable_key(self._store, ctx, key_id, Operation.UPDATE_PRIMARY_REGION)
        peers = self._peer(primary_region)
        with self._locked(key.tenant, key.key_id):
            key = self._store.get_key(key.tenant, key.key_id)  # as it is now, under the lock
            regions = self._regions_of(key)
            if not regions.is_primary:
                if not regions.moving or regions.primary_region != primary_region:
                    raise FailedPrecondition(
                        f"key {key.key_id} is a replica of the primary in"
                        f" {regions.primary_region}: call UpdatePrimaryRegion there",
                        REASON_UNSUPPORTED_OPERATION,
                    )
                return self._finish_move(key, peers)  # a move this region began
            if regions.replica(primary_region) is None:
                raise FailedPrecondition(
                    f"key {key.key_id} has no replica in region {primary_region}"
                )
            # The new primary has every version before it takes the role.
            peers.put_replica(primary_region, self._package(key, primary_region))
            replicas = tuple(
                [r for r in regions.replicas if r.region != primary_region]
                + [Replica(regions.region, key.primary_version)]
            )
            stepped_down = self._store.update_key(
                key.tenant,
                key.key_id,
                multi_region=MultiRegion(regions.region, primary_region, replicas, moving=True),
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
            peers.promote(
                primary, replace(key, multi_region=replace(regions, region=primary, moving=False))
            )
        except (FailedPrecondition, NotFound):
            raise
        except Exception as exc:
            raise RegionUnavailable(
                f"region {primary} was not told it is the primary of {key.key_id} ({exc}): this"
                " copy is a replica of it already; call UpdatePrimaryRegion again to finish"
            ) from exc
        log.info("key %s: its primary is now in region %s", key.key_id, primary)
        return self._store.update_key(
            key.tenant, key.key_id, multi_region=replace(regions, moving=False)
        )

    # What maintenance does (hsmd.ops.maintenance)

    def sync_due(self) -> Iterator[Replicated]:
        """Sends every replica that lacks versions of its primary here the versions it lacks,
        and tells the primary of every replica here that was destroyed. A region that fails
        is not called again in the same pass (each call waits up to its timeout)."""
        if self._peers is None:
            return
        failed: set[str] = set()
        for key in self._store.multi_region_keys():
            regions = key.multi_region
            if regions is None:
                continue
            if key.state is KeyState.DESTROYED:
                if not regions.is_primary and regions.primary_region not in failed:
                    yield from self._forget(key, regions.primary_region, failed)
                continue
            if not regions.is_primary:
                continue
            for replica in regions.replicas:
                if replica.versions >= key.primary_version or replica.region in failed:
                    continue
                refused = (key.tenant, key.key_id, replica.region)
                if self._refused.get(refused, -REFUSAL_BACKOFF_SECONDS) > (
                    time.monotonic() - REFUSAL_BACKOFF_SECONDS
                ):
                    continue
                try:
                    yield from self._sync(key, replica.region)
                except (FailedPrecondition, InvalidArgument) as exc:
                    # That replica's own trouble (pending deletion, other material): it is
                    # tried again later, the region's other replicas now.
                    self._refused[refused] = time.monotonic()
                    log.warning(
                        "key %s: region %s refused version %d (%s); tried again in %d s",
                        key.key_id,
                        replica.region,
                        key.primary_version,
                        exc,
                        REFUSAL_BACKOFF_SECONDS,
                    )
                except Exception as exc:
                    failed.add(replica.region)
                    log.warning(
                        "key %s: region %s is behind (version %d of %d) and could not be"
                        " reached: %s",
                        key.key_id,
                        replica.region,
                        replica.versions,
                        key.primary_version,
                        exc,
                    )
                else:
                    self._refused.pop(refused, None)

    def _sync(self, key: Key, region: str) -> Iterator[Replicated]:
        try:
            replica = self._peer(region).put_replica(region, self._package(key, region))
        except NotFound:
            log.warning("key %s: its replica in region %s was destroyed", key.key_id, region)
            with self._locked(key.tenant, key.key_id):
                dropped = self._drop(key, region)
            yield Replicated("DropReplica", dropped, (self._here(), region))
            return
        with self._locked(key.tenant, key.key_id):
            synced = self._record(key, region, replica.primary_version)
        if synced is not None:
            yield Replicated("SyncReplica", synced, (self._here(), region))

    def _forget(self, key: Key, primary: str, failed: set[str]) -> Iterator[Replicated]:
        try:
            self._peer(primary).forget_replica(primary, key.tenant, key.key_id)
        except NotFound:
            pass  # the primary had dropped it already
        except Exception as exc:
            failed.add(primary)
            log.warning(
                "key %s: region %s was not told its replica here is destroyed (%s); the next"
                " pass tells it",
                key.key_id,
                primary,
                exc,
            )
            return
        # Told: the destroyed row no longer names regions, so no pass tells it again (unless
        # it was replicated anew meanwhile).
        with self._locked(key.tenant, key.key_id):
            current = self._local(key.tenant, key.key_id)
            if current is None or current.multi_region != key.multi_region:
                return
            self._store.update_key(key.tenant, key.key_id, multi_region=None)
        yield Replicated("ForgetReplica", key, (self._here(), primary))

    # What a peer region asks of this one (hsmd.transport.servicer.RegionServicer)

    def transport_key(self, caller: Principal, tenant: str) -> bytes:
        self._check_caller(caller, tenant)
        return self._backend.transport_key(tenant)

    def primary_of(self, caller: Principal, tenant: str, key_id: str) -> str:
        """The primary region this region's copy of the key names."""
        self._check_caller(caller, tenant)
        local = self._local(tenant, key_id)
        if local is None or local.multi_region is None:
            raise NotFound(f"key {key_id} is not a multi-region key here")
        return local.multi_region.primary_region

    def receive(self, caller: Principal, package: ReplicaPackage) -> Key:
        """Makes the replica the package describes, or adds the versions it lacks.

        Raises:
            PermissionDenied: the caller is not a peer, or the tenant is not served here.
            FailedPrecondition: the caller is not the key's primary, the key here is not a
                replica, or it is PENDING_DELETION.
            NotFound: the replica here was destroyed (a package that makes it anew excepted).
            InvalidArgument: no versions, or one's material does not unwrap in this token.
        """
        sent = package.key
        self._check_caller(caller, sent.tenant)
        regions = sent.multi_region
        if regions is None or regions.primary_region != caller.name:
            raise FailedPrecondition(f"region {caller.name} sent a key it is not the primary of")
        if regions.replica(self._here()) is None:
            raise FailedPrecondition(f"region {self._here()} is not a replica of {sent.key_id}")
        if not package.versions:
            raise InvalidArgument("a replica needs at least one version")
        with self._locked(sent.tenant, sent.key_id):
            local = self._local(sent.tenant, sent.key_id)
            if local is not None and local.state is KeyState.DESTROYED:
                if not package.new:  # the primary is catching up a replica that is gone
                    raise NotFound(f"the replica of key {sent.key_id} here was destroyed")
                self._discard(local)  # replicated anew
                local = None
            here = MultiRegion(self._here(), regions.primary_region, regions.replicas)
            if local is not None:
                self._check_sender(local, caller.name)
                local = self._store.update_key(local.tenant, local.key_id, multi_region=here)
                return self._add_versions(local, package.versions)
            created = self._create(sent, here)
            try:
                return self._add_versions(created, package.versions)
            except BaseException:
                self._discard(created)  # a replica that never was: the next push makes it
                raise

    def promote(self, caller: Principal, key: Key) -> Key:
        """Makes the replica here the primary (UpdatePrimaryRegion at the old primary); told
        again, answers the same.

        Raises:
            FailedPrecondition: the caller is not this replica's primary, the replica is not
                ENABLED or DISABLED, or lacks versions the caller has.
        """
        self._check_caller(caller, key.tenant)
        if key.multi_region is None:
            raise FailedPrecondition("the promotion names no regions")
        with self._locked(key.tenant, key.key_id):
            local = self._local(key.tenant, key.key_id)
            if local is not None and local.multi_region and local.multi_region.is_primary:
                return local  # a move the caller finishes after a lost answer
            local = self._replica_of(caller.name, key.tenant, key.key_id)
            if local.state not in _RECEIVING:
                raise FailedPrecondition(f"the replica here is {local.state}")
            if local.primary_version < key.primary_version:
                raise FailedPrecondition(
                    f"the replica here has {local.primary_version} versions of"
                    f" {key.primary_version}"
                )
            period = key.rotation_period_days
            # Every other replica still names the old primary: counting none of its versions,
            # the next pass pushes to each, and each follows once the old primary vouches.
            replicas = tuple(
                r if r.region == caller.name else Replica(r.region, 0)
                for r in key.multi_region.replicas
            )
            promoted = self._store.update_key(
                local.tenant,
                local.key_id,
                multi_region=MultiRegion(self._here(), self._here(), replicas),
                rotation_period_days=period,
                next_rotation_at=self._clock.now() + timedelta(days=period) if period else None,
            )
        self._wake()
        return promoted

    def forget_replica(self, caller: Principal, tenant: str, key_id: str) -> Key:
        """The caller's replica of the primary here is gone."""
        self._check_caller(caller, tenant)
        with self._locked(tenant, key_id):
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

    def _check_sender(self, local: Key, sender: str) -> None:
        """The sender may push to this replica: it is the primary the replica's row names, or
        that primary says the sender is the primary now (the role moved since)."""
        regions = local.multi_region
        if regions is None or regions.is_primary:
            raise FailedPrecondition(f"key {local.key_id} is not a replica in this region")
        if local.state not in _RECEIVING:
            raise FailedPrecondition(f"the replica of {local.key_id} here is {local.state}")
        if regions.primary_region == sender:
            return
        try:
            vouched = self._peer(regions.primary_region).primary_region(
                regions.primary_region, local.tenant, local.key_id
            )
        except Exception as exc:  # never NOT_FOUND to the sender: the replica is here
            raise FailedPrecondition(
                f"region {sender} says it is the primary of {local.key_id}, and the primary"
                f" here, {regions.primary_region}, could not confirm it ({exc})"
            ) from None
        if vouched != sender:
            raise FailedPrecondition(
                f"region {sender} is not the primary of {local.key_id}: its primary here is"
                f" {regions.primary_region}, which names {vouched}"
            )

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
        """Every enabled version of the key, wrapped in this token for the region's token (a
        CREATING version is a rotation that may still be rolled back)."""
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
                self._backend.check_value(key.tenant, version.object_id, key.spec),
            )
            for version in self._store.versions(key.tenant, key.key_id)
            if version.state is VersionState.ENABLED
        )
        return ReplicaPackage(key, versions)

    def _record(self, key: Key, region: str, versions: int, *, adding: bool = False) -> Key | None:
        """Notes how many versions the region's replica holds, in the primary's row as it is
        now; None if the replica was dropped meanwhile (and not `adding` it)."""
        current = self._store.get_key(key.tenant, key.key_id)
        regions = self._regions_of(current)
        if not regions.is_primary or (regions.replica(region) is None and not adding):
            return None
        replicas = [r for r in regions.replicas if r.region != region]
        return self._store.update_key(
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

    def _discard(self, destroyed: Key) -> None:
        """Removes a destroyed replica's rows, its objects first (destruction destroys them
        unless the token was away; then this does), so a new replica can take the id."""
        for version in self._store.versions(destroyed.tenant, destroyed.key_id):
            self._backend.destroy(destroyed.tenant, version.object_id)
        self._store.remove_key(destroyed.tenant, destroyed.key_id)

    def _check_same(self, local: Key, sent: ReplicaVersion, object_id: bytes) -> None:
        here = self._backend.check_value(local.tenant, object_id, local.spec)
        if not sent.check_value or here != sent.check_value:
            raise FailedPrecondition(
                f"version {sent.version} of key {local.key_id} here is other material than the"
                " sender's"
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
        """Checks the versions the replica holds are the sender's material, then unwraps those
        it lacks, in order, each by the recoverable protocol of a rotation (a CREATING row,
        the object, then the row enabled); the replica is ENABLED once its first are in.

        Raises:
            FailedPrecondition: a version here is other material than the sender's (a region
                that made the replica before the primary did, or a primary's lost history).
        """
        held = {v.version: v for v in self._store.versions(local.tenant, local.key_id)}
        for sent in sorted(versions, key=lambda v: v.version):
            version = held.get(sent.version)
            if version is not None:
                self._check_same(local, sent, version.object_id)
                continue
            with new_version(
                self._store, self._backend, local, sent.created_at, sent.rotation_type
            ) as row:
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
                self._check_same(local, sent, row.object_id)
            self._store.activate_version(row, None)
        if local.state is KeyState.CREATING:
            return self._store.update_key(local.tenant, local.key_id, state=KeyState.ENABLED)
        return self._store.get_key(local.tenant, local.key_id)
