"""Tenants: creation with its own token, administration (disable, enable, delete after a
waiting period), who may call (admission), and attaching every token at start-up.

Creating a tenant spans a database row and a token, so it is a recoverable protocol: record the
tenant as CREATING, make sure the token exists (idempotent), then mark it ACTIVE. A crash at any
step leaves a CREATING row that the next start finishes. Destroying one runs the other way:
claim the row (PENDING_DELETION -> DELETING, only once its date has come), destroy the token,
then remove every row; a crash leaves a DELETING row that the next maintenance pass finishes.

In single-tenant mode (a dedicated instance) the one configured tenant is created at start if
it is missing, CreateTenant is refused, and every other tenant's principal is refused at
admission before anything is looked up, so the refusal says nothing of whether that tenant
exists anywhere.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime

from hsmd import limits, policy
from hsmd.backend.api import CryptoBackend
from hsmd.domain import ClientRequest, Clock, TenancyMode, Tenant, TenantState
from hsmd.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    StartupRefused,
)
from hsmd.keystore.store import KeyStore
from hsmd.names import token_label, validate_tenant_name
from hsmd.ops.states import deletion_date

log = logging.getLogger(__name__)

# Who administers every new key of a tenant unless its creation says otherwise.
DEFAULT_ADMIN_PRINCIPALS = ("admin",)
# Leaves room in a default key policy (policy.MAX_PATTERNS) for the creator.
MAX_ADMIN_PRINCIPALS = limits.MAX_ADMIN_PRINCIPALS

# What a principal of any other tenant hears from a dedicated instance: the same words whether
# or not that tenant exists (in this database or anywhere).
ONE_TENANT_ONLY = "this instance serves one tenant only"

_CHANGEABLE = (TenantState.ACTIVE, TenantState.DISABLED)


class TenantOps:
    def __init__(
        self,
        store: KeyStore,
        backend: CryptoBackend,
        clock: Clock,
        dedicated_tenant: str | None = None,
        forget: Callable[[str], None] = lambda name: None,
    ) -> None:
        """dedicated_tenant: the one tenant of a single-tenant instance; None when shared.
        forget(name): told when a tenant is made or destroyed, so state kept elsewhere about
        that name (quota meters) starts afresh."""
        self._forget = forget
        self._store = store
        self._backend = backend
        self._clock = clock
        self._dedicated = dedicated_tenant
        # admit() runs on every call: tenants are cached, and the cache is emptied by every
        # change made here, and by a change another process made (KeyStore.refresh: a worker
        # process's store, hsmd/workers.py). A read that raced with a change is not cached
        # (_generation).
        self._tenants: dict[str, Tenant] = {}
        self._generation = 0
        self._store_generation = 0
        self._tenants_lock = threading.Lock()

    @property
    def mode(self) -> TenancyMode:
        return TenancyMode.SHARED if self._dedicated is None else TenancyMode.DEDICATED

    def admit(self, name: str) -> None:
        """Lets a principal of tenant `name` call, or says why not.

        Raises:
            PermissionDenied: a dedicated instance and another tenant (checked first, so
                nothing is looked up), or a tenant this daemon does not serve.
            FailedPrecondition: the tenant is DISABLED or PENDING_DELETION: it exists and an
                operator has stopped it, which the caller can have undone (not a wrong
                certificate, so not PERMISSION_DENIED; not transient, so not UNAVAILABLE).
        """
        if self._dedicated is not None and name != self._dedicated:
            raise PermissionDenied(ONE_TENANT_ONLY)
        tenant = self.served(name)
        state = tenant.state if tenant else None
        if state is TenantState.DISABLED:
            raise FailedPrecondition(f"tenant {name!r} is disabled by an operator")
        if state is TenantState.PENDING_DELETION:
            raise FailedPrecondition(f"tenant {name!r} is disabled: it is scheduled for deletion")
        if state is not TenantState.ACTIVE:
            raise PermissionDenied(f"tenant {name!r} is not served by this daemon")

    def _refresh(self) -> None:
        """Forgets the tenants cached if another process changed the store since (a worker
        process's store: KeyStore.refresh)."""
        generation = self._store.refresh()
        if generation == self._store_generation:
            return
        with self._tenants_lock:  # every thread that saw the change clears: none misses it
            self._store_generation = max(self._store_generation, generation)
            self._generation += 1
            self._tenants.clear()

    def served(self, name: str) -> Tenant | None:
        """The tenant as the store says (cached until it changes), or None if there is no
        such tenant."""
        self._refresh()
        with self._tenants_lock:
            cached = self._tenants.get(name)
            generation = self._generation
        if cached is not None:
            return cached
        tenant = self._store.get_tenant(name)
        if tenant is None:  # not cached: a certificate may name any tenant
            return None
        with self._tenants_lock:
            if self._generation == generation:
                self._tenants[name] = tenant
        return tenant

    def _changed(self) -> None:
        """After any change to a tenant: admit() reads the store again."""
        with self._tenants_lock:
            self._generation += 1
            self._tenants.clear()

    def create_tenant(
        self,
        name: str,
        admin_principals: Sequence[str] = (),
        request: ClientRequest | None = None,
    ) -> Tenant:
        """Creates the tenant and its token, and serves it at once. A retry with the client
        token of the call that made it returns it.

        Raises:
            FailedPrecondition: a single-tenant instance (its tenant is made at start).
            InvalidArgument: the name is not a valid tenant name, or the client token was
                used for a different request.
            AlreadyExists: a tenant of that name exists (made by another request).
        """
        if self._dedicated is not None:
            raise FailedPrecondition(
                f"{ONE_TENANT_ONLY} ({self._dedicated!r}, tenancy mode single);"
                " CreateTenant is refused"
            )
        validate_tenant_name(name)
        first = self._store.tenant_for_request(request.token) if request else None
        if first is not None and (first[0] != name or first[1] != request):
            raise InvalidArgument("client_token was used for a different request")
        existing = self._store.get_tenant(name)
        if existing is not None and existing.state is not TenantState.CREATING:
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
        self._changed()
        self._forget(name)
        self._backend.attach_token(name, serial)
        tenant = self._store.get_tenant(name)
        if tenant is None:
            raise NotFound(f"tenant {name!r} vanished while it was being created")
        log.info("tenant %s is served from token %r", name, tenant.token_label)
        return tenant

    def list_tenants(self) -> list[Tenant]:
        """Every tenant but those still being created."""
        return [t for t in self._store.list_tenants() if t.state is not TenantState.CREATING]

    def exists(self, name: str) -> bool:
        tenant = self._store.get_tenant(name)
        return tenant is not None and tenant.state is not TenantState.CREATING

    def disable(self, name: str) -> Tenant:
        """Its principals are refused until enable(); keys, aliases and token untouched.

        Raises:
            NotFound: no such tenant.
            FailedPrecondition: it is pending deletion (or being created or destroyed).
        """
        return self._move(name, _CHANGEABLE, TenantState.DISABLED)

    def enable(self, name: str) -> Tenant:
        """Raises as disable()."""
        return self._move(name, _CHANGEABLE, TenantState.ACTIVE)

    def schedule_deletion(self, name: str, window_days: int) -> Tenant:
        """Refused like a disabled tenant at once; destroyed by destroy_due() after the window.

        Raises:
            InvalidArgument: the window is not 7-30 days (0 means 30).
            NotFound, FailedPrecondition: as disable(); already pending deletion is refused.
        """
        deletion_at = deletion_date(self._clock, window_days)
        return self._move(name, _CHANGEABLE, TenantState.PENDING_DELETION, deletion_at)

    def cancel_deletion(self, name: str) -> Tenant:
        """Back to DISABLED, as a key's cancelled deletion: the operator enables it when ready.

        Raises:
            NotFound: no such tenant.
            FailedPrecondition: it is not pending deletion (DELETING is too late).
        """
        return self._move(name, (TenantState.PENDING_DELETION,), TenantState.DISABLED)

    def _move(
        self,
        name: str,
        allowed: tuple[TenantState, ...],
        state: TenantState,
        deletion_at: datetime | None = None,
    ) -> Tenant:
        validate_tenant_name(name)
        tenant, moved = self._store.move_tenant(name, allowed, state, deletion_at)
        self._changed()
        if tenant is None or tenant.state is TenantState.CREATING:
            raise NotFound(f"tenant {name!r} not found")
        if not moved:
            raise FailedPrecondition(
                f"tenant {name!r} is {tenant.state}; this needs"
                f" {' or '.join(str(s) for s in allowed)}"
            )
        log.warning("tenant %s is now %s", name, state)
        return tenant

    def destroy_due(self) -> Iterator[Tenant]:
        """Destroys every tenant whose deletion date has come (and finishes any destruction a
        crash interrupted): its token with every key in it, then all its rows. Yields each
        tenant once it is gone, so the caller audits each even if a later one fails; a token
        that cannot be destroyed now is logged and retried at the next pass."""
        now = self._clock.now()
        for tenant in self._store.tenants_due(now):
            claimed = tenant.state is TenantState.DELETING or self._store.claim_tenant_deletion(
                tenant.name, now
            )
            if not claimed:  # cancelled (or rescheduled) meanwhile
                continue
            self._changed()
            try:
                self._backend.remove_token(tenant.name, tenant.token_serial)
            except Exception:
                log.exception(
                    "tenant %s is being destroyed but its token %r is not yet; retrying at the"
                    " next maintenance pass",
                    tenant.name,
                    tenant.token_label,
                )
                continue
            self._store.remove_tenant(tenant.name)
            self._changed()
            self._forget(tenant.name)
            log.warning(
                "destroyed tenant %s: its token %r (every key in it) and its metadata",
                tenant.name,
                tenant.token_label,
            )
            yield tenant

    def start(self) -> list[Tenant]:
        """Finishes interrupted tenant creations and attaches every tenant's token; creates
        the tenant of a single-tenant instance if it has none.

        A tenant whose token cannot be reached or read is logged and left out, whatever the
        failure, so one bad token does not take the others down; its callers get UNAVAILABLE
        until it is restored. A tenant being destroyed is not attached (maintenance finishes
        it).

        Raises:
            StartupRefused: a single-tenant instance whose database holds other tenants.
        """
        if self._dedicated is not None:
            self._check_dedicated()
        served = []
        for tenant in self._store.list_tenants():
            try:
                if tenant.state is TenantState.CREATING:
                    log.warning("finishing the interrupted creation of tenant %s", tenant.name)
                    served.append(self._finish(tenant.name))
                elif tenant.state is not TenantState.DELETING:
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

    def _check_dedicated(self) -> None:
        """A dedicated instance holds its tenant alone; made here (CREATING) if missing, so
        that start() finishes it like any interrupted creation."""
        name = validate_tenant_name(self._dedicated or "")
        others = [t.name for t in self._store.list_tenants() if t.name != name]
        if others:
            raise StartupRefused(
                f"tenancy mode single serves tenant {name!r} alone, but this database also"
                f" holds {', '.join(others)}: move or delete them (in mode multi) first"
            )
        if self._store.get_tenant(name) is None:
            log.warning("single-tenant mode: creating tenant %s", name)
            self._store.add_tenant(
                name, token_label(name), self._clock.now(), DEFAULT_ADMIN_PRINCIPALS
            )
