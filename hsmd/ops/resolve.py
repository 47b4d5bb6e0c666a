"""Finding a caller's key (by id or alias) and checking that its policy, spec, usage and state
allow an operation, in that order: another tenant's key is NOT_FOUND before anything else, a
principal without the right learns nothing about the key's state."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

from hsmd import policy
from hsmd.domain import Key, RequestContext
from hsmd.keystore.store import KeyStore
from hsmd.lifecycle import Operation, check_allowed
from hsmd.names import ALIAS_PREFIX, local_key_name, parse_alias_name, parse_key_id


def resolve_key_id(store: KeyStore, tenant: str, key_id: str) -> str:
    """The key id an id, `alias/<name>`, or either as a resource name or ARN of the tenant
    (names.local_key_name) names in the tenant.

    Raises:
        InvalidArgument: empty or malformed.
        NotFound: no such key or alias in the tenant (or a name of another tenant).
    """
    key_id = local_key_name(tenant, key_id)
    if key_id.startswith(ALIAS_PREFIX):
        return store.get_alias(tenant, parse_alias_name(key_id)).key_id
    return parse_key_id(key_id)


def usable_key(store: KeyStore, ctx: RequestContext, key_id: str, operation: Operation) -> Key:
    """The caller's key, if its policy, spec, usage and state allow the operation.

    Raises:
        NotFound: no such key or alias in the caller's tenant (another tenant's included).
        PermissionDenied: the key's policy does not give the caller the operation's role.
        FailedPrecondition: the key's spec, usage or state does not allow the operation.
    """
    key = store.get_key(ctx.tenant, resolve_key_id(store, ctx.tenant, key_id))
    policy.check_permitted(key.policy, ctx.principal, operation)
    check_allowed(key, operation)
    return key


# What a multi-region key's changes hold (hsmd.ops.regions.ReplicationOps.exclusive).
KeyLock = Callable[[Key], AbstractContextManager[object]]


@contextmanager
def as_now(store: KeyStore, lock: KeyLock, key: Key, operation: Operation) -> Iterator[Key]:
    """A multi-region key as it is now, under its lock, if it still allows the operation (its
    primary role or replicas may have changed since it was read, hsmd.ops.regions); any
    other key as it was read.

    Raises:
        FailedPrecondition: the key as it is now does not allow the operation.
    """
    if key.multi_region is None:
        yield key
        return
    with lock(key):
        current = store.get_key(key.tenant, key.key_id)
        check_allowed(current, operation)
        yield current
