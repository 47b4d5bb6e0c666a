"""Finding a caller's key and checking that its state and usage allow an operation."""

from __future__ import annotations

from hsmd.domain import Key, RequestContext
from hsmd.keystore.store import KeyStore
from hsmd.lifecycle import Operation, check_allowed
from hsmd.names import parse_key_id


def usable_key(store: KeyStore, ctx: RequestContext, key_id: str, operation: Operation) -> Key:
    """The caller's key, if its state and usage allow the operation.

    Raises:
        NotFound: no such key in the caller's tenant (another tenant's key included).
        FailedPrecondition: the key's state or usage does not allow the operation.
    """
    key = store.get_key(ctx.tenant, parse_key_id(key_id))
    check_allowed(key, operation)
    return key
