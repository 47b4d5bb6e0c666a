"""Tenants: creation with its own token, listing, and attaching every token at start-up.

Creating a tenant spans a database row and a token, so it is a recoverable protocol: record the
tenant as CREATING, make sure the token exists (idempotent), then mark it ACTIVE. A crash at any
step leaves a CREATING row that the next start finishes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from hsmd import limits, policy
from hsmd.backend.api import CryptoBackend
from hsmd.domain import ClientRequest, Clock, Tenant, TenantState
from hsmd.errors import AlreadyExists, InvalidArgument, NotFound
from hsmd.keystore.store import KeyStore
from hsmd.names import token_label, validate_tenant_name

log = logging.getLogger(__name__)

# Who administers every new key of a tenant unless its creation says otherwise.
DEFAULT_ADMIN_PRINCIPALS = ("admin",)
# Leaves room in a default key policy (policy.MAX_PATTERNS) for the creator.
MAX_ADMIN_PRINCIPALS = limits.MAX_ADMIN_PRINCIPALS


class TenantOps:
    def __init__(self, store: KeyStore, backend: CryptoBackend, clock: Clock) -> None:
        self._store = store
        self._backend = backend
        self._clock = clock

    def create_tenant(
        self,
        name: str,
        admin_principals: Sequence[str] = (),
        request: ClientRequest | None = None,
    ) -> Tenant:
        """Creates the tenant and its token, and serves it at once. A retry with the client
        token of the call that made it returns it.

        Raises:
            InvalidArgument: the name is not a valid tenant name, or the client token was
                used for a different request.
            AlreadyExists: a tenant of that name exists (made by another request).
        """
        validate_tenant_name(name)
        first = self._store.tenant_for_request(request.token) if request else None
        if first is not None and (first[0] != name or first[1] != request):
            raise InvalidArgument("client_token was used for a different request")
        existing = self._store.get_tenant(name)
        if existing is not None and existing.state is TenantState.ACTIVE:
            if first is not None:
                return existing
            raise AlreadyExists(f"tenant {name!r} exists already")
        if existing is None:
            administrators = tuple(admin_principals) or DEFAULT_ADMIN_PRINCIPALS
            if len(administrators) > MAX_ADMIN_PRINCIPALS:
                raise InvalidArgument(
                    f"a tenant has at most {MAX_ADMIN_PRINCIPALS} admin principal patterns"
                )
            for pattern in administrators:
                if not policy.is_valid_pattern(pattern):
                    raise InvalidArgument(f"admin principal pattern {pattern!r} is malformed")
            self._store.add_tenant(
                name, token_label(name), self._clock.now(), administrators, request
            )
        return self._finish(name)

    def _finish(self, name: str) -> Tenant:
        serial = self._backend.ensure_token(name)
        self._store.activate_tenant(name, serial)
        self._backend.attach_token(name, serial)
        tenant = self._store.get_tenant(name)
        if tenant is None:
            raise NotFound(f"tenant {name!r} vanished while it was being created")
        log.info("tenant %s is served from token %r", name, tenant.token_label)
        return tenant

    def list_tenants(self) -> list[Tenant]:
        return [t for t in self._store.list_tenants() if t.state is TenantState.ACTIVE]

    def is_served(self, name: str) -> bool:
        tenant = self._store.get_tenant(name)
        return tenant is not None and tenant.state is TenantState.ACTIVE

    def start(self) -> list[Tenant]:
        """Finishes interrupted tenant creations and attaches every tenant's token.

        A tenant whose token cannot be reached or read is logged and left out, whatever the
        failure, so one bad token does not take the others down; its callers get UNAVAILABLE
        until it is restored.
        """
        served = []
        for tenant in self._store.list_tenants():
            try:
                if tenant.state is TenantState.CREATING:
                    log.warning("finishing the interrupted creation of tenant %s", tenant.name)
                    served.append(self._finish(tenant.name))
                else:
                    self._backend.attach_token(tenant.name, tenant.token_serial)
                    served.append(tenant)
            except Exception as exc:
                log.error(
                    "tenant %s is not served: its token %r (serial %s) cannot be used: %s",
                    tenant.name,
                    tenant.token_label,
                    tenant.token_serial or "not yet known",
                    exc,
                )
        return served
