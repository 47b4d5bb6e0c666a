"""Tenant quotas as operators set them: the config file's defaults, each tenant's overrides
(SetTenantQuota, kept in the store), and each tenant's usage against them (ListTenants).

The guard counts calls against the rates (hsmd.quotas.TenantMeters, owned here so usage can
read it); the operations that create resources check the resource limits in the store
transaction that creates them (KeyStore.add_key, add_alias, add_import_parameters).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from hsmd.errors import NotFound
from hsmd.keystore.store import KeyStore
from hsmd.names import validate_tenant_name
from hsmd.quotas import QuotaLimits, ResourceCounts, TenantMeters, check_overrides


@dataclass(frozen=True)
class TenantQuota:
    tenant: str
    overrides: Mapping[str, float]  # the fields set for the tenant
    effective: QuotaLimits  # the defaults with the overrides in place


@dataclass(frozen=True)
class TenantUsage:
    counts: ResourceCounts
    audit_bytes: int  # in the current audit period


class QuotaOps:
    def __init__(
        self,
        store: KeyStore,
        defaults: QuotaLimits,
        monotonic: Callable[[], float],
        audit_period_seconds: float,
    ) -> None:
        self._store = store
        self._defaults = defaults
        self._lock = threading.Lock()
        self._cache: dict[str, QuotaLimits] = {}
        self._generation = 0  # a read that raced with a change is not cached
        self.meters = TenantMeters(self.limits, monotonic, audit_period_seconds)

    def limits(self, tenant: str) -> QuotaLimits:
        """The tenant's limits now; read from the store once, then from memory until set."""
        with self._lock:
            cached = self._cache.get(tenant)
            generation = self._generation
        if cached is not None:
            return cached
        limits = self._defaults.overlaid(self._store.get_tenant_quota(tenant))
        with self._lock:
            if self._generation == generation:
                self._cache[tenant] = limits
        return limits

    def forget(self, tenant: str) -> None:
        """Reads the tenant's overrides anew and restarts its meters: called when a tenant is
        made or destroyed, so a new tenant of an old name inherits nothing."""
        self._changed(tenant)
        self.meters.forget(tenant)

    def _changed(self, tenant: str) -> None:
        with self._lock:
            self._generation += 1
            self._cache.pop(tenant, None)

    def get(self, tenant: str) -> TenantQuota:
        """Raises NotFound if there is no such tenant."""
        self._require_tenant(tenant)
        overrides = self._store.get_tenant_quota(tenant)
        return TenantQuota(tenant, overrides, self._defaults.overlaid(overrides))

    def set(self, tenant: str, overrides: Mapping[str, float]) -> TenantQuota:
        """Replaces the tenant's overrides (an empty mapping restores the defaults); applies
        at once to the tenant's next call.

        Raises:
            InvalidArgument: a field is unknown or out of range.
            NotFound: there is no such tenant.
        """
        self._require_tenant(tenant)
        checked = check_overrides(overrides)
        self._store.set_tenant_quota(tenant, checked)
        self._changed(tenant)
        return self.get(tenant)

    def usage(self, tenant: str) -> TenantUsage:
        return TenantUsage(self._store.resource_counts(tenant), self.meters.audit_bytes(tenant))

    def _require_tenant(self, tenant: str) -> None:
        validate_tenant_name(tenant)
        if self._store.get_tenant(tenant) is None:
            raise NotFound(f"tenant {tenant!r} not found")
