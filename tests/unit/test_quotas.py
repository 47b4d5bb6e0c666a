"""Quotas: token buckets, per-tenant meters and overrides (hsmd.quotas), with an injected
clock; and the RetryInfo detail a rate refusal carries to the client (hsmd.transport.status,
hsmclient.errors)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from grpc_status import rpc_status
from hsmclient.errors import ResourceExhaustedError, from_rpc_error

from hsmd.errors import InvalidArgument, ResourceExhausted
from hsmd.keystore.sqlite_store import SqliteKeyStore
from hsmd.ops.quotas import QuotaOps
from hsmd.quotas import (
    SPARE_LIMIT,
    OperationClass,
    QuotaLimits,
    TenantMeters,
    TokenBucket,
    check_overrides,
    operation_class,
)
from hsmd.transport.status import with_details


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_bursts_to_its_rate_then_refills_at_it() -> None:
    bucket = TokenBucket(rate=4.0, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [0.0] * 4
    assert bucket.take(0.0) == pytest.approx(0.25)
    assert bucket.take(0.25) == 0.0
    assert bucket.take(0.25) == pytest.approx(0.25)


def test_a_slow_bucket_holds_one_call() -> None:
    bucket = TokenBucket(rate=0.5, now=0.0)
    assert bucket.take(0.0) == 0.0
    assert bucket.take(1.0) == pytest.approx(1.0)
    assert bucket.take(2.0) == 0.0


def test_rpcs_are_classed_as_aws_kms_classes_its_quotas() -> None:
    assert operation_class("Encrypt") is OperationClass.SYMMETRIC
    assert operation_class("Sign") is OperationClass.ASYMMETRIC
    assert operation_class("CreateKey") is OperationClass.KEY_GENERATION
    assert operation_class("ListAuditEvents") is OperationClass.AUDIT
    assert operation_class("DescribeKey") is OperationClass.MANAGEMENT
    assert operation_class("SomeFutureRpc") is OperationClass.MANAGEMENT


def _meters(clock: FakeClock, limits: dict[str, QuotaLimits]) -> TenantMeters:
    return TenantMeters(lambda tenant: limits.get(tenant, QuotaLimits()), clock, 60.0)


def test_a_tenant_over_its_rate_is_refused_with_a_delay_and_another_is_not() -> None:
    clock = FakeClock()
    meters = _meters(clock, {"a": QuotaLimits(symmetric_requests_per_second=2.0)})
    meters.admit("a", "Encrypt")
    meters.admit("a", "Decrypt")
    with pytest.raises(ResourceExhausted, match="2 symmetric requests per second") as refused:
        meters.admit("a", "Encrypt")
    assert refused.value.retry_after == pytest.approx(0.5)
    meters.admit("a", "DescribeKey")  # another class has its own bucket
    for _ in range(100):
        meters.admit("b", "Encrypt")  # another tenant has its own buckets
    clock.now += 0.5
    meters.admit("a", "Encrypt")


def test_a_changed_rate_applies_at_the_next_call() -> None:
    clock = FakeClock()
    limits = {"a": QuotaLimits(key_generation_requests_per_second=1.0)}
    meters = _meters(clock, limits)
    meters.admit("a", "CreateKey")
    with pytest.raises(ResourceExhausted):
        meters.admit("a", "CreateKey")
    limits["a"] = QuotaLimits(key_generation_requests_per_second=10.0)
    meters.admit("a", "CreateKey")


def test_the_audit_volume_is_counted_per_period() -> None:
    clock = FakeClock()
    meters = _meters(clock, {"a": QuotaLimits(audit_bytes_per_period=1000)})
    meters.charge_audit("a", 600)
    meters.admit("a", "Encrypt")
    meters.charge_audit("a", 600)
    assert meters.audit_bytes("a") == 1200
    clock.now += 45
    with pytest.raises(ResourceExhausted, match="audit volume") as refused:
        meters.admit("a", "Encrypt")
    assert refused.value.retry_after == pytest.approx(15.0)
    meters.admit("b", "Encrypt")
    clock.now += 15
    assert meters.audit_bytes("a") == 0
    meters.admit("a", "Encrypt")


def test_a_batch_is_admitted_in_order_up_to_the_rate() -> None:
    clock = FakeClock()
    meters = _meters(clock, {"a": QuotaLimits(symmetric_requests_per_second=3.0)})
    admitted, refusal = meters.admit_some("a", "Encrypt", 5)
    assert admitted == 3 and refusal is not None and refusal.retry_after == pytest.approx(1 / 3)
    assert meters.admit_some("b", "Encrypt", 5) == (5, None)


def test_spare_calls_for_a_worker_are_a_hundredth_of_the_rate_and_never_beyond_it() -> None:
    clock = FakeClock()
    limits = {
        "slow": QuotaLimits(symmetric_requests_per_second=99.0),
        "fast": QuotaLimits(symmetric_requests_per_second=1000.0),
        "vast": QuotaLimits(symmetric_requests_per_second=100_000.0),
    }
    meters = _meters(clock, limits)
    for tenant in limits:
        meters.admit(tenant, "Encrypt")
    assert meters.take_spare("slow", "Encrypt") == 0  # counted call by call
    assert meters.take_spare("fast", "Encrypt") == 10
    assert meters.take_spare("vast", "Encrypt") == SPARE_LIMIT
    assert meters.take_spare("unseen", "Encrypt") == 0  # no bucket yet: nothing to lease
    admitted, refusal = meters.admit_some("fast", "Encrypt", 2000)
    assert refusal is not None and meters.take_spare("fast", "Encrypt") == 0
    assert 1 + 10 + admitted == 1000  # the burst, whether admitted or leased


def test_no_spare_calls_once_the_audit_volume_is_used_up() -> None:
    clock = FakeClock()
    meters = _meters(clock, {"a": QuotaLimits(audit_bytes_per_period=1000)})
    meters.admit("a", "Encrypt")
    meters.charge_audit("a", 1000)
    assert meters.take_spare("a", "Encrypt") == 0


def test_overrides_are_checked_and_overlay_the_defaults() -> None:
    checked = check_overrides({"max_keys": 5.0, "symmetric_requests_per_second": 2.5})
    assert checked == {"max_keys": 5, "symmetric_requests_per_second": 2.5}
    limits = QuotaLimits().overlaid(checked)
    assert (limits.max_keys, limits.rate(OperationClass.SYMMETRIC)) == (5, 2.5)
    assert limits.max_aliases == QuotaLimits().max_aliases
    for bad, message in [
        ({"max_keys": -1}, "max_keys must be between"),
        ({"max_keys": 1.5}, "max_keys must be between"),
        ({"max_tags_per_key": 51}, "max_tags_per_key must be between 0 and 50"),
        ({"symmetric_requests_per_second": 0}, "symmetric_requests_per_second"),
        ({"keys": 1}, "keys is not a tenant quota"),
    ]:
        with pytest.raises(InvalidArgument, match=message):
            check_overrides(bad)


_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_rate_refusal_carries_retry_info_that_the_client_reads() -> None:
    status = with_details(
        ResourceExhausted("slow down", retry_after=0.2501), _EXHAUSTED, "slow down"
    )
    assert status is not None and status.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    error = _FailedCall(status)
    assert rpc_status.from_call(error) is not None
    client_error = from_rpc_error(error)
    assert isinstance(client_error, ResourceExhaustedError)
    assert client_error.retry_after == pytest.approx(0.251)
    assert str(client_error) == "slow down (retry after 0.251s)"


def test_the_detailed_status_keeps_the_request_id_in_the_trailers() -> None:
    """A status replaces the call's trailers: the request id must travel with the details."""
    status = with_details(
        ResourceExhausted("slow down", retry_after=1),
        _EXHAUSTED,
        "slow down",
        (("x-request-id", "r1"),),
    )
    assert status is not None
    trailers = dict(status.trailing_metadata)
    assert trailers["x-request-id"] == "r1" and "grpc-status-details-bin" in trailers


def test_a_limit_refusal_has_no_retry_delay() -> None:
    assert with_details(ResourceExhausted("limit exceeded"), _EXHAUSTED, "limit exceeded") is None
    assert with_details(InvalidArgument("bad"), grpc.StatusCode.INVALID_ARGUMENT, "bad") is None
    assert from_rpc_error(_FailedCall(None)).retry_after is None  # type: ignore[attr-defined]


class _FailedCall(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    """What a failed unary call raises: an RpcError that is also a Call."""

    def __init__(self, status: grpc.Status | None) -> None:
        self._status = status

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.RESOURCE_EXHAUSTED

    def details(self) -> str:
        return self._status.details if self._status else "limit exceeded"

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        return tuple(self._status.trailing_metadata) if self._status else ()

    def initial_metadata(self) -> tuple[()]:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> None:
        return None

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: object) -> bool:
        return False


def test_limits_read_while_an_operator_sets_them_are_not_kept(tmp_path: Path) -> None:
    """A read of the old overrides that a SetTenantQuota overtakes must not be cached."""
    store = SqliteKeyStore(tmp_path / "hsmd.db")
    store.add_tenant("t", "hsmd/t", datetime.now(UTC), ["admin"])
    ops = QuotaOps(store, QuotaLimits(), lambda: 0.0, 3600.0)
    read = store.get_tenant_quota
    raced: list[bool] = []

    def overtaken(tenant: str) -> dict[str, float]:
        old = read(tenant)
        if not raced:
            raced.append(True)
            ops.set(tenant, {"symmetric_requests_per_second": 1.0})
        return old

    store.get_tenant_quota = overtaken  # type: ignore[method-assign]
    assert (
        ops.limits("t").symmetric_requests_per_second == QuotaLimits().symmetric_requests_per_second
    )
    assert ops.limits("t").symmetric_requests_per_second == 1.0


def test_a_tenant_made_again_under_an_old_name_starts_with_fresh_meters(tmp_path: Path) -> None:
    store = SqliteKeyStore(tmp_path / "hsmd.db")
    store.add_tenant("t", "hsmd/t", datetime.now(UTC), ["admin"])
    ops = QuotaOps(store, QuotaLimits(), lambda: 0.0, 3600.0)
    ops.meters.charge_audit("t", 5000)
    assert ops.meters.audit_bytes("t") == 5000
    ops.forget("t")
    assert ops.meters.audit_bytes("t") == 0


def test_a_refunded_call_gives_its_rate_token_back() -> None:
    meters = TenantMeters(lambda tenant: QuotaLimits(symmetric_requests_per_second=1.0),
                          lambda: 0.0, 3600.0)  # fmt: skip
    meters.admit("t", "Encrypt")
    with pytest.raises(ResourceExhausted):
        meters.admit("t", "Encrypt")
    meters.refund("t", "Encrypt")  # the scheduler refused the call that took it
    meters.admit("t", "Encrypt")
