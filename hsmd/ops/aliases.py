"""Aliases: `alias/<name>` per tenant, pointing at a key; every key_id field accepts one.

Creating or repointing an alias needs the right to manage the key it will point at (and, for
UpdateAlias, the key it pointed at), as in AWS KMS. A tenant's alias names are its own: two
tenants may both have `alias/payments`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hsmd.domain import Alias, Clock, RequestContext
from hsmd.errors import InvalidArgument
from hsmd.keystore.store import KeyStore
from hsmd.lifecycle import Operation
from hsmd.names import ALIAS_PREFIX, local_key_name, parse_alias_name, parse_key_id
from hsmd.ops import paging
from hsmd.ops.resolve import resolve_key_id, usable_key
from hsmd.quotas import QuotaLimits, default_limits


@dataclass(frozen=True)
class AliasPage:
    aliases: list[Alias]
    next_page_token: str


class AliasOps:
    def __init__(
        self,
        store: KeyStore,
        clock: Clock,
        limits: Callable[[str], QuotaLimits] = default_limits,
    ) -> None:
        self._store = store
        self._clock = clock
        self._limits = limits

    def create(self, ctx: RequestContext, name: str, target_key_id: str) -> Alias:
        """Raises AlreadyExists if the tenant has the alias; NotFound if it has no such key;
        ResourceExhausted if it has as many aliases as its quota allows (checked in the
        store's transaction)."""
        parse_alias_name(name)
        key = usable_key(
            self._store, ctx, _key_id_only(ctx.tenant, target_key_id), Operation.CREATE_ALIAS
        )
        now = self._clock.now()
        alias = Alias(ctx.tenant, name, key.key_id, now, now)
        self._store.add_alias(alias, self._limits(ctx.tenant).max_aliases)
        return alias

    def update(self, ctx: RequestContext, name: str, target_key_id: str) -> Alias:
        """Repoints the alias at a key of the same spec and usage."""
        current = self._store.get_alias(ctx.tenant, parse_alias_name(name))
        old = usable_key(self._store, ctx, current.key_id, Operation.UPDATE_ALIAS)
        new = usable_key(
            self._store, ctx, _key_id_only(ctx.tenant, target_key_id), Operation.UPDATE_ALIAS
        )
        if (old.spec, old.usage) != (new.spec, new.usage):
            raise InvalidArgument(
                f"an alias can only move to a key of the same spec and usage ({old.spec},"
                f" {old.usage}), not {new.spec}, {new.usage}"
            )
        return self._store.update_alias(ctx.tenant, name, new.key_id, self._clock.now())

    def delete(self, ctx: RequestContext, name: str) -> None:
        alias = self._store.get_alias(ctx.tenant, parse_alias_name(name))
        usable_key(self._store, ctx, alias.key_id, Operation.DELETE_ALIAS)
        self._store.delete_alias(ctx.tenant, name)

    def list(self, ctx: RequestContext, key_id: str, page_size: int, page_token: str) -> AliasPage:
        target = resolve_key_id(self._store, ctx.tenant, key_id) if key_id else None
        aliases, cursor = self._store.list_aliases(
            ctx.tenant, target, paging.decode_token(page_token), paging.page_size(page_size)
        )
        return AliasPage(aliases, paging.encode_token(cursor))


def _key_id_only(tenant: str, key_id: str) -> str:
    """Aliases point at keys (by id, resource name or ARN), never at other aliases."""
    key_id = local_key_name(tenant, key_id)
    if key_id.startswith(ALIAS_PREFIX):
        raise InvalidArgument("target_key_id must be a key id, not an alias")
    return parse_key_id(key_id)
