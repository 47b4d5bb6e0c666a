"""The composition root and the `hsmd` command.

`hsmd serve --config FILE` builds every object from one validated Settings and runs the daemon
(with `[server] processes` above 1, as the coordinator of `hsmd worker` processes, which it
starts itself: hsmd/workers.py);
`hsmd init --dir DIR` makes a complete development set-up (PKI, token directory, master secret,
config, a demo tenant); `hsmd tenant ...` calls a running daemon as an operator, except
`hsmd tenant export|import`, which move a tenant between stopped instances;
`hsmd pki issue ...` issues development client certificates; `hsmd audit verify ...` checks a
copy of an audit log offline, and `hsmd audit reset --config FILE` archives a broken one.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import functools
import logging
import os
import queue
import secrets
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hsmclient import AdminClient, ConfigurationError, HsmError, TenantQuota, TenantQuotas

from hsmd import binding, config, devpki, doctor, lab, metrics, repair, systemd
from hsmd.audit.checkpoint import Checkpointing, CheckpointSigner
from hsmd.audit.errors import AuditBroken
from hsmd.audit.index import index_path_for
from hsmd.audit.log import AuditLog
from hsmd.audit.reset import ResetOutcome, reset_log
from hsmd.audit.verify import VerifyUsageError, report, verify_files
from hsmd.auth.certificates import ClientCertificateVerifier
from hsmd.backend import softhsm_files
from hsmd.backend.lanes import LaneSizes
from hsmd.backend.pins import PinDeriver
from hsmd.backend.pkcs11_backend import Pkcs11Backend
from hsmd.backend.token_transfer import repin_token
from hsmd.clock import GuardedClock, OffsetClock
from hsmd.domain import Clock, SystemClock
from hsmd.errors import ConfigError, HsmdError, InvalidArgument, StartupRefused
from hsmd.keystore.audit_index import SqliteAuditIndex
from hsmd.keystore.sqlite_store import SqliteKeyStore
from hsmd.logs import BatchingLogWriter, JsonFormatter
from hsmd.names import is_valid_principal_name, is_valid_tenant_name, validate_tenant_name
from hsmd.ops import backup
from hsmd.ops.aliases import AliasOps
from hsmd.ops.backup import BackupOps
from hsmd.ops.crypto import CryptoOps
from hsmd.ops.datakeys import DataKeyOps
from hsmd.ops.imports import ImportOps
from hsmd.ops.keys import KeyOps
from hsmd.ops.mac import MacOps
from hsmd.ops.maintenance import Maintenance
from hsmd.ops.policies import PolicyOps
from hsmd.ops.quotas import QuotaOps
from hsmd.ops.reconcile import Reconciler
from hsmd.ops.regions import ReplicationOps
from hsmd.ops.rotation import RotationOps
from hsmd.ops.signing import SigningOps
from hsmd.ops.states import StateOps
from hsmd.ops.tenant_move import MoveRefused, TenantMove
from hsmd.ops.tenants import TenantOps
from hsmd.ops.wrapping import WrappingOps
from hsmd.quotas import FIELD_BOUNDS
from hsmd.relay import RelayClient, RelayedAudit, RelayedMeters, RelayServer, keep_lifeline
from hsmd.scheduler import Scheduler
from hsmd.transport import server as grpc_server
from hsmd.transport.endorsement import RegionIdentity
from hsmd.transport.forward import ForwardedCaller, Forwarder
from hsmd.transport.guard import Admission, RequestGuard
from hsmd.transport.observe import Health, ObservationServer
from hsmd.transport.peers import GrpcPeers
from hsmd.transport.servicer import (
    AdminServicer,
    KeyManagementServicer,
    Operations,
    RegionServicer,
)
from hsmd.transport.tls import TlsFiles
from hsmd.workers import CALLS_SOCKET, RELAY_SOCKET, WORKER_SETTINGS, WorkerPool

log = logging.getLogger("hsmd")

DEV_TRUST_DOMAIN = "hsmd.local"
DEV_LISTEN = "127.0.0.1:7443"
DEV_TENANT = "demo"
DEV_PRINCIPAL = "admin"
DEV_OPERATOR = "ops"
MASTER_SECRET_SIZE = 32


class StateInUse(HsmdError):
    """Another hsmd process is using the same database and token directory."""


def _lock_state(database: Path) -> int:
    """An exclusive lock beside the database, held until its descriptor is closed.

    Two daemons on one state would each repair the other's unfinished work away, and SoftHSM2
    does not see tokens another process creates.
    """
    descriptor = os.open(f"{database}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise StateInUse(f"another hsmd process is using {database}") from None
    return descriptor


@dataclass
class Daemon:
    """Everything the daemon is made of, wired once."""

    settings: config.Settings
    store: SqliteKeyStore
    backend: Pkcs11Backend
    tenants: TenantOps
    reconciler: Reconciler
    operations: Operations
    audit: AuditLog
    quotas: QuotaOps
    state_lock: int
    clock: GuardedClock
    maintenance: Maintenance
    token_dirs: dict[str, Path]  # token serial -> its directory, for log lines
    peers: GrpcPeers | None  # the other regions ([region]); None in no region
    certificates: ClientCertificateVerifier  # callers', and peer regions' endorsements

    @classmethod
    def build(cls, settings: config.Settings) -> Daemon:
        """Wires the objects; takes the state lock so no two processes share a token directory.

        Raises:
            StateInUse: another hsmd process holds this database and its tokens.
            StartupRefused: the database is damaged, the token directory belongs to another
                database, or holds a copied token (see hsmd.repair, softhsm_files).
            AuditBroken: the audit log does not match its checkpoint (start-up must stop).
            ConfigError: tenancy.tenant is not a valid tenant name.
        """
        dedicated = settings.tenancy.dedicated_tenant
        if dedicated is not None and not is_valid_tenant_name(dedicated):
            raise ConfigError("tenancy.tenant must be 1-26 characters of a-z 0-9 -, from a letter")
        state_lock = _lock_state(settings.storage.database)
        system_clock = _clock(settings)
        with contextlib.ExitStack() as undo:  # on any failure, closes what was opened
            undo.callback(os.close, state_lock)
            store = SqliteKeyStore(settings.storage.database)
            undo.callback(store.close)
            _check_integrity(store)
            tokens = _token_files(settings)
            if tokens.directory is not None:
                _bind_token_dir(store, tokens.directory)
            backend = _backend(settings, tokens)
            undo.callback(backend.close)
            index = _audit_index(settings)
            undo.callback(index.close)
            audit = AuditLog(
                settings.storage.audit_log,
                clock=system_clock,  # the audit log records what the clock says, even set back
                checkpoints=_checkpointing(settings, backend.daemon_key()),
                index=index,  # the log closes it from now on
            )
            backend.self_test()  # in the daemon's token, which daemon_key() attached
            undo.pop_all()  # the daemon owns them now; close() releases them
        clock = GuardedClock(system_clock, store.clock_high_water())
        quotas = _quota_ops(store, settings)
        tenants = TenantOps(store, backend, clock, dedicated, forget=quotas.forget)
        region = settings.region
        certificates = _certificates(settings, clock)
        peers = GrpcPeers(region, settings.tls.ca_cert, certificates) if region.name else None
        operations = _operations(store, backend, clock, quotas, audit, tenants, region.name, peers)
        return cls(
            settings=settings,
            store=store,
            backend=backend,
            tenants=tenants,
            reconciler=Reconciler(store, backend, clock),
            operations=operations,
            audit=audit,
            quotas=quotas,
            state_lock=state_lock,
            clock=clock,
            maintenance=Maintenance(
                operations.rotation,
                operations.states,
                operations.imports,
                tenants,
                clock,
                store,
                audit,
                operations.regions,
            ),
            token_dirs=tokens.by_serial,
            peers=peers,
            certificates=certificates,
        )

    def start(self) -> None:
        """Attaches every tenant's token and repairs what an earlier crash left, one tenant at
        a time: a tenant whose token or repair fails is left out, loudly; the others are
        served."""
        for tenant in self.tenants.start():
            where = str(self.token_dirs.get(tenant.token_serial, f"token {tenant.token_label!r}"))
            try:
                repaired = self.reconciler.reconcile(tenant.name, where)
            except Exception:
                log.exception(
                    "tenant %s is not served: start-up repair of %s failed", tenant.name, where
                )
                self.backend.detach_token(tenant.name)
                continue
            log.info(
                "tenant %s ready (rolled back %d, destroyed %d, quarantined %d, unavailable %d,"
                " unreadable %d)",
                tenant.name,
                repaired.rolled_back,
                repaired.destroyed,
                repaired.quarantined,
                repaired.unavailable,
                repaired.unreadable,
            )

    def served_tenants(self) -> dict[str, str]:
        """The tenants whose tokens are open (start() leaves out a tenant it cannot repair),
        with their token serials: what a worker process may serve (hsmd/workers.py)."""
        attached = set(self.backend.attached_tenants())
        return {t.name: t.token_serial for t in self.store.list_tenants() if t.name in attached}

    def close(self) -> None:
        if self.peers is not None:
            self.peers.close()
        self.maintenance.record_clock()
        self.audit.close()
        self.backend.close()
        self.store.close()
        os.close(self.state_lock)


def _quota_ops(store: SqliteKeyStore, settings: config.Settings) -> QuotaOps:
    return QuotaOps(
        store, settings.quotas.defaults, time.monotonic, settings.quotas.audit_period_seconds
    )


def _operations(
    store: SqliteKeyStore,
    backend: Pkcs11Backend,
    clock: GuardedClock,
    quotas: QuotaOps,
    audit: AuditLog | None,
    tenants: TenantOps,
    region: str | None,
    peers: GrpcPeers | None,
) -> Operations:
    """peers: None in a worker process, which forwards every call that reaches a region."""
    crypto = CryptoOps(store, backend)
    limits = quotas.limits
    regions = ReplicationOps(store, backend, clock, region, peers, tenants.admit, limits)
    return Operations(
        keys=KeyOps(store, backend, clock, limits, region),
        crypto=crypto,
        datakeys=DataKeyOps(store, backend, crypto),
        signing=SigningOps(store, backend),
        mac=MacOps(store, backend),
        states=StateOps(store, backend, clock, regions.exclusive),
        rotation=RotationOps(store, backend, clock, regions.rotated, regions.exclusive),
        aliases=AliasOps(store, clock, limits),
        policies=PolicyOps(store),
        wrapping=WrappingOps(store, backend, clock, limits),
        imports=ImportOps(store, backend, clock, limits),
        regions=regions,
        audit=audit,
    )


def _check_integrity(store: SqliteKeyStore) -> None:
    """Raises StartupRefused if SQLite finds the database file damaged: repair decisions made
    from a damaged file could be wrong, so nothing starts until it is restored."""
    problems = store.integrity_problems()
    if problems:
        raise StartupRefused(
            f"the metadata database {store.path} is damaged (PRAGMA integrity_check: "
            f"{'; '.join(problems[:5])}). Restore it from a backup; hsmd changes nothing until"
            " then."
        )


def _bind_token_dir(store: SqliteKeyStore, token_dir: Path) -> None:
    """Checks that the token directory belongs to this database (hsmd.repair.decide_binding)
    and marks it as ours.

    Raises:
        StartupRefused: it belongs to another database, or to the database this one was
            copied from.
    """
    decision = binding.token_dir_binding(store.path, store.database_id(), token_dir)
    if decision.action is repair.Binding.REFUSE:
        raise StartupRefused(f"token directory {token_dir}: {decision.reason}")
    if decision.action is not repair.Binding.KEEP:
        database = store.path.resolve()
        log.warning(
            "token directory %s: %s; marking it as %s's", token_dir, decision.reason, database
        )
        softhsm_files.write_owner_mark(
            token_dir, repair.OwnerMark(store.database_id(), str(database))
        )
    store.bind_token_dir(str(token_dir.resolve()))


def _clock(settings: config.Settings) -> Clock:
    offset_file = settings.lifecycle.clock_offset_file
    return OffsetClock(offset_file) if offset_file else SystemClock()


@dataclass(frozen=True)
class _TokenFiles:
    """Where SoftHSM2 keeps the tokens (None if unknown), the configuration it is to read,
    and each token's directory by serial (for log lines)."""

    directory: Path | None
    softhsm2_conf: Path | None
    by_serial: dict[str, Path]


def _token_files(settings: config.Settings, *, write_conf: bool = True) -> _TokenFiles:
    """Checks the token directory before the library loads it (SoftHSM2 aborts on duplicate
    serials) and writes SoftHSM2's configuration for pkcs11.token_dir (a worker process
    reads the coordinator's: write_conf False).

    Raises:
        StartupRefused: two token directories hold the same serial.
    """
    pkcs11 = settings.pkcs11
    directory = softhsm_files.token_dir_of(pkcs11.token_dir, pkcs11.softhsm2_conf)
    if directory is None:
        log.warning(
            "no SoftHSM2 token directory is known: hsmd cannot bind it to this database or make"
            " its changes durable; the PKCS#11 library must do so itself"
        )
        return _TokenFiles(None, pkcs11.softhsm2_conf, {})
    by_serial = {token.serial: token.directory for token in softhsm_files.scan_tokens(directory)}
    conf = pkcs11.softhsm2_conf
    if pkcs11.token_dir is not None:
        conf = (
            softhsm_files.write_softhsm2_conf(directory)
            if write_conf
            else directory / softhsm_files.GENERATED_CONF
        )
    return _TokenFiles(directory, conf, by_serial)


def _backend(
    settings: config.Settings, tokens: _TokenFiles, *, read_only: bool = False
) -> Pkcs11Backend:
    return Pkcs11Backend(
        settings.pkcs11.library,
        PinDeriver(config.read_master_secret(settings)),
        tokens.softhsm2_conf,
        tokens.directory,
        LaneSizes(settings.pkcs11.fast_sessions, settings.pkcs11.slow_sessions),
        read_only=read_only,
    )


def _audit_index(settings: config.Settings) -> SqliteAuditIndex:
    """The audit log's index, beside it (hsmd/audit/index.py; rebuilt from the log at need)."""
    return SqliteAuditIndex(index_path_for(settings.storage.audit_log))


def _checkpointing(settings: config.Settings, signer: CheckpointSigner) -> Checkpointing:
    """The audit log's checkpoints, signed by the daemon key of the backend."""
    return Checkpointing(
        signer=signer,
        checkpoint_file=settings.audit.checkpoint_file,
        public_key_file=settings.audit.public_key_file,
        every_events=settings.audit.checkpoint_every_events,
        interval_seconds=settings.audit.checkpoint_interval_seconds,
    )


def _maintain(maintenance: Maintenance, interval: float, stop: threading.Event) -> None:
    while maintenance.wait(interval, stop):
        maintenance.run_once()


def serve(settings: config.Settings, config_path: Path, client_env: Path | None) -> int:
    daemon = Daemon.build(settings)
    audit = daemon.audit
    processes = settings.server.processes
    verifier = daemon.certificates
    tls = TlsFiles(settings.tls, verifier, daemon.clock.system.now)
    guard = RequestGuard(
        verifier,
        daemon.tenants.admit,
        audit,
        daemon.clock.system,
        Admission(daemon.quotas.meters, Scheduler(settings.scheduler, time.monotonic)),
        # With workers, this process serves only the calls they forward.
        caller=ForwardedCaller() if processes > 1 else None,
        region=settings.region.name,
    )
    audit.expect_appends(guard.at_work, settings.audit.group_commit_seconds)
    kms = KeyManagementServicer(daemon.operations, daemon.tenants.mode)
    region = settings.region.name
    regions = (
        RegionServicer(
            daemon.operations.regions,
            region,
            RegionIdentity(settings.region, daemon.certificates),
            daemon.tenants.mode,
        )
        if region
        else None
    )
    backups = BackupOps(
        daemon.store,
        daemon.backend,
        audit,
        settings.audit.public_key_file,
        settings.storage.backup_dir,
        daemon.clock,
    )
    admin = AdminServicer(daemon.tenants, daemon.reconciler, audit, daemon.quotas, backups)
    private = _workers_directory(settings) if processes > 1 else None
    if private is None:
        running = grpc_server.bind(settings, guard, kms, admin, tls, region=regions)
    else:
        calls = private / CALLS_SOCKET
        running = grpc_server.bind_internal(settings, guard, kms, admin, str(calls), region=regions)
        calls.chmod(0o600)
    daemon.start()
    daemon.maintenance.run_once()  # catch up on rotations and deletions due while down
    running.start()
    workers = None
    if private is not None:
        try:
            workers = _Workers.start(settings, config_path, private, daemon)
        except BaseException:
            running.stop(0)
            daemon.close()
            shutil.rmtree(private, ignore_errors=True)
            raise
    stop = threading.Event()
    maintainer = threading.Thread(
        target=_maintain,
        args=(daemon.maintenance, settings.lifecycle.check_interval_seconds, stop),
        name="hsmd-maintenance",
        daemon=True,
    )
    maintainer.start()
    tls.watch(settings.tls.reload_check_seconds, stop)
    signals: queue.SimpleQueue[int] = queue.SimpleQueue()  # put() is safe in a signal handler
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda number, _: signals.put(number))
    health = Health({"token backend": daemon.backend.health_problem, "audit log": audit.problem})
    health.follow(running.health, running.health_names)
    health.watch(settings.observability.health_check_seconds, stop)
    metrics.gauges(
        "hsmd_keys",
        "Keys that are not destroyed, by tenant",
        ["tenant"],
        lambda: [((tenant,), count) for tenant, count in daemon.store.key_counts().items()],
    )
    metrics.gauges(
        "hsmd_certificate_expiry_timestamp_seconds",
        "When each certificate in use expires (server, each CA) and the CRL is due (crl)",
        ["certificate"],
        tls.expiry_times,
    )
    observation = _observe(settings, health, 0)
    port = workers.port if workers else running.port
    log.info(
        "listening on %s:%d (mutual TLS%s)",
        settings.server.host,
        port,
        f"; {processes} worker processes" if workers else "",
    )
    if client_env is not None:
        print(
            f"\nhsmd is ready. In another shell:\n"
            f"  source {client_env}\n"
            f"  hsm create-key --description 'my first key'\n"
            f'  hsm encrypt --key-id <KeyId> --plaintext "$(printf hello | base64)"\n'
            f"Stop with Ctrl-C.\n",
            flush=True,
        )
    listening = f"listening on {settings.server.host}:{port}"
    systemd.ready(listening)
    while _next_signal(signals) == signal.SIGHUP:
        systemd.reloading()
        settings = _reload(config_path, settings)
        if daemon.peers is not None:
            daemon.peers.reconfigure(settings.region)
        tls.check()
        if workers is not None:
            workers.pool.signal_all(signal.SIGHUP)
        systemd.ready(listening)
    systemd.stopping()
    health.stopping()
    if workers is not None:
        workers.stop(settings.server.grace_seconds)
    _stop(daemon, running, guard, stop, maintainer)
    if observation is not None:
        observation.close()
    metrics.drop_gauges()
    return 0


def _observe(settings: config.Settings, health: Health, offset: int) -> ObservationServer | None:
    """The metrics and health endpoint of [metrics] listen, if set, on its port plus `offset`
    (each worker process has its own: 1 + its index), or any free port for port 0.

    Raises:
        ConfigError: the address cannot be bound.
    """
    observability = settings.observability
    if observability.metrics_host is None:
        return None
    port = observability.metrics_port + offset if observability.metrics_port else 0
    try:
        server = ObservationServer(observability.metrics_host, port, health)
    except OSError as exc:
        raise ConfigError(
            f"metrics.listen: cannot listen on {observability.metrics_host}:{port} ({exc.strerror})"
        ) from None
    server.start()
    log.info(
        "metrics and health on http://%s:%d/metrics and /healthz",
        observability.metrics_host,
        server.port,
    )
    return server


def _workers_directory(settings: config.Settings) -> Path:
    """Where the coordinator keeps its sockets and the settings its workers start with (mode
    0700): `.<database>.workers` beside the database, made anew at each start (the state
    lock says no other daemon uses it), or a new temporary directory if that path is too long
    for a Unix socket."""
    database = settings.storage.database
    directory = database.parent / f".{database.name}.workers"
    if len(os.fsencode(directory / RELAY_SOCKET)) > _MAX_SOCKET_PATH:
        return Path(tempfile.mkdtemp(prefix="hsmd-workers-"))
    shutil.rmtree(directory, ignore_errors=True)  # a killed coordinator's
    try:
        directory.mkdir(mode=0o700)
    except OSError as exc:
        raise StartupRefused(
            f"cannot make {directory} for the worker processes' sockets ({exc.strerror});"
            " remove what is there"
        ) from None
    return directory


# sockaddr_un holds 108 bytes with the terminating NUL.
_MAX_SOCKET_PATH = 100


def _certificates(settings: config.Settings, clock: GuardedClock) -> ClientCertificateVerifier:
    return ClientCertificateVerifier(
        settings.tls.ca_cert.read_bytes(), settings.tls.trust_domain, clock.system
    )


@dataclass
class _Workers:
    """The coordinator's worker processes (hsmd/workers.py), the relay they use, and the
    private directory (mode 0700) that holds both sockets."""

    pool: WorkerPool
    relay: RelayServer
    directory: Path
    port: int

    @classmethod
    def start(
        cls,
        settings: config.Settings,
        config_path: Path,
        directory: Path,
        daemon: Daemon,
    ) -> _Workers:
        """Raises StartupRefused if a worker does not start (those started are stopped)."""

        # Workers started later (a restart) read the settings this process started with,
        # not a file edited since: copied, with the base its relative paths resolve from.
        snapshot = directory / WORKER_SETTINGS
        snapshot.write_bytes(config_path.read_bytes())

        def command(index: int, port: int) -> list[str]:
            return [
                sys.executable,
                "-m",
                "hsmd",
                "worker",
                f"--config={snapshot}",
                f"--base={config_path.resolve().parent}",
                f"--dir={directory}",
                f"--port={port}",
                f"--index={index}",
            ]

        pool = WorkerPool(command, settings.server.processes)
        relay = RelayServer(
            directory / RELAY_SOCKET,
            daemon.audit,
            daemon.quotas.meters,
            daemon.served_tenants,
            pool.ready,
            # Workers would wait on a relay gone silent: the daemon stops instead.
            failed=lambda: os.kill(os.getpid(), signal.SIGTERM),
        )
        try:
            port = pool.start(settings.server.port)
        except BaseException:
            pool.stop(0)
            relay.close()
            raise
        return cls(pool, relay, directory, port)

    def stop(self, grace_seconds: float) -> None:
        """Stops the workers while this process can still audit their last calls."""
        log.info("stopping %d worker processes", self.pool.count)
        self.pool.stop(grace_seconds)
        self.relay.close()
        shutil.rmtree(self.directory, ignore_errors=True)


def serve_worker(settings: config.Settings, directory: Path, port: int, index: int) -> int:
    """A worker process of a coordinator whose sockets are in directory (hsmd/workers.py):
    serves on port, beside the other workers, until SIGTERM or the coordinator is gone."""
    store = SqliteKeyStore(settings.storage.database, written_elsewhere=True)
    relay = RelayClient(directory / RELAY_SOCKET)
    served = relay.served_tenants()
    backend = _backend(settings, _token_files(settings, write_conf=False), read_only=True)
    for name, serial in list(served.items()):
        try:
            backend.attach_token(name, serial)
        except HsmdError as exc:  # its calls go to the coordinator
            log.error("tenant %s: token not opened in this worker: %s", name, exc)
            del served[name]
    clock = GuardedClock(_clock(settings), store.clock_high_water())
    tenants = TenantOps(store, backend, clock, settings.tenancy.dedicated_tenant)
    operations = _operations(
        store, backend, clock, _quota_ops(store, settings), None, tenants, None, None
    )

    def serves(name: str) -> bool:
        """Whether this worker has the tenant's token open: not if the tenant was made, or
        destroyed and made again, since it started."""
        tenant = tenants.served(name)
        return tenant is not None and served.get(name) == tenant.token_serial

    forwarder = Forwarder(str(directory / CALLS_SOCKET), serves)
    verifier = _certificates(settings, clock)
    tls = TlsFiles(settings.tls, verifier, clock.system.now)
    guard = RequestGuard(
        verifier,
        tenants.admit,
        RelayedAudit(relay),
        clock.system,
        Admission(RelayedMeters(relay), Scheduler(settings.scheduler, time.monotonic)),
        forwarder=forwarder,
    )
    kms = KeyManagementServicer(operations, tenants.mode)
    running = grpc_server.bind(settings, guard, kms, None, tls, port=port, shared=True)
    running.start()
    stop = threading.Event()
    tls.watch(settings.tls.reload_check_seconds, stop)
    health = Health({"token backend": backend.health_problem, "audit log": relay.audit_problem})
    health.follow(running.health, running.health_names)
    health.watch(settings.observability.health_check_seconds, stop)
    observation = _observe(settings, health, 1 + index)
    signals: queue.SimpleQueue[int] = queue.SimpleQueue()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # SIGHUP: the coordinator's
        signal.signal(signum, lambda number, _: signals.put(number))
    keep_lifeline(directory / RELAY_SOCKET, running.port, lambda: signals.put(_COORDINATOR_GONE))
    while (received := _next_signal(signals)) == signal.SIGHUP:
        tls.check()
    health.stopping()
    stop.set()
    # Stopped by the coordinator, the calls in flight get the grace period; with the
    # coordinator gone, none can be audited any more, so the worker stops at once.
    grace = 0.0 if received == _COORDINATOR_GONE else settings.server.grace_seconds
    running.stop(grace)
    guard.drain(grace)
    if observation is not None:
        observation.close()
    backend.close()
    store.close()
    forwarder.close()
    return 0


# What a worker's lifeline puts among its signals when the coordinator is gone.
_COORDINATOR_GONE = -1
# How long the main thread sleeps at most between looks at the signals that arrived.
_SIGNAL_POLL_SECONDS = 0.5


def _next_signal(signals: queue.SimpleQueue[int]) -> int:
    """The next signal the handlers queued. Python runs a handler only in the main thread, when
    it next executes Python code; a signal the kernel gives to another thread (gRPC's, the
    token library's) does not interrupt the main thread's wait, so a wait without a timeout
    left SIGTERM unhandled until some other wake-up (found as a stop that never came, 2 in 40
    starts). The timeout bounds that delay."""
    while True:
        try:
            return signals.get(timeout=_SIGNAL_POLL_SECONDS)
        except queue.Empty:
            continue


def _reload(config_path: Path, running: config.Settings) -> config.Settings:
    """SIGHUP: applies what can change without a restart (the log level); says which other
    changes wait for one. A file that does not load changes nothing."""
    try:
        loaded = config.load(config_path)
    except ConfigError as exc:
        log.error("SIGHUP: %s is not reloaded, the running settings stay: %s", config_path, exc)
        return running
    logging.getLogger().setLevel(loaded.log_level)
    waiting = [
        name
        for name in ("server", "tls", "pkcs11", "storage", "audit", "lifecycle", "tenancy")
        if getattr(loaded, name) != getattr(running, name)
    ]
    # A region's peers change at once (an operator approving or removing a region); its own
    # name and certificate wait for a restart.
    region = loaded.region
    if (region.name, region.client_cert, region.client_key) != (
        running.region.name,
        running.region.client_cert,
        running.region.client_key,
    ):
        waiting.append("region")
        region = running.region
    log.warning(
        "SIGHUP: reloaded %s: log level %s%s",
        config_path,
        loaded.log_level,
        f"; changes to [{'], ['.join(waiting)}] take effect at the next start" if waiting else "",
    )
    return dataclasses.replace(running, log_level=loaded.log_level, region=region)


def _stop(
    daemon: Daemon,
    running: grpc_server.RunningServer,
    guard: RequestGuard,
    stop: threading.Event,
    maintainer: threading.Thread,
) -> None:
    """Stops taking calls, waits for the running ones up to the grace period, then closes the
    audit log, then the token backend, then the store (DESIGN §7).

    A handler still running after the grace period is cancelled (its caller gets CANCELLED or
    UNAVAILABLE); the backend turns away its next token call, and an audit event it still
    writes goes to this process's log as "audit event not durable" (docs/operations.md). The
    process exits once the one token operation in progress, if any, returns.
    """
    grace = daemon.settings.server.grace_seconds
    deadline = time.monotonic() + grace
    log.info("stopping: letting in-flight requests finish (up to %ss)", grace)
    running.stop(grace)
    stop.set()
    still_running = guard.drain(grace)
    if still_running:
        log.warning(
            "%d call(s) still running after the %ss grace period are cancelled; any audit"
            " event they write from now on goes to this log",
            still_running,
            grace,
        )
    daemon.backend.begin_close()
    maintainer.join(timeout=max(0.0, deadline - time.monotonic()))
    daemon.close()
    log.info("stopped")


def init_dev(directory: Path, listen: str = DEV_LISTEN) -> Path:
    """Creates (or reuses) a complete development set-up in directory; returns the config path."""
    directory = directory.resolve()
    pki = directory / "pki"
    now = datetime.now(UTC)
    ca_paths = (pki / "ca.pem", pki / "ca-key.pem")
    if not ca_paths[0].exists():
        devpki.create_ca("hsmd development CA", now).write(*ca_paths)
    ca = devpki.load(*ca_paths)
    if not (pki / "server.pem").exists():
        devpki.issue(ca, "localhost", hosts=["localhost", "127.0.0.1", "::1"], server=True).write(
            pki / "server.pem", pki / "server-key.pem"
        )
    (directory / "tokens").mkdir(mode=0o700, parents=True, exist_ok=True)
    master_secret = directory / "master.secret"
    if not master_secret.exists():
        descriptor = os.open(master_secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as secret_file:
            secret_file.write(secrets.token_bytes(MASTER_SECRET_SIZE))
    config_path = directory / "hsmd.toml"
    if not config_path.exists():
        config_path.write_text(
            f'[server]\nlisten = "{listen}"\n\n'
            f'[tls]\nca_cert = "pki/ca.pem"\nserver_cert = "pki/server.pem"\n'
            f'server_key = "pki/server-key.pem"\ntrust_domain = "{DEV_TRUST_DOMAIN}"\n\n'
            f'[pkcs11]\nlibrary = "{config.DEFAULT_PKCS11_LIBRARY}"\ntoken_dir = "tokens"\n\n'
            '[storage]\ndatabase = "hsmd.db"\nmaster_secret_file = "master.secret"\n\n'
            "# Prometheus metrics and a health check without a client certificate; port 0:\n"
            "# a free one, named in the log at start.\n"
            '[metrics]\nlisten = "127.0.0.1:0"\n'
        )
    settings = config.load(config_path)
    if not (pki / "operator.pem").exists():
        devpki.issue(
            ca,
            DEV_OPERATOR,
            uris=[devpki.operator_uri(settings.tls.trust_domain, DEV_OPERATOR)],
        ).write(pki / "operator.pem", pki / "operator-key.pem")
    daemon = Daemon.build(settings)
    try:
        if not daemon.tenants.exists(DEV_TENANT):
            daemon.tenants.create_tenant(DEV_TENANT)
    finally:
        daemon.close()
    cert, key = issue_client_cert(directory, settings.tls.trust_domain, DEV_TENANT, DEV_PRINCIPAL)
    _write_env(directory / "client.env", settings, cert, key)
    _write_env(directory / "operator.env", settings, pki / "operator.pem", pki / "operator-key.pem")
    return config_path


def issue_client_cert(
    directory: Path, trust_domain: str, tenant: str, principal: str
) -> tuple[Path, Path]:
    """Issues (once) a development certificate for tenant/principal under directory/pki/clients."""
    pki = directory / "pki"
    cert = pki / "clients" / f"{tenant}--{principal}.pem"
    key = pki / "clients" / f"{tenant}--{principal}-key.pem"
    if not cert.exists():
        devpki.issue(
            devpki.load(pki / "ca.pem", pki / "ca-key.pem"),
            f"{principal}@{tenant}",
            uris=[devpki.tenant_uri(trust_domain, tenant, principal)],
        ).write(cert, key)
    return cert, key


def _write_env(path: Path, settings: config.Settings, cert: Path, key: Path) -> None:
    """A file to `source` that lets `hsm` (or `hsmd tenant`) act with this certificate."""
    local = ("127.0.0.1", "::1", "0.0.0.0", "::")  # noqa: S104 (compared, not bound)
    host = "localhost" if settings.server.host in local else settings.server.host
    if ":" in host:
        host = f"[{host}]"
    path.write_text(
        f"export HSM_ENDPOINT={shlex.quote(f'{host}:{settings.server.port}')}\n"
        f"export HSM_CA_CERT={shlex.quote(str(settings.tls.ca_cert))}\n"
        f"export HSM_CLIENT_CERT={shlex.quote(str(cert))}\n"
        f"export HSM_CLIENT_KEY={shlex.quote(str(key))}\n"
        f"export PATH={shlex.quote(str(Path(sys.executable).parent))}:$PATH\n"
    )


def _admin_command(args: argparse.Namespace) -> int:
    """Operator commands go through the running daemon: only it may change tokens it serves."""
    try:
        with AdminClient.from_env() as admin:
            if args.command == "tenant":
                _tenant_command(admin, args)
            else:
                _quarantine_command(admin, args)
    except (HsmError, ConfigurationError) as exc:
        print(f"hsmd: {exc}", file=sys.stderr)  # a ResourceExhaustedError names its delay
        return 1
    return 0


def _backup() -> int:
    try:
        with AdminClient.from_env() as admin:
            made = admin.backup()
    except (HsmError, ConfigurationError) as exc:
        print(f"hsmd: {exc}", file=sys.stderr)
        return 1
    print(
        f"backup: {made.directory}\n{made.files} files, {made.bytes:,} bytes, {made.tokens}"
        f" tokens, audit events up to {made.audit_sequence}; the master secret is not in it"
    )
    return 0


# The files SQLite keeps beside a database: a stale one would be replayed onto a restored one.
_SQLITE_SIDE = ("", "-wal", "-shm", "-journal")


def _restore(source: Path, config_path: Path) -> int:
    """`hsmd restore`: the snapshot's files, checked, into the config's empty state.

    Raises:
        StartupRefused: the target is not empty or in use, or the master secret is not the
            one the snapshot's tokens need.
        DataLoss: the snapshot is not whole (hsmd.ops.backup.check_snapshot).
    """
    settings = config.load(config_path)
    manifest = backup.check_snapshot(source)
    storage, token_dir = settings.storage, _token_files(settings, write_conf=False).directory
    if token_dir is None:
        raise StartupRefused("pkcs11.token_dir (or a SoftHSM2 configuration naming one) is needed")
    database_files = [storage.database.with_name(storage.database.name + s) for s in _SQLITE_SIDE]
    occupied = [
        str(path)
        for path in (*database_files, storage.audit_log, settings.audit.checkpoint_file)
        if path.exists()
    ] + [str(entry) for entry in token_dir.iterdir() if entry.is_dir()]
    if occupied:
        raise StartupRefused(
            "restore needs an empty state; these exist: "
            + ", ".join(occupied)
            + ". Restore into a new directory, or move them away with the daemon stopped."
        )
    state_lock = _lock_state(storage.database)  # refuses while a daemon holds this state
    try:
        secret = PinDeriver(storage.master_secret_file.read_bytes()).fingerprint()
        if secret != manifest["master_secret_fingerprint"]:
            raise StartupRefused(
                f"{storage.master_secret_file} is not the master secret of this snapshot's"
                " tokens; give the config the secret the backed-up daemon used"
            )
        for name in manifest["tokens"]:
            softhsm_files.copy_token(source / backup.TOKENS / name, token_dir / name)
        shutil.copyfile(source / backup.AUDIT_LOG, storage.audit_log)
        storage.audit_log.chmod(0o600)
        for name, target in (
            (backup.CHECKPOINT, settings.audit.checkpoint_file),
            (backup.PUBLIC_KEY, settings.audit.public_key_file),
        ):
            if (source / name).exists():
                shutil.copyfile(source / name, target)
        # The database last, under its name only once whole: a restore cut short leaves
        # none, and the next restore (after the target is emptied) starts over.
        arriving = storage.database.with_name(storage.database.name + ".restoring")
        shutil.copyfile(source / backup.DATABASE, arriving)
        arriving.chmod(0o600)
        os.replace(arriving, storage.database)
        softhsm_files.sync_directory(storage.database.parent)
    finally:
        os.close(state_lock)
    print(
        f"restored {source} ({manifest['created']}, audit events up to"
        f" {manifest['audit']['sequence']}) into the state of {config_path}; start the daemon"
    )
    return 0


def _tenant_command(admin: AdminClient, args: argparse.Namespace) -> None:
    command = args.tenant_command
    if command == "quota":
        _quota_command(admin, args)
    elif command == "create":
        tenant = admin.create_tenant(args.name)
        print(
            f"created tenant {tenant.name}"
            f" (token {tenant.token_label}, serial {tenant.token_serial})"
        )
    elif command == "list":
        for tenant in admin.list_tenants():
            usage = tenant.usage
            used = (
                f"\tkeys {usage.keys}/{tenant.quota.max_keys}"
                f" aliases {usage.aliases}/{tenant.quota.max_aliases}"
                f" imports {usage.pending_imports}/{tenant.quota.max_pending_imports}"
                f" audit {usage.audit_bytes}/{tenant.quota.audit_bytes_per_period}B"
                if usage is not None and tenant.quota is not None
                else ""
            )
            print(
                f"{tenant.name}\t{tenant.state}\t{_when(tenant.deletion_time)}"
                f"\t{tenant.token_label}\t{tenant.token_serial}{used}"
            )
    elif command == "delete":
        tenant = admin.delete_tenant(args.name, args.pending_window_days)
        print(f"tenant {tenant.name} will be destroyed at {_when(tenant.deletion_time)}")
    else:
        change = {
            "disable": admin.disable_tenant,
            "enable": admin.enable_tenant,
            "cancel-deletion": admin.cancel_tenant_deletion,
        }[command]
        tenant = change(args.name)
        print(f"tenant {tenant.name} is {tenant.state}")


def _when(moment: datetime | None) -> str:
    return moment.isoformat(timespec="seconds") if moment else "-"


def _quota_command(admin: AdminClient, args: argparse.Namespace) -> None:
    """`hsmd tenant quota get|set`: prints each quota, marking those set for the tenant."""
    if args.quota_command == "get":
        quotas = admin.get_tenant_quota(args.name)
    else:
        fields = {name: getattr(args, name) for name in FIELD_BOUNDS}
        quotas = admin.set_tenant_quota(args.name, TenantQuota(**fields))
    _print_quotas(quotas)


def _print_quotas(quotas: TenantQuotas) -> None:
    for name in FIELD_BOUNDS:
        own = getattr(quotas.overrides, name) is not None
        print(f"{name}\t{getattr(quotas.effective, name):g}\t{'set' if own else 'default'}")


def _quarantine_command(admin: AdminClient, args: argparse.Namespace) -> None:
    if args.quarantine_command == "list":
        for entry in admin.iter_quarantined_objects(args.tenant):
            found = entry.found_time.isoformat(timespec="seconds")
            print(f"{entry.tenant}\t{entry.object_id}\t{found}\t{entry.reason}")
    elif args.quarantine_command == "destroy":
        admin.destroy_quarantined_object(args.tenant, args.object_id)
        print(f"destroyed object {args.object_id} in tenant {args.tenant}")
    else:
        key = admin.adopt_quarantined_object(args.tenant, args.object_id, args.key_id, args.version)
        print(
            f"object {args.object_id} is now version {args.version} of key {key.key_id}"
            f" ({key.key_state})"
        )


# --- Moving a tenant between stopped instances: `hsmd tenant export|import` ---------------------

MOVE_COMMANDS = ("export", "import")


def _add_move_commands(tenant_commands: Any) -> None:
    move = "the daemon using --config must be stopped; see docs/operations.md"
    export = tenant_commands.add_parser(
        "export",
        help="write a tenant's token and metadata to a bundle (daemon stopped)",
        description=f"Writes a bundle to move the tenant to another instance; {move}.",
    )
    export.add_argument("--config", type=Path, required=True, help="the source's TOML settings")
    export.add_argument("--tenant", required=True)
    export.add_argument("--out", type=Path, required=True, help="the bundle directory to make")
    export.add_argument(
        "--transfer-secret",
        type=Path,
        required=True,
        help="the file to make for the bundle's one-time secret: send it apart from the bundle",
    )
    load = tenant_commands.add_parser(
        "import",
        help="add a tenant from a bundle, keys keeping their ids (daemon stopped)",
        description=f"Verifies the bundle, then adds its tenant; {move}.",
    )
    load.add_argument("--config", type=Path, required=True, help="the destination's settings")
    load.add_argument("--bundle", type=Path, required=True, help="the bundle directory")
    load.add_argument(
        "--transfer-secret", type=Path, required=True, help="the secret file the export made"
    )


def _move_command(args: argparse.Namespace) -> int:
    """Takes the state lock (refused while the daemon runs), checks the token directory belongs
    to the database as start-up does, then exports or imports (hsmd.ops.tenant_move)."""
    settings = config.load(args.config)
    state_lock = _lock_state(settings.storage.database)
    try:
        store = SqliteKeyStore(settings.storage.database)
        try:
            _check_integrity(store)
            tokens = _token_files(settings)
            if tokens.directory is None:
                raise MoveRefused("moving a tenant needs a SoftHSM2 token directory (pkcs11)")
            _bind_token_dir(store, tokens.directory)
            move = TenantMove(
                store,
                tokens.directory,
                PinDeriver(config.read_master_secret(settings)),
                functools.partial(repin_token, settings.pkcs11.library),
                _clock(settings),
                settings.tenancy.dedicated_tenant,
            )
            if args.tenant_command == "export":
                moved = move.export(args.tenant, args.out, args.transfer_secret)
                done = f"exported to {args.out}; the transfer secret is {args.transfer_secret}"
            else:
                moved = move.import_bundle(args.bundle, args.transfer_secret)
                done = f"imported from {args.bundle}"
        finally:
            store.close()
    finally:
        os.close(state_lock)
    print(
        f"tenant {moved.tenant} (token serial {moved.token_serial}, {moved.keys} keys,"
        f" {moved.aliases} aliases) {done}"
    )
    return 0


# --- end of tenant moves -----------------------------------------------------------------------


def _audit_verify(args: argparse.Namespace) -> int:
    """Verifies a copy of a log offline: 0 if all is well, 1 for any problem or finding, 2 if
    it cannot run (a file cannot be read, the key is not a key)."""
    try:
        result = verify_files(args.log, args.checkpoint, args.public_key)
    except VerifyUsageError as exc:
        print(f"hsmd: {exc}", file=sys.stderr)
        return 2
    print(report(result, str(args.log)), end="")
    return 0 if result.all_well else 1


def _audit_reset(config_path: Path) -> int:
    """Archives the audit log and its checkpoint files and starts a new chain; the daemon
    must be stopped (the state lock says so)."""
    settings = config.load(config_path)
    state_lock = _lock_state(settings.storage.database)
    try:
        backend = _backend(settings, _token_files(settings))
        index = _audit_index(settings)
        try:
            outcome = reset_log(
                settings.storage.audit_log,
                _checkpointing(settings, backend.daemon_key()),
                _clock(settings),
                index,
            )
        finally:
            index.close()
            backend.close()
    finally:
        os.close(state_lock)
    print(_reset_report(settings.storage.audit_log, outcome), end="")
    return 0


def _reset_report(log_path: Path, outcome: ResetOutcome) -> str:
    lines = []
    result = outcome.verification
    if result is None:
        lines.append(f"there was no audit log at {log_path}")
    elif result.valid:
        lines.append(f"the audit log verified ({result.events_checked} lines); archived anyway")
    else:
        where = f"line {result.first_broken_position}: " if result.first_broken_position else ""
        lines.append(f"the audit log is broken: {where}{result.problem}")
    lines.extend(f"archived {source} as {target}" for source, target in outcome.archived)
    if outcome.reset is not None:
        reset = outcome.reset
        lines.append(
            f"new log {log_path}: line 1 continues from {reset.archived_log}, whose last "
            f"verified line is {reset.archived_sequence} (hash {reset.archived_hash})"
        )
    else:
        lines.append(f"new log {log_path}: empty")
    if outcome.checkpoint is not None:
        lines.append(f"signed by the checkpoint at line {outcome.checkpoint.sequence}")
    lines.append("start the daemon again")
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hsmd", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="run the daemon")
    run.add_argument("--config", type=Path, required=True, help="the TOML settings file")
    worker = commands.add_parser(
        "worker", help="a worker process of `hsmd serve` (started by it: [server] processes)"
    )
    worker.add_argument("--config", type=Path, required=True)
    worker.add_argument("--base", type=Path, required=True, help="where relative paths start")
    worker.add_argument("--dir", type=Path, required=True, help="the coordinator's sockets")
    worker.add_argument("--port", type=int, required=True)
    worker.add_argument("--index", type=int, required=True)
    init = commands.add_parser("init", help="create or reuse a development set-up")
    init.add_argument("--dir", type=Path, default=Path("var"))
    init.add_argument(
        "--listen", default=DEV_LISTEN, help="HOST:PORT for a new set-up (default %(default)s)"
    )
    tenant = commands.add_parser(
        "tenant",
        help="manage tenants of a running daemon (operator credentials from HSM_* variables),"
        " or move one between stopped instances (export, import)",
    )
    tenant_commands = tenant.add_subparsers(dest="tenant_command", required=True)
    create = tenant_commands.add_parser("create", help="create a tenant and its token")
    create.add_argument("name")
    tenant_commands.add_parser(
        "list",
        help="list tenants: name, state, deletion time, token label and serial, usage of quotas",
    )
    for command, what in (
        ("disable", "refuse every call of the tenant's principals; keys untouched"),
        ("enable", "serve a disabled tenant again"),
        ("delete", "destroy the tenant, its token and every key, after a waiting period"),
        ("cancel-deletion", "keep a tenant pending deletion (it becomes DISABLED)"),
    ):
        change = tenant_commands.add_parser(command, help=what)
        change.add_argument("name")
        if command == "delete":
            change.add_argument(
                "--pending-window-days",
                type=int,
                help="7-30 days before it is destroyed (default 30)",
            )
    _add_move_commands(tenant_commands)
    quota = tenant_commands.add_parser("quota", help="a tenant's quotas (rates and limits)")
    quota_commands = quota.add_subparsers(dest="quota_command", required=True)
    quota_get = quota_commands.add_parser("get", help="show what applies and what is set")
    quota_get.add_argument("name")
    quota_set = quota_commands.add_parser(
        "set",
        help="set the quotas given for the tenant; the others follow the daemon's defaults",
        description="Replaces the tenant's quota overrides with the options given: a quota"
        " not named follows the config file's [quotas] (no option: all the defaults again).",
    )
    quota_set.add_argument("name")
    for field, (low, high) in FIELD_BOUNDS.items():
        rate = field.endswith("_per_second")
        quota_set.add_argument(
            f"--{field.replace('_', '-')}",
            dest=field,
            type=float if rate else int,
            help=f"{low:g}-{high:g}",
        )
    quarantine = commands.add_parser(
        "quarantine",
        help="token objects that start-up repair kept aside (operator credentials from HSM_*)",
    )
    quarantine_commands = quarantine.add_subparsers(dest="quarantine_command", required=True)
    listing = quarantine_commands.add_parser("list", help="list quarantined objects")
    listing.add_argument("--tenant", help="only this tenant's")
    destroy = quarantine_commands.add_parser("destroy", help="destroy a quarantined object")
    destroy.add_argument("tenant")
    destroy.add_argument(
        "object_id", help="the object's CKA_ID in hex, as listed ('' for an object with none)"
    )
    adopt = quarantine_commands.add_parser(
        "adopt", help="make a quarantined object the object of a key version that lost its own"
    )
    adopt.add_argument("tenant")
    adopt.add_argument("object_id", help="the object's CKA_ID in hex, as listed")
    adopt.add_argument("--key-id", required=True)
    adopt.add_argument("--version", type=int, required=True)
    pki = commands.add_parser("pki", help="development certificates")
    pki_commands = pki.add_subparsers(dest="pki_command", required=True)
    issue = pki_commands.add_parser(
        "issue", help="issue a client certificate for a tenant principal"
    )
    issue.add_argument("--tenant", required=True)
    issue.add_argument("--principal", required=True)
    issue.add_argument("--dir", type=Path, default=Path("var"))
    audit = commands.add_parser("audit", help="check or archive the audit log")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    check = audit_commands.add_parser(
        "verify",
        help="verify a copy of an audit log offline (no daemon, no token)",
        description="Walks the hash chain, checks every checkpoint's signature, and compares "
        "the log with the checkpoint file. Exit 0 if all is well, 1 for any problem or "
        "finding (a broken chain, a bad signature, a cut or rewritten log, time going "
        "backwards), 2 if it cannot run.",
    )
    check.add_argument("--log", type=Path, required=True, help="the audit log (a copy)")
    check.add_argument(
        "--checkpoint",
        type=Path,
        help="the checkpoint file; without it, lines cut from the log's end are not detected",
    )
    check.add_argument(
        "--public-key", type=Path, required=True, help="the daemon's checkpoint key, PEM"
    )
    reset = audit_commands.add_parser(
        "reset",
        help="archive the audit log and its checkpoint files, and start a new chain "
        "(daemon stopped)",
    )
    reset.add_argument("--config", type=Path, required=True, help="the daemon's TOML settings")
    lab_parser = commands.add_parser("lab", help="measure how isolated tenants are")
    lab_commands = lab_parser.add_subparsers(dest="lab_command", required=True)
    isolation = lab_commands.add_parser(
        "isolation",
        help="compare a multi-tenant instance with single-tenant ones and write a report",
        description="Runs the isolation controls (docs/lab.md) against the lab's own"
        " deployments on 127.0.0.1, or against those --targets names, and writes report.md,"
        " report.html, plots and raw data into --out. Exit 0 if no control failed.",
    )
    isolation.add_argument("--out", type=Path, required=True, help="the report directory")
    isolation.add_argument(
        "--quick", action="store_true", help="about two minutes instead of about fifteen"
    )
    isolation.add_argument(
        "--targets", type=Path, help="a TOML file naming existing deployments (docs/lab.md)"
    )
    doctor_parser = commands.add_parser(
        "doctor",
        help="look over a deployment (config, file modes, certificates, tokens, quarantine,"
        " free space) and say what is wrong and how to fix it; changes nothing",
    )
    doctor_parser.add_argument(
        "--config", type=Path, required=True, help="the daemon's TOML settings"
    )
    commands.add_parser(
        "backup",
        help="have the running daemon write a consistent snapshot of its state (operator"
        " certificate: HSM_* variables)",
    )
    restore = commands.add_parser(
        "restore",
        help="bring a snapshot back into the empty state of a config (daemon stopped)",
        description="Checks every file of the snapshot against its manifest and that the"
        " config's master secret is the one the snapshot's tokens need, then copies the"
        " database, the tokens and the audit files to where the config says. Refuses a"
        " target that holds a database, tokens or an audit log.",
    )
    restore.add_argument("--from", dest="source", type=Path, required=True, help="the snapshot")
    restore.add_argument("--config", type=Path, required=True, help="the daemon's TOML settings")
    return parser


_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _skip_unlogged_record_fields() -> None:
    """_LOG_FORMAT shows no source line, thread or process: the logging HOWTO's optimisations
    stop every record from looking them up (a frame walk and three calls per access line)."""
    logging._srcfile = None  # the HOWTO's documented switch
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=_LOG_FORMAT, stream=sys.stderr)
    try:
        if args.command in ("serve", "worker"):
            settings = config.load(args.config, getattr(args, "base", None))
            logging.getLogger().setLevel(settings.log_level)
            _skip_unlogged_record_fields()
            log_format = _LOG_FORMAT
            if args.command == "worker":
                log_format = log_format.replace("%(name)s", f"worker-{args.index} %(name)s")
            formatter: logging.Formatter = logging.Formatter(log_format)
            if settings.observability.log_format == "json":
                formatter = JsonFormatter(args.index if args.command == "worker" else None)
            writer = BatchingLogWriter(sys.stderr, formatter)
            writer.start()
            try:
                if args.command == "worker":
                    return serve_worker(settings, args.dir, args.port, args.index)
                client_env = args.config.parent / "client.env"
                return serve(settings, args.config, client_env if client_env.exists() else None)
            finally:
                writer.close()
        if args.command == "init":
            path = init_dev(args.dir, args.listen)
            print(f"development set-up ready: {path}")
            return 0
        if args.command == "tenant" and args.tenant_command in MOVE_COMMANDS:
            return _move_command(args)
        if args.command == "lab":
            return lab.run(args.out, quick=args.quick, targets=args.targets)
        if args.command == "doctor":
            findings = doctor.examine(args.config, SystemClock())
            print("\n".join(str(finding) for finding in findings))
            return 1 if any(finding.level == doctor.PROBLEM for finding in findings) else 0
        if args.command == "backup":
            return _backup()
        if args.command == "restore":
            return _restore(args.source, args.config)
        if args.command in ("tenant", "quarantine"):
            return _admin_command(args)
        if args.command == "audit":
            if args.audit_command == "verify":
                return _audit_verify(args)
            return _audit_reset(args.config)
        validate_tenant_name(args.tenant)
        if not is_valid_principal_name(args.principal):
            raise InvalidArgument("principal must be 1-128 characters of A-Z a-z 0-9 . _ @ -")
        directory = args.dir.resolve()
        trust_domain = config.load(directory / "hsmd.toml").tls.trust_domain
        cert, key = issue_client_cert(directory, trust_domain, args.tenant, args.principal)
        print(f"certificate: {cert}\nprivate key: {key}")
        return 0
    except ConfigError as exc:
        print(f"hsmd: configuration error: {exc}", file=sys.stderr)
        return 2
    except AuditBroken as exc:
        print(f"hsmd: {exc}", file=sys.stderr)
        if args.command == "serve":
            print(
                f"hsmd: to archive the audit files and start a new chain: "
                f"hsmd audit reset --config {args.config}",
                file=sys.stderr,
            )
        return 1
    except HsmdError as exc:
        print(f"hsmd: {exc}", file=sys.stderr)
        return 1
