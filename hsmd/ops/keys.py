"""Key management: create, describe, list, description and tags (start-up repair is in
hsmd.ops.reconcile).

Creation spans a metadata row and a token object and no transaction can hold both, so it is a
recoverable protocol (DESIGN §7): commit a CREATING row naming the object's CKA_ID, generate the
object, then mark the row ENABLED. hsmd.ops.reconcile repairs whatever a crash left between the
steps; rotations (hsmd.ops.rotation) follow the same protocol with CREATING versions.
"""

from __future__ import annotations

import logging
import re
import secrets
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from hsmd import keyspecs, limits, policy
from hsmd.backend.api import Capabilities, CryptoBackend
from hsmd.domain import (
    ClientRequest,
    Clock,
    Key,
    KeyOrigin,
    KeyPolicy,
    KeySpec,
    KeyState,
    KeyUsage,
    KeyVersion,
    MultiRegion,
    RequestContext,
    RotationType,
)
from hsmd.errors import (
    REASON_INVALID_TAG,
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    Unimplemented,
)
from hsmd.keystore.store import KeyStore
from hsmd.lifecycle import Operation
from hsmd.names import new_multi_region_key_id
from hsmd.ops import paging
from hsmd.ops.resolve import usable_key
from hsmd.quotas import QuotaLimits, default_limits
from hsmd.wrapped import WRAPPABLE

# Key specs whose material ImportKeyMaterial can bring (all but Ed25519, as in AWS KMS).
IMPORTABLE = frozenset(KeySpec) - {KeySpec.ED25519}
# Key specs a multi-region key can have: those a peer's transport key can unwrap, the same as
# can be imported (hsmd.backend.regions uses import's unwrapping).
REPLICABLE = IMPORTABLE

log = logging.getLogger(__name__)

MAX_DESCRIPTION = limits.MAX_DESCRIPTION_CHARS
OBJECT_ID_SIZE = 16
MAX_TAGS = limits.MAX_TAGS
_TAG_KEY = re.compile(rf".{{1,{limits.MAX_TAG_KEY_CHARS}}}", re.DOTALL)


@dataclass(frozen=True)
class KeyPage:
    keys: list[Key]
    next_page_token: str


def new_object_id() -> bytes:
    """A random CKA_ID: nothing about the key can be read from its token object's name."""
    return secrets.token_bytes(OBJECT_ID_SIZE)


class KeyMaker:
    """What every family of operations that makes keys (creation, unwrapping, import) works
    with: the store, the token, the clock, and each tenant's quota limits."""

    def __init__(
        self,
        store: KeyStore,
        backend: CryptoBackend,
        clock: Clock,
        limits: Callable[[str], QuotaLimits] = default_limits,
    ) -> None:
        self._store = store
        self._backend = backend
        self._clock = clock
        self._limits = limits


class KeyOps(KeyMaker):
    def __init__(
        self,
        store: KeyStore,
        backend: CryptoBackend,
        clock: Clock,
        limits: Callable[[str], QuotaLimits] = default_limits,
        region: str | None = None,
    ) -> None:
        """region: this instance's region, where its multi-region keys have their primary."""
        super().__init__(store, backend, clock, limits)
        self._region = region

    def capabilities(self) -> Capabilities:
        return self._backend.capabilities()

    def create_key(
        self,
        ctx: RequestContext,
        spec: KeySpec,
        usage: KeyUsage | None,
        description: str,
        key_policy: KeyPolicy | None = None,
        tags: Mapping[str, str] | None = None,
        exportable: bool = False,
        origin: KeyOrigin = KeyOrigin.GENERATED,
        request: ClientRequest | None = None,
        multi_region: bool = False,
    ) -> Key:
        """Creates a key with one version, generated in the tenant's token (or, for origin
        EXTERNAL, a PENDING_IMPORT key whose material ImportKeyMaterial brings). With a client
        request token used before, returns the key that call made instead (replayed).
        multi_region: the primary of a multi-region key in this instance's region (its id
        starts "mrk-"; ReplicateKey copies it to peer regions, hsmd.ops.regions).

        Raises:
            InvalidArgument: the usage does not fit the spec, a field is out of range, or the
                client token was used for a different request.
            FailedPrecondition: the policy would leave no administrator or lock the caller out.
            Unimplemented: the backend cannot make keys of this spec.
            FailedPrecondition: multi_region, and this instance has no region.
            Aborted: the call that first used the client token is still running.
            ResourceExhausted: the tenant has as many keys as its quota allows, or the tags
                are more than its quota of tags per key.
        """
        earlier = replayed(self._store, ctx, request)
        if earlier is not None:
            return earlier
        usage = usage or keyspecs.default_usage(spec)
        keyspecs.check_usage(spec, usage)
        if spec not in self._backend.capabilities().key_specs:
            raise Unimplemented(f"this backend cannot make {spec} keys (see GetCapabilities)")
        if origin is KeyOrigin.UNWRAPPED:
            raise InvalidArgument("origin UNWRAPPED keys are made by UnwrapKey, not CreateKey")
        if origin is KeyOrigin.EXTERNAL and spec not in IMPORTABLE:
            raise InvalidArgument(f"{spec} key material cannot be imported")
        if exportable and spec not in WRAPPABLE:
            raise InvalidArgument(f"only AES and HMAC keys can be exportable, not {spec}")
        regions = self._multi_region(spec, usage, origin, exportable) if multi_region else None
        quota = self._limits(ctx.tenant)
        key_policy = check_new_key_fields(
            self._store, ctx, description, key_policy, tags or {}, quota
        )
        external = origin is KeyOrigin.EXTERNAL
        now = self._clock.now()
        key = Key(
            tenant=ctx.tenant,
            key_id=new_multi_region_key_id() if regions else str(uuid.uuid4()),
            description=description,
            spec=spec,
            usage=usage,
            origin=origin,
            state=KeyState.PENDING_IMPORT if external else KeyState.CREATING,
            created_at=now,
            primary_version=1,
            policy=key_policy,
            tags=tuple(sorted((tags or {}).items())),
            exportable=exportable,
            multi_region=regions,
        )
        if external:  # its material comes later, through ImportKeyMaterial
            return add_new_key(self._store, ctx, key, None, request, quota) or key
        version = KeyVersion(ctx.tenant, key.key_id, 1, new_object_id(), now)
        earlier = add_new_key(self._store, ctx, key, version, request, quota)
        if earlier is not None:
            return earlier
        with rolled_back_unless_finished(self._store, self._backend, key, version):
            self._backend.generate_key(
                ctx.tenant, version.object_id, spec, usage, exportable, replicable=bool(regions)
            )
            created = self._store.update_key(ctx.tenant, key.key_id, state=KeyState.ENABLED)
        log.info("created key %s (%s, %s)", key.key_id, spec, usage)
        return created

    def _multi_region(
        self, spec: KeySpec, usage: KeyUsage, origin: KeyOrigin, exportable: bool
    ) -> MultiRegion:
        if self._region is None:
            raise FailedPrecondition(
                "this instance is in no region, so it makes no multi-region keys (an operator"
                " sets [region] name, docs/regions.md)"
            )
        if origin is not KeyOrigin.GENERATED or exportable:
            raise InvalidArgument("a multi-region key is generated by hsmd and not exportable")
        if spec not in REPLICABLE:
            raise InvalidArgument(f"{spec} keys cannot be multi-region")
        if usage is KeyUsage.WRAP_UNWRAP:
            raise InvalidArgument("a wrapping key cannot be multi-region")
        return MultiRegion(self._region, self._region)

    def describe_key(self, ctx: RequestContext, key_id: str) -> Key:
        return usable_key(self._store, ctx, key_id, Operation.DESCRIBE)

    def list_keys(
        self,
        ctx: RequestContext,
        page_size: int,
        page_token: str,
        tag_filter: Mapping[str, str] | None = None,
    ) -> KeyPage:
        """One page of the caller's keys, oldest first, optionally only those with given tags.

        Raises:
            InvalidArgument: page_size is out of range, page_token is not one we issued, or
                the filter names more tags than a key can have.
        """
        if tag_filter and len(tag_filter) > MAX_TAGS:
            raise InvalidArgument(f"tag_filter names at most {MAX_TAGS} tags (a key has no more)")
        keys, cursor = self._store.list_keys(
            ctx.tenant,
            paging.decode_token(page_token),
            paging.page_size(page_size),
            tag_filter,
        )
        # Only keys whose policy gives the caller a role, as DescribeKey would; a page may
        # hold fewer keys than page_size, and next_page_token still says whether more follow.
        visible = [key for key in keys if policy.roles(key.policy, ctx.principal)]
        return KeyPage(visible, paging.encode_token(cursor))

    def update_description(self, ctx: RequestContext, key_id: str, description: str) -> Key:
        _check_description(description)
        key = usable_key(self._store, ctx, key_id, Operation.UPDATE_DESCRIPTION)
        return self._store.update_key(key.tenant, key.key_id, description=description)

    def tag_key(self, ctx: RequestContext, key_id: str, tags: Mapping[str, str]) -> Key:
        if not tags:
            raise InvalidArgument("tags must name at least one tag")
        key = usable_key(self._store, ctx, key_id, Operation.TAG)
        _check_tags(tags, key.tags, self._limits(ctx.tenant))
        return self._store.tag_key(key.tenant, key.key_id, tags, ())

    def untag_key(self, ctx: RequestContext, key_id: str, tag_keys: Iterable[str]) -> Key:
        tag_keys = list(tag_keys)
        if not tag_keys:
            raise InvalidArgument("tag_keys must name at least one tag")
        key = usable_key(self._store, ctx, key_id, Operation.UNTAG)
        return self._store.tag_key(key.tenant, key.key_id, {}, tag_keys)


@contextmanager
def rolled_back_unless_finished(
    store: KeyStore, backend: CryptoBackend, key: Key, version: KeyVersion
) -> Iterator[None]:
    """Undoes a creation whose block fails after its CREATING row (making the object or
    marking the row ENABLED): the object (if any), then the row.

    The row goes even when the object cannot be destroyed now (the token unreachable, the
    daemon stopping): a retry with the same client token must not find the creation "still
    running" forever, and an object left behind is quarantined by the next start, never used.
    If the row cannot go either (the database is down), the next start rolls it back.
    """
    try:
        yield
    except BaseException:
        _roll_back(store, backend, key, version)
        raise


def _roll_back(store: KeyStore, backend: CryptoBackend, key: Key, version: KeyVersion) -> None:
    try:
        backend.destroy(key.tenant, version.object_id)
    except Exception as exc:
        log.warning(
            "tenant %s: the object of the unfinished key %s could not be destroyed (%s); if"
            " it exists, the next start puts it in quarantine",
            key.tenant,
            key.key_id,
            exc,
        )
    store.remove_key(key.tenant, key.key_id)
    log.info("tenant %s: rolled back the failed creation of key %s", key.tenant, key.key_id)


@contextmanager
def new_version(
    store: KeyStore,
    backend: CryptoBackend,
    key: Key,
    created_at: datetime,
    how: RotationType | None,
) -> Iterator[KeyVersion]:
    """The next version of a key, by the recoverable protocol of creation: its CREATING row
    is recorded, the block makes its token object, and if the block fails the object (if
    any) and the row go. The caller enables the row (activate_version) after the block."""
    version = store.add_version(key.tenant, key.key_id, new_object_id(), created_at, how)
    try:
        yield version
    except BaseException:
        try:
            backend.destroy(key.tenant, version.object_id)
        finally:
            store.remove_version(key.tenant, key.key_id, version.version)
        raise


def replayed(store: KeyStore, ctx: RequestContext, request: ClientRequest | None) -> Key | None:
    """The key an earlier call with the same client token made (as it is now), if any.

    Raises:
        InvalidArgument: the token was used for a different request (or by another principal).
        Aborted: the call that used it is still making the key.
        PermissionDenied: the key's policy no longer lets the caller see it.
    """
    if request is None:
        return None
    found = store.key_for_request(ctx.tenant, request.token)
    if found is None:
        return None
    key, first = found
    if first.fingerprint != request.fingerprint:
        raise InvalidArgument("client_token was used for a different request")
    if key.state is KeyState.CREATING:
        raise Aborted("the call that first used this client_token is still running; retry")
    # The answer is the key's metadata as it is now: only for a caller its policy still lets
    # see it (the policy may have changed since the first call).
    policy.check_permitted(key.policy, ctx.principal, Operation.DESCRIBE)
    return key


def add_new_key(
    store: KeyStore,
    ctx: RequestContext,
    key: Key,
    version: KeyVersion | None,
    request: ClientRequest | None,
    quota: QuotaLimits,
) -> Key | None:
    """Records a new key (and its first version) under the client token, within the
    tenant's key quota. Returns None when it did; returns the other call's key when a
    concurrent call with the same token got there first (so the caller answers with that key
    and makes nothing).

    Raises:
        ResourceExhausted: the tenant has quota.max_keys keys (checked in the store's
            transaction, so concurrent creations cannot go past it).
    """
    try:
        store.add_key(key, version, request, quota.max_keys)
    except AlreadyExists:
        earlier = replayed(store, ctx, request)
        if earlier is None:
            raise
        return earlier
    return None


def check_new_key_fields(
    store: KeyStore,
    ctx: RequestContext,
    description: str,
    key_policy: KeyPolicy | None,
    tags: Mapping[str, str],
    quota: QuotaLimits,
) -> KeyPolicy:
    """Checks what every way of making a key takes, and returns the policy it will have."""
    _check_description(description)
    _check_tags(tags, (), quota)
    if key_policy is None:
        tenant = store.get_tenant(ctx.tenant)
        administrators = tenant.admin_principals if tenant else ()
        key_policy = policy.default_policy(ctx.principal, administrators)
    policy.validate(key_policy, ctx.principal)
    return key_policy


def _check_description(description: str) -> None:
    if len(description) > MAX_DESCRIPTION:
        raise InvalidArgument(f"description is longer than {MAX_DESCRIPTION} characters")


def _check_tags(
    add: Mapping[str, str], existing: Iterable[tuple[str, str]], quota: QuotaLimits
) -> None:
    """MAX_TAGS bounds the input; the tenant's quota may allow fewer. Two TagKey calls on
    one key at the same moment may together pass the quota by the tags of one of them."""
    for name, value in add.items():
        if not _TAG_KEY.fullmatch(name) or len(value) > limits.MAX_TAG_VALUE_CHARS:
            raise InvalidArgument(
                f"tag keys are 1-{limits.MAX_TAG_KEY_CHARS} characters and tag values"
                f" 0-{limits.MAX_TAG_VALUE_CHARS}",
                REASON_INVALID_TAG,
            )
    count = len(set(add) | {name for name, _ in existing})
    if count > MAX_TAGS:
        raise InvalidArgument(f"a key has at most {MAX_TAGS} tags", REASON_INVALID_TAG)
    if count > quota.max_tags_per_key:
        raise ResourceExhausted(
            f"limit exceeded: a key of this tenant may have at most {quota.max_tags_per_key}"
            f" tags ({count} asked)"
        )
