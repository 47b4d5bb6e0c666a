"""What operators watch, through a real daemon (hsmd/transport/observe.py, hsmd/metrics.py):
after a known sequence of calls the scraped Prometheus counters equal what was done; health
turns NOT_SERVING when the audit log or the token backend fails, and SERVING again when they
are back, on the gRPC health service and on /healthz (no client certificate); JSON log lines
carry the call's fields; reflection answers in v1 as well as v1alpha."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from hsmclient import InvalidArgumentError, ResourceExhaustedError, TenantQuota
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import DaemonProcess, LoopFileSystem, TestPki, wait_until
from tests.stubs import channel

TENANT, THROTTLED = "watched", "throttled"
# Every process's endpoint: the coordinator's first, then its workers' (HSMD_TEST_PROCESSES).
_METRICS = re.compile(r"metrics and health on http://127\.0\.0\.1:(\d+)/metrics")


def _start(directory: Path, pki: TestPki, **settings: object) -> DaemonProcess:
    daemon = DaemonProcess(
        directory,
        pki,
        metrics={"listen": "127.0.0.1:0", "health_check_seconds": 0.2},
        log={"format": "json"},
        **settings,  # type: ignore[arg-type]
    )
    daemon.start()
    return daemon


@pytest.fixture
def daemon(tmp_path: Path, pki: TestPki) -> Iterator[DaemonProcess]:
    process = _start(tmp_path / "state", pki)
    process.create_tenant(TENANT)
    yield process
    process.stop()


def _endpoints(daemon: DaemonProcess) -> list[str]:
    ports = _METRICS.findall(daemon.log.read_text())
    assert ports, "the daemon logs where its metrics are"
    return [f"http://127.0.0.1:{port}" for port in ports]


def _endpoint(daemon: DaemonProcess) -> str:
    """The coordinator's (the only one, with one process)."""
    return _endpoints(daemon)[0]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()


def _samples(daemon: DaemonProcess) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every process's samples, summed: a call is counted where it was served."""
    summed: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for endpoint in _endpoints(daemon):
        status, text = _get(endpoint + "/metrics")
        assert status == 200
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                key = (sample.name, frozenset(sample.labels.items()))
                summed[key] = summed.get(key, 0.0) + sample.value
    return summed


def _value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_the_scraped_counters_equal_what_was_done(daemon: DaemonProcess) -> None:
    with daemon.client(TENANT) as client:
        key_id = client.create_key().key_id
        blobs = [client.encrypt(key_id, b"x", {"n": str(n)}).ciphertext_blob for n in range(3)]
        with pytest.raises(InvalidArgumentError):
            client.decrypt(blobs[0], {"n": "wrong"})
    daemon.create_tenant(THROTTLED)
    with daemon.admin() as admin:
        admin.set_tenant_quota(THROTTLED, TenantQuota(symmetric_requests_per_second=1))
    with daemon.client(THROTTLED) as throttled:
        with pytest.raises(ResourceExhaustedError):
            for _ in range(10):  # the second within a second is refused
                throttled.generate_random(8)
    samples = _samples(daemon)
    count = lambda operation, code: _value(  # noqa: E731
        samples, "hsmd_requests_total", tenant=TENANT, operation=operation, code=code
    )
    assert (count("CreateKey", "OK"), count("Encrypt", "OK")) == (1, 3)
    assert count("Decrypt", "INVALID_ARGUMENT") == 1
    assert _value(samples, "hsmd_request_duration_seconds_count", operation="Encrypt") == 3
    assert _value(samples, "hsmd_keys", tenant=TENANT) == 1
    assert (
        _value(samples, "hsmd_quota_rejections_total", tenant=THROTTLED, operation="GenerateRandom")
        == 1
    )
    assert _value(samples, "hsmd_scheduler_wait_seconds_count", tenant=TENANT) >= 5
    assert _value(samples, "hsmd_audit_fsync_seconds_count") >= 1
    assert _value(samples, "hsmd_serving") == len(_endpoints(daemon))  # 1 in each process
    expiry = [key for key in samples if key[0] == "hsmd_certificate_expiry_timestamp_seconds"]
    assert {dict(labels)["certificate"] for _, labels in expiry} >= {"server", "ca:CN=hsmd test CA"}


def _grpc_health(daemon: DaemonProcess) -> int:
    with channel(daemon, daemon.pki.tenant_client(TENANT, "app")) as open_channel:
        stub = health_pb2_grpc.HealthStub(open_channel)
        return stub.Check(health_pb2.HealthCheckRequest(service="")).status


def _health_is(daemon: DaemonProcess, serving: bool) -> Callable[[], bool]:
    expected_http = 200 if serving else 503
    expected_grpc = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    return lambda: (
        _get(_endpoint(daemon) + "/healthz")[0] == expected_http
        and _grpc_health(daemon) == expected_grpc
    )


def test_health_follows_the_audit_log(daemon: DaemonProcess) -> None:
    assert _get(_endpoint(daemon) + "/healthz") == (200, "SERVING\n")
    moved = daemon.audit_log.with_name("audit.moved")
    daemon.audit_log.rename(moved)
    try:
        wait_until(_health_is(daemon, serving=False), "NOT_SERVING without the audit log")
        status, body = _get(_endpoint(daemon) + "/healthz")
        assert status == 503 and body.startswith("NOT_SERVING\naudit log: ")
    finally:
        moved.rename(daemon.audit_log)
    wait_until(_health_is(daemon, serving=True), "SERVING with the audit log back")


def test_health_follows_the_token_backend(tmp_path: Path, pki: TestPki) -> None:
    daemon = DaemonProcess(
        tmp_path / "daemon", pki, metrics={"listen": "127.0.0.1:0", "health_check_seconds": 0.2}
    )
    volume = LoopFileSystem.mounted(tmp_path / "tokens.img", daemon.tokens, size="16M")
    try:
        daemon.start()
        daemon.create_tenant(TENANT)
        wait_until(_health_is(daemon, serving=True), "SERVING")
        volume.read_only()
        wait_until(_health_is(daemon, serving=False), "NOT_SERVING on a read-only token disk")
        assert "token backend: token directory" in _get(_endpoint(daemon) + "/healthz")[1]
        volume.read_only(False)
        wait_until(_health_is(daemon, serving=True), "SERVING with the token disk back")
    finally:
        if daemon.process is not None:
            daemon.kill()
        volume.unmount(lazy=True)


def test_json_log_lines_carry_the_calls_fields(daemon: DaemonProcess) -> None:
    with daemon.client(TENANT) as client:
        client.generate_random(8)

    def access_line() -> dict[str, object] | None:
        for line in daemon.log.read_text().splitlines():
            if line.startswith("{") and '"operation": "GenerateRandom"' in line:
                parsed: dict[str, object] = json.loads(line)
                return parsed
        return None

    wait_until(lambda: access_line() is not None, "the call's access line is written")
    line = access_line()
    assert line is not None
    assert {k: line[k] for k in ("level", "tenant", "principal", "operation", "status")} == {
        "level": "INFO",
        "tenant": TENANT,
        "principal": "app",
        "operation": "GenerateRandom",
        "status": "OK",
    }
    assert re.fullmatch(r"[0-9a-f]{32}", str(line["request_id"]))
    assert isinstance(line["duration_ms"], float) and str(line["time"]).endswith("+00:00")


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_answers_in_both_versions(daemon: DaemonProcess, version: str) -> None:
    with channel(daemon, daemon.pki.tenant_client(TENANT, "app")) as open_channel:
        info = open_channel.stream_stream(
            f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        answers = list(info(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {service.name for service in answers[0].list_services_response.service}
    assert {"hsmd.v1.KeyManagementService", f"grpc.reflection.{version}.ServerReflection"} <= names
