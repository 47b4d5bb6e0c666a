"""Key management: create, describe, list, and the start-up reconciliation of keys and objects.

Creation spans a metadata row and a token object and no transaction can hold both, so it is a
recoverable protocol (DESIGN §7): commit a CREATING row naming the object's CKA_ID, generate the
object, then mark the row ENABLED. `reconcile` repairs whatever a crash left between the steps.
"""

from __future__ import annotations

import base64
import binascii
import logging
import secrets
import uuid
from dataclasses import dataclass

from hsmd import keyspecs
from hsmd.backend.api import Capabilities, CryptoBackend
from hsmd.domain import (
    Clock,
    Key,
    KeyOrigin,
    KeySpec,
    KeyState,
    KeyUsage,
    KeyVersion,
    RequestContext,
)
from hsmd.errors import InvalidArgument, Unimplemented
from hsmd.keystore.store import KeyStore
from hsmd.lifecycle import Operation
from hsmd.ops.resolve import usable_key

log = logging.getLogger(__name__)

MAX_DESCRIPTION = 8192
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
OBJECT_ID_SIZE = 16


@dataclass(frozen=True)
class KeyPage:
    keys: list[Key]
    next_page_token: str


@dataclass(frozen=True)
class ReconcileReport:
    rolled_back: int
    orphans_destroyed: int
    unavailable: int


class KeyOps:
    def __init__(self, store: KeyStore, backend: CryptoBackend, clock: Clock) -> None:
        self._store = store
        self._backend = backend
        self._clock = clock

    def create_key(
        self, ctx: RequestContext, spec: KeySpec, usage: KeyUsage | None, description: str
    ) -> Key:
        """Creates a key with one version, generated in the tenant's token.

        Raises:
            InvalidArgument: the usage does not fit the spec, or the description is too long.
            Unimplemented: the backend cannot make keys of this spec.
        """
        usage = usage or keyspecs.default_usage(spec)
        keyspecs.check_usage(spec, usage)
        if spec not in self._backend.capabilities().key_specs:
            raise Unimplemented(f"this backend cannot make {spec} keys (see GetCapabilities)")
        if len(description) > MAX_DESCRIPTION:
            raise InvalidArgument(f"description is longer than {MAX_DESCRIPTION} characters")
        now = self._clock.now()
        key = Key(
            tenant=ctx.tenant,
            key_id=str(uuid.uuid4()),
            description=description,
            spec=spec,
            usage=usage,
            origin=KeyOrigin.GENERATED,
            state=KeyState.CREATING,
            created_at=now,
            primary_version=1,
        )
        version = KeyVersion(ctx.tenant, key.key_id, 1, secrets.token_bytes(OBJECT_ID_SIZE), now)
        self._store.add_key(key, version)
        try:
            self._backend.generate_key(ctx.tenant, version.object_id, spec, usage)
        except Exception:
            self._roll_back(key, [version])
            raise
        self._store.set_key_state(ctx.tenant, key.key_id, KeyState.ENABLED)
        log.info("created key %s (%s, %s)", key.key_id, spec, usage)
        return self._store.get_key(ctx.tenant, key.key_id)

    def capabilities(self) -> Capabilities:
        return self._backend.capabilities()

    def describe_key(self, ctx: RequestContext, key_id: str) -> Key:
        return usable_key(self._store, ctx, key_id, Operation.DESCRIBE)

    def list_keys(self, ctx: RequestContext, page_size: int, page_token: str) -> KeyPage:
        """One page of the caller's keys, oldest first.

        Raises:
            InvalidArgument: page_size is out of range or page_token is not one we issued.
        """
        if not 0 <= page_size <= MAX_PAGE_SIZE:
            raise InvalidArgument(f"page_size must be between 0 and {MAX_PAGE_SIZE}")
        keys, cursor = self._store.list_keys(
            ctx.tenant, _decode_page_token(page_token), page_size or DEFAULT_PAGE_SIZE
        )
        return KeyPage(keys, _encode_page_token(cursor) if cursor is not None else "")

    def reconcile(self, tenant: str) -> ReconcileReport:
        """Repairs what a crash left: unfinished creations, orphan objects, lost objects.

        CREATING keys were never acknowledged, so they are rolled back (object and row).
        Objects whose CKA_ID no version names are destroyed. An ENABLED key whose object is
        missing or unreadable becomes UNAVAILABLE, loudly, and ENABLED again once it is back
        (for example after the token directory is restored).
        """
        creating = self._store.keys_in_state(tenant, KeyState.CREATING)
        for key in creating:
            self._roll_back(key, self._store.versions(tenant, key.key_id))
        present = self._backend.object_ids(tenant)
        orphans = present - self._store.object_ids(tenant)
        for object_id in orphans:
            log.warning("destroying orphan object %s in tenant %s", object_id.hex(), tenant)
            self._backend.destroy(tenant, object_id)
        for key in self._store.keys_in_state(tenant, KeyState.ENABLED):
            if not self._objects_present(key, present):
                log.error("key %s of tenant %s has lost its token object", key.key_id, tenant)
                self._store.set_key_state(tenant, key.key_id, KeyState.UNAVAILABLE)
        for key in self._store.keys_in_state(tenant, KeyState.UNAVAILABLE):
            if self._objects_present(key, present):
                log.warning("key %s of tenant %s has its token object back", key.key_id, tenant)
                self._store.set_key_state(tenant, key.key_id, KeyState.ENABLED)
        unavailable = len(self._store.keys_in_state(tenant, KeyState.UNAVAILABLE))
        return ReconcileReport(len(creating), len(orphans), unavailable)

    def _objects_present(self, key: Key, present: set[bytes]) -> bool:
        versions = self._store.versions(key.tenant, key.key_id)
        return all(version.object_id in present for version in versions)

    def _roll_back(self, key: Key, versions: list[KeyVersion]) -> None:
        for version in versions:
            self._backend.destroy(key.tenant, version.object_id)
        self._store.remove_key(key.tenant, key.key_id)
        log.warning("rolled back the unfinished creation of key %s", key.key_id)


def _encode_page_token(cursor: int) -> str:
    return base64.urlsafe_b64encode(str(cursor).encode()).decode()


def _decode_page_token(token: str) -> int:
    if not token:
        return 0
    try:
        return int(base64.urlsafe_b64decode(token.encode()).decode())
    except (ValueError, binascii.Error):
        raise InvalidArgument("page_token is not a token from a previous ListKeys") from None
