"""Key versions and rotation: on demand, automatic with a period, and catch-up after downtime.

A rotation adds a version and makes it primary; older versions keep decrypting, because every
blob names the version that made it. Only AES keys rotate (hsmd.lifecycle.ROTATION). A new
version follows the recoverable protocol of key creation: a CREATING version row, the token
object, then one transaction that enables the version and makes it primary.

Automatic rotation: the next date is set when rotation is enabled (enable time + period) and
moved on by each rotation (rotation time + period). A daemon that was down when a rotation came
due rotates once when it next checks, not once per missed period.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta

from hsmd.backend.api import CryptoBackend
from hsmd.domain import Clock, Key, KeyState, KeyVersion, RequestContext, RotationType
from hsmd.errors import InvalidArgument
from hsmd.keystore.store import KeyStore
from hsmd.lifecycle import Operation
from hsmd.ops import paging
from hsmd.ops.keys import new_version
from hsmd.ops.resolve import KeyLock, as_now, usable_key

log = logging.getLogger(__name__)

MIN_PERIOD_DAYS = 90
MAX_PERIOD_DAYS = 2560
DEFAULT_PERIOD_DAYS = 365


@dataclass(frozen=True)
class RotationStatus:
    key: Key
    last_on_demand: datetime | None


@dataclass(frozen=True)
class RotationPage:
    rotations: list[KeyVersion]
    next_page_token: str


class RotationOps:
    def __init__(
        self,
        store: KeyStore,
        backend: CryptoBackend,
        clock: Clock,
        rotated: Callable[[Key], None] | None = None,
        exclusive: KeyLock = nullcontext,
    ) -> None:
        """rotated: told of each key rotated, as it is now; exclusive: held while a
        multi-region key rotates (hsmd.ops.regions: its primary role cannot move meanwhile,
        and its replicas are sent the new version)."""
        self._store = store
        self._backend = backend
        self._clock = clock
        self._rotated = rotated
        self._exclusive = exclusive

    def enable(self, ctx: RequestContext, key_id: str, period_days: int) -> RotationStatus:
        """Raises InvalidArgument unless the period is 90-2,560 days (0 means 365)."""
        period_days = period_days or DEFAULT_PERIOD_DAYS
        if not MIN_PERIOD_DAYS <= period_days <= MAX_PERIOD_DAYS:
            raise InvalidArgument(
                f"rotation_period_in_days must be {MIN_PERIOD_DAYS} to {MAX_PERIOD_DAYS}"
            )
        key = usable_key(self._store, ctx, key_id, Operation.ENABLE_ROTATION)
        with as_now(self._store, self._exclusive, key, Operation.ENABLE_ROTATION) as key:
            key = self._store.update_key(
                key.tenant,
                key.key_id,
                rotation_period_days=period_days,
                next_rotation_at=self._clock.now() + timedelta(days=period_days),
            )
        return self._status(key)

    def disable(self, ctx: RequestContext, key_id: str) -> RotationStatus:
        key = usable_key(self._store, ctx, key_id, Operation.DISABLE_ROTATION)
        with as_now(self._store, self._exclusive, key, Operation.DISABLE_ROTATION) as key:
            key = self._store.update_key(
                key.tenant, key.key_id, rotation_period_days=None, next_rotation_at=None
            )
        return self._status(key)

    def status(self, ctx: RequestContext, key_id: str) -> RotationStatus:
        return self._status(usable_key(self._store, ctx, key_id, Operation.GET_ROTATION_STATUS))

    def rotate_on_demand(self, ctx: RequestContext, key_id: str) -> KeyVersion:
        key = usable_key(self._store, ctx, key_id, Operation.ROTATE)
        return self._rotate(key, RotationType.ON_DEMAND)

    def list_rotations(
        self, ctx: RequestContext, key_id: str, page_size: int, page_token: str
    ) -> RotationPage:
        """The versions rotations made (version 2 onwards), oldest first."""
        key = usable_key(self._store, ctx, key_id, Operation.LIST_ROTATIONS)
        after = max(paging.decode_token(page_token), 1)
        limit = paging.page_size(page_size)
        versions = self._store.versions(key.tenant, key.key_id, after, limit + 1)
        page = [v for v in versions[:limit] if v.rotation_type is not None]
        cursor = versions[limit - 1].version if len(versions) > limit else None
        return RotationPage(page, paging.encode_token(cursor))

    def rotate_due(self) -> Iterator[KeyVersion]:
        """Rotates every ENABLED key whose next rotation date has come (once each), yielding
        each new version as it is made."""
        due = self._store.keys_due("next_rotation_at", KeyState.ENABLED, self._clock.now())
        for key in due:
            try:
                version = self._rotate(key, RotationType.AUTOMATIC)
            except Exception:  # one key's token trouble must not hold up the others
                log.exception("automatic rotation of key %s failed; will retry", key.key_id)
                continue
            yield version

    def _rotate(self, key: Key, how: RotationType) -> KeyVersion:
        with as_now(self._store, self._exclusive, key, Operation.ROTATE) as key:
            return self._rotate_now(key, how)

    def _rotate_now(self, key: Key, how: RotationType) -> KeyVersion:
        now = self._clock.now()
        with new_version(self._store, self._backend, key, now, how) as version:
            self._backend.generate_key(
                key.tenant,
                version.object_id,
                key.spec,
                key.usage,
                replicable=key.multi_region is not None,
            )
        next_rotation = None  # on demand leaves the automatic schedule alone, as in AWS KMS
        if how is RotationType.AUTOMATIC and key.rotation_period_days is not None:
            next_rotation = now + timedelta(days=key.rotation_period_days)
        rotated = self._store.activate_version(version, next_rotation)
        log.info("rotated key %s to version %d (%s)", key.key_id, version.version, how)
        if self._rotated is not None:
            self._rotated(rotated)
        return version

    def _status(self, key: Key) -> RotationStatus:
        on_demand = [
            v.created_at
            for v in self._store.versions(key.tenant, key.key_id)
            if v.rotation_type is RotationType.ON_DEMAND
        ]
        return RotationStatus(key, on_demand[-1] if on_demand else None)
