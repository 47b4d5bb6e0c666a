"""What an operator's tools watch: the health of the token backend and the audit log, and an
HTTP endpoint of its own (`[metrics] listen`) with the Prometheus metrics (/metrics) and a
plain health check for load balancers (/healthz), which need no client certificate.

The health check runs every `metrics.health_check_seconds`; the gRPC health service, /healthz
and the hsmd_serving gauge all follow it. A failing check is logged when it starts failing and
when it passes again, not at every look.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from grpc_health.v1 import health, health_pb2

from hsmd import metrics

log = logging.getLogger(__name__)

# A check: None when all is well, else what is wrong.
Check = Callable[[], str | None]


class Health:
    """The daemon's health: every check passes (SERVING) or one does not (NOT_SERVING)."""

    def __init__(self, checks: Mapping[str, Check], timeout: float = 10.0) -> None:
        """timeout: a check that has not answered by then is a problem (a hung library must
        not leave the status at SERVING); it is not started again until it returns."""
        self._checks = checks
        self._timeout = timeout
        self._runner = ThreadPoolExecutor(max(1, len(checks)), thread_name_prefix="hsmd-check")
        self._running: dict[str, Future[str | None]] = {}
        self._lock = threading.Lock()
        self._servers: list[tuple[health.HealthServicer, list[str]]] = []
        self.problems: dict[str, str] = {}
        self._stopped = False
        metrics.SERVING.set(1)

    @property
    def serving(self) -> bool:
        return not self.problems

    def follow(self, servicer: health.HealthServicer, names: list[str]) -> None:
        """Makes a gRPC health service answer as this check says, for these service names."""
        with self._lock:
            self._servers.append((servicer, names))
        self._publish()

    def check(self) -> None:
        """Runs every check now; logs and publishes what changed."""
        for name, check in self._checks.items():
            if name not in self._running or self._running[name].done():
                self._running[name] = self._runner.submit(check)
        problems: dict[str, str] = {}
        for name, running in self._running.items():
            try:
                problem = running.result(timeout=self._timeout)
            except FuturesTimeout:
                problem = f"the check has not answered within {self._timeout:g} s"
            except Exception as exc:  # a check that fails is a problem, not a crash
                problem = f"the check failed: {exc}"
            if problem is not None:
                problems[name] = problem
        with self._lock:
            if self._stopped:  # a look that began before the stop tells nothing now
                return
            before, self.problems = self.problems, problems
        for name in sorted(problems.keys() - before.keys()):
            log.error("health: %s fails, the daemon is NOT_SERVING: %s", name, problems[name])
        for name in sorted(before.keys() - problems.keys()):
            log.warning("health: %s passes again", name)
        if (before == {}) != (problems == {}):
            self._publish()

    def stopping(self) -> None:
        """A stop has begun: NOT_SERVING from now on (load balancers move away while the
        calls in flight drain); no check runs any more."""
        with self._lock:
            self._stopped = True
            self.problems = {"daemon": "stopping"}
        self._publish()
        self._runner.shutdown(wait=False, cancel_futures=True)

    def watch(self, interval: float, stop: threading.Event) -> threading.Thread:
        def run() -> None:
            while not stop.wait(interval):
                self.check()

        watcher = threading.Thread(target=run, name="hsmd-health", daemon=True)
        watcher.start()
        return watcher

    def _publish(self) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if self.serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        metrics.SERVING.set(1 if self.serving else 0)
        with self._lock:
            servers = list(self._servers)
        for servicer, names in servers:
            for name in names:
                servicer.set(name, status)


# How long a connection may take to send its request, and how many are served at once (more
# are closed at once): the endpoint needs no certificate, so it must not cost the daemon
# threads or file descriptors without bound.
_CONNECTION_SECONDS = 10.0
_MAX_CONNECTIONS = 16


class _BoundedServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(_MAX_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class ObservationServer:
    """The HTTP endpoint: GET /metrics, GET /healthz (200 SERVING or 503 NOT_SERVING with
    the problems, one a line). Plain HTTP: bind it to localhost or a network of operators."""

    def __init__(self, host: str, port: int, health_: Health) -> None:
        """Raises OSError if the address cannot be bound."""

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    self._answer(200, metrics.exposition(), metrics.CONTENT_TYPE)
                elif self.path == "/healthz":
                    problems = "".join(f"{k}: {v}\n" for k, v in health_.problems.items())
                    if health_.serving:
                        self._answer(200, b"SERVING\n", "text/plain; charset=utf-8")
                    else:
                        body = f"NOT_SERVING\n{problems}".encode()
                        self._answer(503, body, "text/plain; charset=utf-8")
                else:
                    self._answer(404, b"not found: try /metrics or /healthz\n", "text/plain")

            def _answer(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                """Scrapes are not logged (one every few seconds)."""

        Handler.timeout = _CONNECTION_SECONDS  # a connection that sends nothing is closed
        self._server = _BoundedServer((host, port), Handler)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="hsmd-metrics", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
