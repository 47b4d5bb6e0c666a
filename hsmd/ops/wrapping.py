"""WrapKey and UnwrapKey: moving exportable keys between tenants' tokens and instances.

Only a key created exportable can be wrapped, only by a WRAP_UNWRAP key of the same tenant,
and only wrapped: its plaintext never leaves the token (C_WrapKey). UnwrapKey makes a new key
(origin UNWRAPPED) inside the token with the ordinary template: sensitive, and non-extractable
unless the caller asks for an exportable copy. Asymmetric keys are not exportable (yet).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from hsmd import wrapped
from hsmd.backend.api import UnwrapTarget
from hsmd.domain import (
    ClientRequest,
    Key,
    KeyOrigin,
    KeyPolicy,
    KeyState,
    KeyVersion,
    RequestContext,
)
from hsmd.errors import FailedPrecondition
from hsmd.lifecycle import Operation
from hsmd.ops.keys import (
    KeyMaker,
    add_new_key,
    check_new_key_fields,
    new_object_id,
    replayed,
    rolled_back_unless_finished,
)
from hsmd.ops.resolve import usable_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Wrapped:
    blob: bytes
    key: Key
    key_version: int
    wrapping_key: Key


class WrappingOps(KeyMaker):
    def wrap(self, ctx: RequestContext, key_id: str, wrapping_key_id: str) -> Wrapped:
        """Raises FailedPrecondition for a key that was not created exportable."""
        key = usable_key(self._store, ctx, key_id, Operation.EXPORT)
        wrapping_key = usable_key(self._store, ctx, wrapping_key_id, Operation.WRAP)
        if not key.exportable:
            raise FailedPrecondition(f"key {key.key_id} is not exportable, so it cannot be wrapped")
        version = self._store.get_version(key.tenant, key.key_id, key.primary_version)
        wrapping_version = self._primary(wrapping_key)
        material = self._backend.wrap(key.tenant, wrapping_version.object_id, version.object_id)
        blob = wrapped.encode(key.spec, key.usage, material)
        log.info("wrapped key %s under %s", key.key_id, wrapping_key.key_id)
        return Wrapped(blob, key, version.version, wrapping_key)

    def unwrap(
        self,
        ctx: RequestContext,
        blob: bytes,
        wrapping_key_id: str,
        description: str,
        key_policy: KeyPolicy | None,
        tags: Mapping[str, str],
        exportable: bool,
        request: ClientRequest | None = None,
    ) -> Key:
        """A new key from a wrapped-key blob; nothing is created if it does not unwrap. With a
        client token used before, the key that call made (as for CreateKey).

        Raises:
            InvalidArgument: the blob is malformed, or the client token was used for another
                request.
            UnwrapFailed: it does not unwrap under this wrapping key into its key spec.
            Aborted: the call that first used the client token is still running.
        """
        earlier = replayed(self._store, ctx, request)
        if earlier is not None:
            return earlier
        parsed = wrapped.parse(blob)
        wrapping_key = usable_key(self._store, ctx, wrapping_key_id, Operation.UNWRAP)
        limits = self._limits(ctx.tenant)
        key_policy = check_new_key_fields(self._store, ctx, description, key_policy, tags, limits)
        now = self._clock.now()
        key = Key(
            tenant=ctx.tenant,
            key_id=str(uuid.uuid4()),
            description=description,
            spec=parsed.spec,
            usage=parsed.usage,
            origin=KeyOrigin.UNWRAPPED,
            state=KeyState.CREATING,
            created_at=now,
            primary_version=1,
            policy=key_policy,
            tags=tuple(sorted(tags.items())),
            exportable=exportable,
        )
        version = KeyVersion(ctx.tenant, key.key_id, 1, new_object_id(), now)
        earlier = add_new_key(self._store, ctx, key, version, request, limits)
        if earlier is not None:
            return earlier
        target = UnwrapTarget(version.object_id, parsed.spec, parsed.usage, exportable)
        with rolled_back_unless_finished(self._store, self._backend, key, version):
            fingerprint = self._backend.unwrap(
                ctx.tenant,
                self._primary(wrapping_key).object_id,
                parsed.material,
                parsed.padded,
                target,
            )
            unwrapped = self._store.update_key(
                ctx.tenant, key.key_id, state=KeyState.ENABLED, material_fingerprint=fingerprint
            )
        log.info("unwrapped key %s under %s", key.key_id, wrapping_key.key_id)
        return unwrapped

    def _primary(self, key: Key) -> KeyVersion:
        return self._store.get_version(key.tenant, key.key_id, key.primary_version)
