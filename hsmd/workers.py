"""More than one process: a coordinator and worker processes, so the daemon uses every core.

One Python process computes on one core at a time (the GIL), and nearly all of a call's cost is
Python. With `[server] processes = N` above 1, `hsmd serve` becomes the coordinator and starts
N worker processes (`hsmd worker`), which share the public port (SO_REUSEPORT) and take every
connection:

- A worker serves the operations on existing keys (transport/forward.py SERVED_BY_WORKERS)
  with token sessions of its own, reading the database. It asks the coordinator to admit each
  call against the tenant's rate quota and hands it the call's audit event, answering only once
  the event is durable (relay.py).
- Every other call, and a call of a tenant made after the worker started, is forwarded to the
  coordinator, which serves it as a single-process daemon would.
- The coordinator alone writes tokens and the database (SoftHSM2 2.6.1 loses updates between
  two processes that write one token) and keeps the one audit chain. A worker sees its changes:
  every read of its store looks at SQLite's data_version first and drops what it kept, and
  SoftHSM2 reads objects another process made.

The coordinator starts the workers after its own start-up repair, one after another (the first
binds the configured port, which may be 0, and the others join it), and starts again any that
exits. A worker exits when the coordinator's end of the relay closes (the coordinator is gone,
even by kill -9). At stop, the coordinator stops its workers first, while it can still audit
their last calls. Workers run in a session of their own, so a terminal's Ctrl-C reaches only
the coordinator, which stops them in order.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from hsmd.errors import StartupRefused

log = logging.getLogger(__name__)

# In the coordinator's private directory (mode 0700).
RELAY_SOCKET = "relay.sock"
CALLS_SOCKET = "calls.sock"
WORKER_SETTINGS = "settings.toml"
# Seconds a worker may take to open its tokens and listen.
START_TIMEOUT = 60.0
# Seconds between looks at the workers (supervision), and the least between two starts of
# one worker that keeps failing.
_WATCH_SECONDS = 0.5
_RESTART_BACKOFF = 1.0
# Seconds past the grace period a stopping worker gets before it is killed.
_STOP_MARGIN = 5.0


@dataclass
class _Worker:
    index: int
    process: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.process.pid


class WorkerPool:
    """The coordinator's worker processes: started, watched, started again, stopped."""

    def __init__(self, command: Callable[[int, int], list[str]], count: int) -> None:
        """command(index, port): the command line of worker `index` listening on `port`."""
        self._command = command
        self.count = count
        self._changed = threading.Condition()
        self._ports: dict[int, int] = {}  # pid -> the port it serves on (ready)
        self._workers: dict[int, _Worker] = {}
        self._port = 0
        self._stopping = False
        self._watcher = threading.Thread(target=self._watch, name="hsmd-workers", daemon=True)

    def ready(self, pid: int, port: int) -> None:
        """A worker process says it serves on port (relay.RelayServer calls this)."""
        with self._changed:
            self._ports[pid] = port
            self._changed.notify_all()

    def start(self, port: int) -> int:
        """Starts the workers one after another; returns the port they share.

        Raises:
            StartupRefused: a worker exited or did not listen within START_TIMEOUT.
        """
        for index in range(self.count):
            self._port = self._start_worker(index, port if index == 0 else self._port)
        self._watcher.start()
        return self._port

    def stop(self, grace_seconds: float) -> None:
        """Stops every worker (SIGTERM: it lets its calls finish within the grace period),
        kills any still running after it, and waits for them."""
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
            workers = list(self._workers.values())
        for worker in workers:
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds + _STOP_MARGIN
        for worker in workers:
            try:
                worker.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker %d (pid %d) did not stop: killed", worker.index, worker.pid)
                worker.process.kill()
                worker.process.wait()

    def signal_all(self, signum: int) -> None:
        """Passes a signal (SIGHUP: look at the TLS files now) to every running worker."""
        with self._changed:
            workers = list(self._workers.values())
        for worker in workers:
            if worker.process.poll() is None:
                worker.process.send_signal(signum)

    def _start_worker(self, index: int, port: int) -> int:
        # Our own interpreter and arguments (app._Workers): nothing from a caller.
        process = subprocess.Popen(self._command(index, port), start_new_session=True)  # noqa: S603
        with self._changed:
            self._workers[index] = _Worker(index, process)
            self._changed.wait_for(
                lambda: process.pid in self._ports or process.poll() is not None or self._stopping,
                START_TIMEOUT,
            )
            bound = self._ports.get(process.pid)
        if bound is None:
            if process.poll() is None:
                process.kill()
                process.wait()
            raise StartupRefused(
                f"worker process {index} did not start (exit code {process.returncode});"
                " its log lines above say why"
            )
        log.info("worker %d (pid %d) serves on port %d", index, process.pid, bound)
        return bound

    def _watch(self) -> None:
        """Starts again any worker that exits while the daemon runs."""
        while True:
            with self._changed:
                self._changed.wait(_WATCH_SECONDS)
                if self._stopping:
                    return
                gone = [w for w in self._workers.values() if w.process.poll() is not None]
            for worker in gone:
                with self._changed:
                    self._ports.pop(worker.pid, None)
                log.error(
                    "worker %d (pid %d) exited with %s: starting it again",
                    worker.index,
                    worker.process.pid,
                    worker.process.returncode,
                )
                time.sleep(max(0.0, worker.started + _RESTART_BACKOFF - time.monotonic()))
                try:
                    self._start_worker(worker.index, self._port)
                except StartupRefused as exc:
                    log.error("%s; trying again", exc)
