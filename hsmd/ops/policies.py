"""GetKeyPolicy and PutKeyPolicy; the rules themselves are in hsmd.policy."""

from __future__ import annotations

from hsmd import policy
from hsmd.domain import KeyPolicy, RequestContext
from hsmd.keystore.store import KeyStore
from hsmd.lifecycle import Operation
from hsmd.ops.resolve import usable_key


class PolicyOps:
    def __init__(self, store: KeyStore) -> None:
        self._store = store

    def get(self, ctx: RequestContext, key_id: str) -> KeyPolicy:
        return usable_key(self._store, ctx, key_id, Operation.GET_KEY_POLICY).policy

    def put(self, ctx: RequestContext, key_id: str, new_policy: KeyPolicy) -> KeyPolicy:
        """Raises FailedPrecondition for a policy without administrators or one that locks the
        caller out; the old policy stays."""
        key = usable_key(self._store, ctx, key_id, Operation.PUT_KEY_POLICY)
        policy.validate(new_policy, ctx.principal)
        return self._store.update_key(key.tenant, key.key_id, policy=new_policy).policy
