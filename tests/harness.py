"""Test harness: a test PKI, a real daemon in a subprocess, and a probe of its token.

The integration tier proves features against these real parts: SoftHSM2 tokens, the `hsmd`
process, mutual TLS on 127.0.0.1 with certificates from a CA made for the run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hsmclient import AdminClient, HsmClient

from hsmd import devpki
from hsmd.backend.pins import PinDeriver
from hsmd.config import DEFAULT_PKCS11_LIBRARY

SOFTHSM_LIB = Path(DEFAULT_PKCS11_LIBRARY)
TRUST_DOMAIN = "hsmd.test"
# Tests move the daemon's clock (which also checks client certificates) back by up to 30 days:
# the test CA and its client certificates are valid from 60 days before now.
CLOCK_SLACK = timedelta(days=60)
_LISTENING = re.compile(r"listening on [^ ]+:(\d+)")
_PROBE = Path(__file__).with_name("token_probe.py")


class TestPki:
    """A CA for the run, its server certificate, and client certificates on demand."""

    __test__ = False

    def __init__(
        self,
        directory: Path,
        *,
        path_length: int = 0,
        also_trusted: Sequence[devpki.Issued] = (),
    ) -> None:
        """A CA whose certificates may be followed by path_length CAs; the daemon's CA file
        holds it and also_trusted (more trust anchors)."""
        self.directory = directory
        now = datetime.now(UTC) - CLOCK_SLACK
        self.ca = devpki.create_ca("hsmd test CA", now, path_length=path_length)
        self.ca_cert = directory / "ca.pem"
        self.ca_cert.parent.mkdir(parents=True, exist_ok=True)
        self.ca_cert.write_bytes(b"".join(ca.cert_pem() for ca in (self.ca, *also_trusted)))
        self.server_cert = directory / "server.pem"
        self.server_key = directory / "server-key.pem"
        devpki.issue(self.ca, "localhost", hosts=["localhost", "127.0.0.1"], server=True).write(
            self.server_cert, self.server_key
        )

    def client(
        self,
        name: str,
        uris: list[str],
        *,
        ca: devpki.Issued | None = None,
        not_after: datetime | None = None,
    ) -> tuple[bytes, bytes]:
        """(certificate PEM, key PEM) for a client with these URI SANs."""
        not_before = datetime.now(UTC) - CLOCK_SLACK
        if not_after is not None:
            not_before = not_after - timedelta(days=1)
        issued = devpki.issue(
            ca or self.ca, name, uris=uris, not_before=not_before, not_after=not_after
        )
        return issued.cert_pem(), issued.key_pem()

    def tenant_client(self, tenant: str, principal: str) -> tuple[bytes, bytes]:
        return self.client(
            f"{principal}@{tenant}", [devpki.tenant_uri(TRUST_DOMAIN, tenant, principal)]
        )

    def operator_client(self, name: str = "ops") -> tuple[bytes, bytes]:
        return self.client(name, [devpki.operator_uri(TRUST_DOMAIN, name)])


class DaemonProcess:
    """A real `hsmd serve` in a subprocess with its own token directory and database."""

    def __init__(
        self,
        directory: Path,
        pki: TestPki,
        workers: int | None = 16,
        *,
        grace_seconds: float = 5,
        audit: dict[str, int | float] | None = None,
        existing: bool = False,
        tenancy: dict[str, str] | None = None,
        movable_clock: bool = True,
        scheduler: dict[str, int | float] | None = None,
        quotas: dict[str, int | float] | None = None,
        processes: int | None = None,
        tls: dict[str, int | float | str] | None = None,
        metrics: dict[str, int | float | str] | None = None,
        log: dict[str, int | float | str] | None = None,
    ) -> None:
        """A daemon on a new state directory, or (existing=True) on one made before, such as
        a copy of another daemon's (every path in its config is relative to it). Tests run
        16 worker threads, so that a few client threads reach the scheduler's bounds;
        workers=None leaves the daemon's default (benchmarks). `audit`,
        `tenancy` and `scheduler` hold settings of the config's tables of those names. Its clock can
        be moved (move_clock) unless movable_clock is False, as in production (benchmarks:
        the offset clock reads its file's status on every call). processes above 1: a
        coordinator and that many worker processes (hsmd/workers.py). `tls`: more settings of
        the [tls] table (crl, reload_check_seconds); `metrics` and `log`, of those tables."""
        self.directory = directory
        self.pki = pki
        self.tokens = directory / "tokens"
        self.database = directory / "hsmd.db"
        self.audit_log = directory / "audit.jsonl"
        self.checkpoint_file = directory / "audit.jsonl.checkpoint"
        self.public_key_file = directory / "audit.jsonl.pub.pem"
        self.clock_file = directory / "clock.offset"
        self.clock_offset = timedelta()
        self.config = directory / "hsmd.toml"
        self.log = directory / "hsmd.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        secret_file = directory / "master.secret"
        # For the token probe only; the daemon writes its own from pkcs11.token_dir.
        self.softhsm_conf = directory / "softhsm2.conf"
        if existing:
            self.master_secret = secret_file.read_bytes()
        else:
            self.tokens.mkdir(parents=True)
            self.master_secret = secrets.token_bytes(32)
            secret_file.write_bytes(self.master_secret)
            secret_file.chmod(0o600)
            tables = {
                "audit": audit,
                "tenancy": tenancy,
                "scheduler": scheduler,
                "quotas": quotas,
                "metrics": metrics,
                "log": log,
            }
            if processes is None:  # HSMD_TEST_PROCESSES=2 runs the suite against workers
                processes = int(os.environ.get("HSMD_TEST_PROCESSES", "1"))
            self._write_config(workers, grace_seconds, movable_clock, tables, processes, tls)
        self.softhsm_conf.write_text(
            f"directories.tokendir = {self.tokens}\nobjectstore.backend = file\n"
            "log.level = ERROR\nslots.removable = false\n"
        )

    def _write_config(
        self,
        workers: int | None,
        grace_seconds: float,
        movable_clock: bool,
        tables: dict[str, Mapping[str, int | float | str] | None],
        processes: int,
        tls: Mapping[str, int | float | str] | None,
    ) -> None:
        pki = self.pki
        clock = 'clock_offset_file = "clock.offset"\n' if movable_clock else ""
        # Tests make keys faster than the default quota (50/s) lets a tenant; the quota tests
        # set their own.
        tables = {
            **tables,
            "quotas": {"key_generation_requests_per_second": 100000, **(tables["quotas"] or {})},
        }
        extra = "".join(
            f"\n[{table}]\n"
            + "".join(f"{name} = {_toml(value)}\n" for name, value in settings.items())
            for table, settings in tables.items()
            if settings
        )
        self.config.write_text(
            '[server]\nlisten = "127.0.0.1:0"\n'
            + (f"workers = {workers}\n" if workers is not None else "")
            + f"grace_seconds = {grace_seconds}\nprocesses = {processes}\n\n"
            f'[tls]\nca_cert = "{pki.ca_cert}"\nserver_cert = "{pki.server_cert}"\n'
            f'server_key = "{pki.server_key}"\ntrust_domain = "{TRUST_DOMAIN}"\n'
            + "".join(f"{name} = {_toml(value)}\n" for name, value in (tls or {}).items())
            + "\n"
            f'[pkcs11]\nlibrary = "{SOFTHSM_LIB}"\ntoken_dir = "tokens"\n\n'
            '[storage]\ndatabase = "hsmd.db"\nmaster_secret_file = "master.secret"\n'
            'audit_log = "audit.jsonl"\n\n'
            f"[lifecycle]\ncheck_interval_seconds = 0.2\n{clock}" + extra
        )

    @property
    def endpoint(self) -> str:
        return f"localhost:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "hsmd", "serve", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = _LISTENING.search(self.log.read_bytes()[offset:].decode(errors="replace"))
            if match:
                self.port = int(match.group(1))
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"hsmd did not start:\n{self.log.read_text()[-4000:]}")

    def pids(self) -> list[int]:
        """The daemon's process and its children: with processes above 1, the coordinator
        and its workers (each thread lists the children it started)."""
        assert self.process is not None
        pids = [self.process.pid]
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            try:
                pids += [int(pid) for pid in (task / "children").read_text().split()]
            except FileNotFoundError:  # a thread that just ended
                continue
        return pids

    def pin_port(self) -> None:
        """Starts from now on listen on the port the daemon has now, as a production daemon's
        fixed port would, so clients reconnect to it after a restart."""
        listen = f'listen = "127.0.0.1:{self.port}"'
        self.config.write_text(self.config.read_text().replace('listen = "127.0.0.1:0"', listen))

    def send(self, signum: int) -> None:
        """Sends a signal and returns at once (stop() waits for the exit)."""
        assert self.process is not None
        self.process.send_signal(signum)

    def start_fails(self, timeout: float = 60.0) -> tuple[int, str]:
        """Starts the daemon expecting it to refuse: its exit code and what it printed."""
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "hsmd", "serve", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise AssertionError(f"hsmd started:\n{self.log.read_text()[-4000:]}") from None
        return code, self.log.read_bytes()[offset:].decode(errors="replace")

    def hsmd(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Runs an `hsmd` command (not the daemon) and returns its exit code and output."""
        return run_hsmd(*args)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.process is not None
        self.process.send_signal(signum)
        code = self.process.wait(timeout)
        self.process = None
        return code

    def kill(self) -> None:
        """kill -9 of the daemon, workers included: what a power cut or systemd's kill of its
        cgroup does (a worker alone stops once its coordinator is gone)."""
        workers = self.pids()[1:]
        self.stop(signal.SIGKILL)
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # Gone, so their files are closed (a volume they wrote to can be unmounted).
        wait_until(lambda: not any(_running(pid) for pid in workers), "workers to exit")

    def connect(self, cert_and_key: tuple[bytes, bytes], client: type[Any] = HsmClient) -> Any:
        cert, key = cert_and_key
        return client.connect(
            self.endpoint,
            ca_cert=self.pki.ca_cert.read_bytes(),
            client_cert=cert,
            client_key=key,
            timeout=30.0,
        )

    def client(self, tenant: str, principal: str = "app") -> HsmClient:
        client: HsmClient = self.connect(self.pki.tenant_client(tenant, principal))
        return client

    def client_env(self, tenant: str, directory: Path, principal: str = "app") -> dict[str, str]:
        """The environment of an `hsm` command run as a tenant principal: HSM_* variables
        naming a certificate and key written to directory."""
        cert, private_key = self.pki.tenant_client(tenant, principal)
        (directory / "cert.pem").write_bytes(cert)
        (directory / "key.pem").write_bytes(private_key)
        return dict(
            os.environ,
            HSM_ENDPOINT=self.endpoint,
            HSM_CA_CERT=str(self.pki.ca_cert),
            HSM_CLIENT_CERT=str(directory / "cert.pem"),
            HSM_CLIENT_KEY=str(directory / "key.pem"),
        )

    def admin(self) -> AdminClient:
        admin: AdminClient = self.connect(self.pki.operator_client(), AdminClient)
        return admin

    def create_tenant(self, name: str) -> None:
        with self.admin() as admin:
            admin.create_tenant(name)

    def token_objects(self, tenant: str, *object_ids: bytes) -> list[dict[str, Any]]:
        """The tenant token's objects and their attributes, read by a separate process."""
        objects: list[dict[str, Any]] = json.loads(self.probe(tenant, "list", *object_ids))
        return objects

    def daemon_token_objects(self) -> list[dict[str, Any]]:
        """The objects of the daemon's own token (its checkpoint key), read by another process."""
        pin = PinDeriver(self.master_secret).daemon_user_pin()
        objects: list[dict[str, Any]] = json.loads(self._run_probe("hsmd:daemon", pin, "list", ()))
        return objects

    def probe(self, tenant: str, action: str, *object_ids: bytes) -> bytes:
        """Runs tests/token_probe.py on the tenant's token (stop the daemon first to change it)."""
        pin = PinDeriver(self.master_secret).user_pin(tenant)
        return self._run_probe(f"hsmd/{tenant}", pin, action, object_ids)

    def _run_probe(self, label: str, pin: str, action: str, object_ids: tuple[bytes, ...]) -> bytes:
        env = dict(os.environ, SOFTHSM2_CONF=str(self.softhsm_conf))
        env["HSMD_TEST_PIN"] = pin
        result = subprocess.run(
            [sys.executable, str(_PROBE), str(SOFTHSM_LIB), label, action]
            + [object_id.hex() for object_id in object_ids],
            env=env,
            capture_output=True,
            check=True,
        )
        return result.stdout

    def advance_clock(self, by: timedelta) -> None:
        """Moves the daemon's clock (hsmd.clock.OffsetClock reads the file); back if negative."""
        self.clock_offset += by
        self.clock_file.write_text(str(self.clock_offset.total_seconds()))

    def clock_high_water(self) -> datetime | None:
        """The latest time the daemon has stored as acted at (its maintenance passes do)."""
        rows = self.query("SELECT value FROM meta WHERE name = 'clock_high_water'")
        return datetime.fromisoformat(rows[0][0]) if rows else None

    def wait_for_maintenance(self) -> None:
        """Waits for a maintenance pass that ends after this call (each stores the clock)."""

        def recorded() -> list[tuple[Any, ...]]:
            return self.query("SELECT value FROM meta WHERE name = 'clock_recorded_at'")

        before = recorded()
        self.wait_for(lambda: recorded() != before)

    def wait_for(self, condition: Any, timeout: float = 30.0) -> None:
        """Polls until condition() is true, for what the daemon does on its own schedule."""
        wait_until(condition, str(condition), timeout, interval=0.1)

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with closing(sqlite3.connect(self.database)) as db, db:
            return db.execute(sql, args).fetchall()


def _running(pid: int) -> bool:
    """Whether the process exists and is not a zombie (an orphan's zombie waits for whoever
    reaps for PID 1, which in a container may be nobody)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def wait_until(
    condition: Callable[[], object], what: str, timeout: float = 60.0, interval: float = 0.01
) -> None:
    """Polls until condition() is true; fails naming `what` after a generous timeout."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(interval)


def serving(directory: Path, pki: TestPki, tenants: Sequence[str]) -> Iterator[DaemonProcess]:
    """A started daemon with the tenants made, stopped after the last use (a module fixture
    yields from it)."""
    process = DaemonProcess(directory, pki)
    process.start()
    try:
        for tenant in tenants:
            process.create_tenant(tenant)
        yield process
    finally:
        if process.process is not None:
            process.stop()


def _toml(value: int | float | str) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value)


def run_hsmd(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m hsmd ARGS` in a process of its own, with its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "hsmd", *args], capture_output=True, text=True, timeout=120
    )


_FS_IOC_SHUTDOWN = 0x8004587D  # _IOR('X', 125, __u32)
_SHUTDOWN_NOLOGFLUSH = 2  # drop what is not yet in the journal: a power cut


class LoopFileSystem:
    """A small ext4 file system in a file, mounted on a loop device: one that can fill up, turn
    read-only or lose power. Needs root and loop devices; tests using it are skipped with the
    reason where the machine has neither."""

    def __init__(self, image: Path, mount_point: Path, size: str) -> None:
        self.image = image
        self.mount_point = mount_point
        subprocess.run(["truncate", "-s", size, str(image)], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
        mount_point.mkdir(exist_ok=True)

    @classmethod
    def mounted(cls, image: Path, mount_point: Path, size: str = "256M") -> LoopFileSystem:
        reason = _no_loop_devices()
        if reason is not None:
            pytest.skip(f"needs a loop-mounted file system: {reason}")
        file_system = cls(image, mount_point, size)
        try:
            file_system.mount()
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"needs a loop-mounted file system: mount failed ({exc})")
        return file_system

    def mount(self, options: str = "loop") -> None:
        subprocess.run(["mount", "-o", options, str(self.image), str(self.mount_point)], check=True)

    def read_only(self, read_only: bool = True) -> None:
        mode = "ro" if read_only else "rw"
        subprocess.run(["mount", "-o", f"remount,{mode}", str(self.mount_point)], check=True)

    def power_cut(self) -> None:
        """Everything not yet durable is lost, as in a power cut (FS_IOC_SHUTDOWN)."""
        descriptor = os.open(self.mount_point, os.O_RDONLY)
        try:
            fcntl.ioctl(descriptor, _FS_IOC_SHUTDOWN, struct.pack("I", _SHUTDOWN_NOLOGFLUSH))
        finally:
            os.close(descriptor)

    def unmount(self, *, lazy: bool = False) -> None:
        subprocess.run(["umount", *(["-l"] if lazy else []), str(self.mount_point)], check=not lazy)


def _no_loop_devices() -> str | None:
    """Why this machine cannot mount a loop device, or None if it can."""
    if os.geteuid() != 0:
        return "not root"
    if not Path("/dev/loop-control").exists():
        return "no loop devices (/dev/loop-control)"
    if shutil.which("mkfs.ext4") is None:
        return "no mkfs.ext4"
    return None
