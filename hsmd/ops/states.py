"""Enable, disable, schedule and cancel deletion, and destroy keys whose window has passed.

Destruction spans the metadata and the token: the row is marked DESTROYED first, in a
transaction that succeeds only if the key is still PENDING_DELETION, then the objects go. A
crash between the two leaves objects of DESTROYED versions, which the next start destroys
(hsmd.repair).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import nullcontext
from datetime import datetime, timedelta

from hsmd.backend.api import CryptoBackend
from hsmd.domain import Clock, Key, KeyOrigin, KeyState, RequestContext, VersionState
from hsmd.errors import FailedPrecondition, InvalidArgument
from hsmd.keystore.store import KeyStore
from hsmd.lifecycle import TRANSITIONS, Operation
from hsmd.ops.resolve import KeyLock, as_now, usable_key

log = logging.getLogger(__name__)

MIN_WINDOW_DAYS = 7
MAX_WINDOW_DAYS = 30
DEFAULT_WINDOW_DAYS = 30


def deletion_date(clock: Clock, window_days: int) -> datetime:
    """When a deletion scheduled now with this waiting period is carried out: keys and tenants
    share the rule. The clock is the guarded one, so the window is never shorter than asked.

    Raises:
        InvalidArgument: the window is not 7-30 days (0 means 30).
    """
    window_days = window_days or DEFAULT_WINDOW_DAYS
    if not MIN_WINDOW_DAYS <= window_days <= MAX_WINDOW_DAYS:
        raise InvalidArgument(
            f"pending_window_in_days must be {MIN_WINDOW_DAYS} to {MAX_WINDOW_DAYS}"
        )
    return clock.now() + timedelta(days=window_days)


class StateOps:
    def __init__(
        self,
        store: KeyStore,
        backend: CryptoBackend,
        clock: Clock,
        exclusive: KeyLock = nullcontext,
    ) -> None:
        """exclusive: held while a multi-region key's state changes (hsmd.ops.regions: a
        primary gets no replica while its deletion is being scheduled)."""
        self._store = store
        self._backend = backend
        self._clock = clock
        self._exclusive = exclusive

    def enable(self, ctx: RequestContext, key_id: str) -> Key:
        """Raises FailedPrecondition (and marks the key UNAVAILABLE) if its objects are gone."""
        key = usable_key(self._store, ctx, key_id, Operation.ENABLE)
        if not self._objects_present(key):
            self._store.update_key(key.tenant, key.key_id, state=KeyState.UNAVAILABLE)
            raise FailedPrecondition(f"key {key.key_id} has lost its token object; restore it")
        return self._move(ctx, key_id, Operation.ENABLE)

    def disable(self, ctx: RequestContext, key_id: str) -> Key:
        return self._move(ctx, key_id, Operation.DISABLE)

    def cancel_deletion(self, ctx: RequestContext, key_id: str) -> Key:
        """Back to DISABLED, as in AWS KMS: the caller enables it when ready (UNAVAILABLE if
        its token objects are gone, as for a key scheduled while UNAVAILABLE)."""
        key = self._move(ctx, key_id, Operation.CANCEL_DELETION, deletion_at=None)
        if key.origin is KeyOrigin.EXTERNAL and not self._live_objects(key):
            return self._store.update_key(key.tenant, key.key_id, state=KeyState.PENDING_IMPORT)
        if not self._objects_present(key):
            key = self._store.update_key(key.tenant, key.key_id, state=KeyState.UNAVAILABLE)
        return key

    def _live_objects(self, key: Key) -> list[bytes]:
        return [
            version.object_id
            for version in self._store.versions(key.tenant, key.key_id)
            if version.state is VersionState.ENABLED
        ]

    def _objects_present(self, key: Key) -> bool:
        live = self._live_objects(key)
        return bool(live) and self._backend.has_objects(key.tenant, live)

    def schedule_deletion(self, ctx: RequestContext, key_id: str, window_days: int) -> Key:
        """Raises InvalidArgument unless the window is 7-30 days (0 means 30)."""
        deletion_at = deletion_date(self._clock, window_days)
        return self._move(ctx, key_id, Operation.SCHEDULE_DELETION, deletion_at=deletion_at)

    def _move(self, ctx: RequestContext, key_id: str, operation: Operation, **also: object) -> Key:
        key = usable_key(self._store, ctx, key_id, operation)
        with as_now(self._store, self._exclusive, key, operation) as key:
            moved = self._store.update_key(
                key.tenant, key.key_id, state=TRANSITIONS[operation], **also
            )
        log.info("key %s: %s -> %s", key.key_id, key.state, moved.state)
        return moved

    def destroy_due(self) -> Iterator[Key]:
        """Destroys every key whose deletion date has come, yielding each as it is destroyed
        (so the caller audits each one even if a later one fails)."""
        due = self._store.keys_due("deletion_at", KeyState.PENDING_DELETION, self._clock.now())
        for key in due:
            # Claim the key first: a CancelKeyDeletion that wins the race keeps it whole. After
            # the claim the key is destroyed whatever happens to its objects: objects that
            # cannot be destroyed now (a crash, a token not attached) belong to DESTROYED
            # versions, which start-up repair destroys (hsmd.repair).
            if not self._store.mark_destroyed(key.tenant, key.key_id):
                continue
            try:
                for version in self._store.versions(key.tenant, key.key_id):
                    self._backend.destroy(key.tenant, version.object_id)
            except Exception:
                log.exception(
                    "key %s of tenant %s is destroyed, but its token objects are not yet:"
                    " start-up repair destroys them once the token is back",
                    key.key_id,
                    key.tenant,
                )
            log.warning("destroyed key %s of tenant %s", key.key_id, key.tenant)
            yield key
