"""Per-tenant quotas: request rates per operation class (token buckets), resource limits, and
an audit volume per period. Pure: no gRPC, no store; the time is passed in (monotonic seconds).

Operation classes follow AWS KMS's request quotas (symmetric cryptography, asymmetric
cryptography, key generation, management, plus audit queries). A call is classed by its RPC:
the guard knows the RPC but not the key's type before the operation has loaded the key, so
Sign and Verify are ASYMMETRIC and Encrypt and Decrypt are SYMMETRIC whatever key they name
(docs/operations.md#quotas).

A bucket holds one second's worth of its rate (at least one call): a tenant may burst to its
rate at once, and is refused, with the time until the next call fits, beyond it.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from hsmd.errors import InvalidArgument, ResourceExhausted


class OperationClass(StrEnum):
    SYMMETRIC = "symmetric"
    ASYMMETRIC = "asymmetric"
    KEY_GENERATION = "key_generation"
    MANAGEMENT = "management"
    AUDIT = "audit"


_CLASS_OF_RPC = {
    OperationClass.SYMMETRIC: (
        "Encrypt",
        "Decrypt",
        "ReEncrypt",
        "GenerateDataKey",
        "GenerateDataKeyWithoutPlaintext",
        "GenerateMac",
        "VerifyMac",
        "GenerateRandom",
        "WrapKey",
        "UnwrapKey",
    ),
    OperationClass.ASYMMETRIC: ("Sign", "Verify", "GetPublicKey"),
    OperationClass.KEY_GENERATION: (
        "CreateKey",
        "RotateKeyOnDemand",
        "GenerateDataKeyPair",
        "GenerateDataKeyPairWithoutPlaintext",
        "GetParametersForImport",
        "ImportKeyMaterial",
    ),
    OperationClass.AUDIT: ("ListAuditEvents",),
}
RPC_CLASSES: Mapping[str, OperationClass] = {
    rpc: operation_class for operation_class, rpcs in _CLASS_OF_RPC.items() for rpc in rpcs
}

# RPCs whose token work takes long (key pair generation, RSA-OAEP unwrapping of imported
# material): the scheduler gives them fewer slots than its capacity, so they cannot take every
# core from fast work (Sign and Decrypt under RSA keys are slow too, but the RPC does not say).
SLOW_RPCS = frozenset(_CLASS_OF_RPC[OperationClass.KEY_GENERATION])


def operation_class(rpc: str) -> OperationClass:
    """The class an RPC counts against; management for every RPC not named above."""
    return RPC_CLASSES.get(rpc, OperationClass.MANAGEMENT)


@dataclass(frozen=True)
class QuotaLimits:
    """What one tenant may use. Rates are requests per second; limits are counts."""

    symmetric_requests_per_second: float = 10_000.0
    asymmetric_requests_per_second: float = 1000.0
    key_generation_requests_per_second: float = 50.0
    management_requests_per_second: float = 1000.0
    audit_requests_per_second: float = 50.0
    max_keys: int = 10_000
    max_aliases: int = 10_000
    max_tags_per_key: int = 50
    max_pending_imports: int = 100
    # About 1,000 events a second on average: what one busy tenant writes, not what the daemon
    # can (100 MiB, the first default, stopped a tenant at its rate quota within a minute).
    audit_bytes_per_period: int = 2 * 1024**3

    def rate(self, operation_class: OperationClass) -> float:
        rate: float = getattr(self, f"{operation_class.value}_requests_per_second")
        return rate

    def overlaid(self, overrides: Mapping[str, float]) -> QuotaLimits:
        """These limits with a tenant's overrides in place of the defaults they name."""
        return dataclasses.replace(self, **overrides)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ResourceCounts:
    """What a tenant's resource limits count: keys not yet destroyed, aliases, and import
    parameters not yet used or expired."""

    keys: int
    aliases: int
    pending_imports: int


# The range each field may take, in the config file and in SetTenantQuota. A rate must be
# above zero (a tenant that may do nothing is disabled, not throttled); a count may be 0.
MAX_RATE = 1_000_000.0
FIELD_BOUNDS: Mapping[str, tuple[float, float]] = {
    field.name: (
        (0.001, MAX_RATE)
        if field.name.endswith("_per_second")
        else (0, 50)
        if field.name == "max_tags_per_key"
        else (0, 2**40)
        if field.name == "audit_bytes_per_period"
        else (0, 10_000_000)
    )
    for field in dataclasses.fields(QuotaLimits)
}


def check_overrides(overrides: Mapping[str, float]) -> dict[str, float]:
    """The overrides, checked field by field.

    Raises:
        InvalidArgument: a field is unknown or out of its range (the message names it).
    """
    checked: dict[str, float] = {}
    for name, value in overrides.items():
        if name not in FIELD_BOUNDS:
            raise InvalidArgument(f"{name} is not a tenant quota")
        low, high = FIELD_BOUNDS[name]
        if not low <= value <= high or (not name.endswith("_per_second") and value % 1):
            raise InvalidArgument(f"{name} must be between {low:g} and {high:g}")
        checked[name] = value if name.endswith("_per_second") else int(value)
    return checked


class TokenBucket:
    """Holds up to `burst` calls and refills at `rate` calls per second."""

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self._burst = max(1.0, rate)
        self._tokens = self._burst
        self._updated = now

    def take(self, now: float) -> float:
        """Takes one call's token: 0 if it did, else the seconds until one is there."""
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(self._burst, self._tokens + elapsed * self.rate)
        self._updated = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate

    def give_back(self) -> None:
        """Returns a token taken for a call that did not run after all."""
        self._tokens = min(self._burst, self._tokens + 1.0)

    def available(self, now: float) -> float:
        elapsed = max(0.0, now - self._updated)
        return min(self._burst, self._tokens + elapsed * self.rate)


# The most calls a worker process admits by itself between two admissions by the coordinator.
SPARE_LIMIT = 16


class Meters(Protocol):
    """What a request guard counts a tenant's calls against: this process's TenantMeters, or,
    in a worker process, the coordinator's through the relay (hsmd/relay.py)."""

    def admit(self, tenant: str, rpc: str) -> None: ...
    def admit_some(
        self, tenant: str, rpc: str, count: int
    ) -> tuple[int, ResourceExhausted | None]: ...
    def refund(self, tenant: str, rpc: str) -> None: ...
    def charge_audit(self, tenant: str, size: int) -> None: ...


class TenantMeters:
    """Every tenant's rate buckets and audit volume, safe to use from many threads.

    `limits_of(tenant)` gives the tenant's limits now (defaults and overrides); a bucket whose
    rate changed starts again full at the new rate.
    """

    def __init__(
        self,
        limits_of: Callable[[str], QuotaLimits],
        monotonic: Callable[[], float],
        audit_period_seconds: float,
    ) -> None:
        self._limits_of = limits_of
        self._monotonic = monotonic
        self._audit_period = audit_period_seconds
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, OperationClass], TokenBucket] = {}
        self._audit: dict[str, tuple[float, int]] = {}  # tenant -> (period start, bytes)

    def forget(self, tenant: str) -> None:
        """Drops the tenant's buckets and audit volume (it was destroyed, or made anew)."""
        with self._lock:
            for bucket in [b for b in self._buckets if b[0] == tenant]:
                del self._buckets[bucket]
            self._audit.pop(tenant, None)

    def admit(self, tenant: str, rpc: str) -> None:
        """Counts one call of the tenant against its rate and its audit volume.

        Raises:
            ResourceExhausted: over the class's rate, or the audit volume of this period is
                used up; retry_after says when a retry can pass.
        """
        limits = self._limits_of(tenant)
        operation = operation_class(rpc)
        rate = limits.rate(operation)
        now = self._monotonic()
        with self._lock:
            start, used = self._audit_period_of(tenant, now)
            if used >= limits.audit_bytes_per_period:
                raise ResourceExhausted(
                    f"tenant {tenant!r} has used its audit volume of"
                    f" {limits.audit_bytes_per_period} bytes for this period",
                    retry_after=start + self._audit_period - now,
                )
            bucket = self._buckets.get((tenant, operation))
            if bucket is None or bucket.rate != rate:
                bucket = self._buckets[(tenant, operation)] = TokenBucket(rate, now)
            wait = bucket.take(now)
        if wait:
            raise ResourceExhausted(
                f"rate exceeded: tenant {tenant!r} may make {rate:g} {operation.value}"
                f" requests per second ({rpc})",
                retry_after=wait,
            )

    def admit_some(self, tenant: str, rpc: str, count: int) -> tuple[int, ResourceExhausted | None]:
        """Counts up to `count` calls, one after another as admit() would: how many were
        admitted, and the refusal of the first that was not (None if all were). A batch's
        items are admitted this way, one exchange for a chunk in a worker process."""
        for admitted in range(count):
            try:
                self.admit(tenant, rpc)
            except ResourceExhausted as exc:
                return admitted, exc
        return count, None

    def take_spare(self, tenant: str, rpc: str) -> int:
        """Takes, for a worker process to admit by itself (hsmd/relay.py), the calls the
        tenant's bucket holds beyond those just admitted, up to a lease: at most SPARE_LIMIT
        and a hundredth of the class's rate (none below 100 calls/s, so a low quota is counted
        call by call). Never refuses; none while the audit volume is used up."""
        limits = self._limits_of(tenant)
        operation = operation_class(rpc)
        wanted = min(SPARE_LIMIT, int(limits.rate(operation) / 100))
        now = self._monotonic()
        taken = 0
        with self._lock:
            bucket = self._buckets.get((tenant, operation))
            if bucket is None or self._audit_period_of(tenant, now)[1] >= (
                limits.audit_bytes_per_period
            ):
                return 0
            while taken < wanted and not bucket.take(now):
                taken += 1
        return taken

    def refund(self, tenant: str, rpc: str) -> None:
        """Gives back the rate token admit() took, for a call the scheduler then refused: a
        tenant is not charged twice for one overload."""
        with self._lock:
            bucket = self._buckets.get((tenant, operation_class(rpc)))
            if bucket is not None:
                bucket.give_back()

    def charge_audit(self, tenant: str, size: int) -> None:
        """Adds an audit event of `size` bytes to the tenant's volume of this period."""
        now = self._monotonic()
        with self._lock:
            start, used = self._audit_period_of(tenant, now)
            self._audit[tenant] = (start, used + size)

    def audit_bytes(self, tenant: str) -> int:
        with self._lock:
            return self._audit_period_of(tenant, self._monotonic())[1]

    def _audit_period_of(self, tenant: str, now: float) -> tuple[float, int]:
        start, used = self._audit.get(tenant, (now, 0))
        if now - start >= self._audit_period:
            periods = math.floor((now - start) / self._audit_period)
            start, used = start + periods * self._audit_period, 0
        self._audit[tenant] = (start, used)
        return start, used


DEFAULT_LIMITS = QuotaLimits()


def default_limits(tenant: str) -> QuotaLimits:
    """The built-in limits, for operations built without a tenant's quotas (tests, tools)."""
    return DEFAULT_LIMITS
