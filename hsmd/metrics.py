"""The daemon's Prometheus metrics, in a registry of their own (what `[metrics] listen`
serves, hsmd/transport/observe.py), and the one place that imports prometheus_client.

Labels take only bounded values: tenants that exist (an unknown caller is ""), the API's
operation names, gRPC status names. docs/operations.md#metrics lists every metric.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry(auto_describe=True)
CONTENT_TYPE = CONTENT_TYPE_LATEST
ProcessCollector(registry=REGISTRY)  # CPU seconds, memory, open files of this process

# From 0.25 ms (a symmetric call's own cost) to 10 s (an RSA-4096 key generation under load).
_CALL_BUCKETS = (0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                 2.5, 5, 10)  # fmt: skip

REQUESTS = Counter(
    "hsmd_requests",
    "Calls answered, by tenant, operation and gRPC status",
    ["tenant", "operation", "code"],
    registry=REGISTRY,
)
# By operation only: tenants x operations x buckets would be too many series for Prometheus
# with many tenants (hsmd_requests_total counts each tenant's calls).
REQUEST_SECONDS = Histogram(
    "hsmd_request_duration_seconds",
    "Time from a call's arrival to its answer, by operation",
    ["operation"],
    buckets=_CALL_BUCKETS,
    registry=REGISTRY,
)
QUOTA_REJECTIONS = Counter(
    "hsmd_quota_rejections",
    "Calls refused RESOURCE_EXHAUSTED by a tenant's quota or the HSM's fair share",
    ["tenant", "operation"],
    registry=REGISTRY,
)
BACKEND_ERRORS = Counter(
    "hsmd_backend_errors",
    "Calls failed by the token backend (UNAVAILABLE or INTERNAL from PKCS#11 or its files)",
    ["tenant", "operation"],
    registry=REGISTRY,
)
SCHEDULER_WAITING = Gauge(
    "hsmd_scheduler_waiting_calls",
    "Calls waiting for a slot of the HSM's fair-share scheduler",
    registry=REGISTRY,
)
SCHEDULER_WAIT_SECONDS = Histogram(
    "hsmd_scheduler_wait_seconds",
    "Time a call waited for its slot (0 for most), by tenant",
    ["tenant"],
    buckets=(0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    registry=REGISTRY,
)
AUDIT_FSYNC_SECONDS = Histogram(
    "hsmd_audit_fsync_seconds",
    "Time of each fsync that makes audit events durable (one covers a group of calls)",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
    registry=REGISTRY,
)
SERVING = Gauge(
    "hsmd_serving",
    "1 while the health check finds the token backend and the audit log usable, else 0",
    registry=REGISTRY,
)


_Read = Callable[[], Iterable[tuple[tuple[str, ...], float]]]
_computed: dict[str, Collector] = {}


class _Gauges(Collector):
    """Gauges computed when scraped: `read` gives (labels, value) pairs."""

    def __init__(self, name: str, documentation: str, labels: list[str], read: _Read) -> None:
        self._name = name
        self._documentation = documentation
        self._labels = labels
        self._read = read

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(self._name, self._documentation, labels=self._labels)
        for labels, value in self._read():
            family.add_metric(list(labels), value)
        yield family

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(self._name, self._documentation, labels=self._labels)


def gauges(name: str, documentation: str, labels: list[str], read: _Read) -> None:
    """Registers gauges read at each scrape (keys per tenant, certificate expiry times), in
    place of any of the same name."""
    if name in _computed:
        REGISTRY.unregister(_computed.pop(name))
    _computed[name] = _Gauges(name, documentation, labels, read)
    REGISTRY.register(_computed[name])


def drop_gauges() -> None:
    """Forgets the gauges `gauges` registered: at a stop, so that nothing module-wide keeps
    the daemon's objects (the token library among them) alive into the interpreter's end,
    where python-pkcs11's library object cannot be released cleanly."""
    for name in list(_computed):
        REGISTRY.unregister(_computed.pop(name))


def exposition() -> bytes:
    """The registry in Prometheus's text format."""
    return generate_latest(REGISTRY)
