"""The composition root and the `hsmd` command.

`hsmd serve --config FILE` builds every object from one validated Settings and runs the daemon;
`hsmd init --dir DIR` makes a complete development set-up (PKI, token directory, master secret,
config, a demo tenant); `hsmd tenant ...` calls a running daemon as an operator;
`hsmd pki issue ...` issues development client certificates; `hsmd audit verify ...` checks a
copy of an audit log offline, and `hsmd audit reset --config FILE` archives a broken one.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import secrets
import shlex
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from hsmclient import AdminClient, ConfigurationError, HsmError

from hsmd import config, devpki
from hsmd.audit.checkpoint import Checkpointing, CheckpointSigner
from hsmd.audit.errors import AuditBroken
from hsmd.audit.log import AuditLog
from hsmd.audit.reset import ResetOutcome, reset_log
from hsmd.audit.verify import VerifyUsageError, report, verify_files
from hsmd.backend.pins import PinDeriver
from hsmd.backend.pkcs11_backend import Pkcs11Backend
from hsmd.clock import OffsetClock
from hsmd.domain import Clock, SystemClock
from hsmd.errors import ConfigError, HsmdError, InvalidArgument
from hsmd.keystore.sqlite_store import SqliteKeyStore
from hsmd.names import is_valid_principal_name, validate_tenant_name
from hsmd.ops.aliases import AliasOps
from hsmd.ops.crypto import CryptoOps
from hsmd.ops.datakeys import DataKeyOps
from hsmd.ops.imports import ImportOps
from hsmd.ops.keys import KeyOps
from hsmd.ops.mac import MacOps
from hsmd.ops.maintenance import Maintenance
from hsmd.ops.policies import PolicyOps
from hsmd.ops.rotation import RotationOps
from hsmd.ops.signing import SigningOps
from hsmd.ops.states import StateOps
from hsmd.ops.tenants import TenantOps
from hsmd.ops.wrapping import WrappingOps
from hsmd.transport import server as grpc_server
from hsmd.transport.guard import RequestGuard
from hsmd.transport.servicer import AdminServicer, KeyManagementServicer, Operations

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
    operations: Operations
    state_lock: int
    clock: Clock
    maintenance: Maintenance

    @classmethod
    def build(cls, settings: config.Settings) -> Daemon:
        """Wires the objects; takes the state lock so no two processes share a token directory.

        Raises:
            StateInUse: another hsmd process holds this database and its tokens.
            AuditBroken: the audit log does not match its checkpoint (start-up must stop).
        """
        state_lock = _lock_state(settings.storage.database)
        clock = _clock(settings)
        store = SqliteKeyStore(settings.storage.database)
        backend = _backend(settings)
        try:
            audit = AuditLog(
                settings.storage.audit_log,
                clock=clock,
                checkpoints=_checkpointing(settings, backend.daemon_key()),
            )
        except BaseException:
            backend.close()
            store.close()
            os.close(state_lock)
            raise
        crypto = CryptoOps(store, backend)
        operations = Operations(
            keys=KeyOps(store, backend, clock),
            crypto=crypto,
            datakeys=DataKeyOps(store, backend, crypto),
            signing=SigningOps(store, backend),
            mac=MacOps(store, backend),
            states=StateOps(store, backend, clock),
            rotation=RotationOps(store, backend, clock),
            aliases=AliasOps(store, clock),
            policies=PolicyOps(store),
            wrapping=WrappingOps(store, backend, clock),
            imports=ImportOps(store, backend, clock),
            audit=audit,
        )
        return cls(
            settings=settings,
            store=store,
            backend=backend,
            tenants=TenantOps(store, backend, clock),
            operations=operations,
            state_lock=state_lock,
            clock=clock,
            maintenance=Maintenance(operations.rotation, operations.states, operations.imports),
        )

    def start(self) -> None:
        """Attaches every tenant's token and repairs what an earlier crash left."""
        for tenant in self.tenants.start():
            report = self.operations.keys.reconcile(tenant.name)
            log.info(
                "tenant %s ready (rolled back %d, orphans destroyed %d, unavailable %d)",
                tenant.name,
                report.rolled_back,
                report.orphans_destroyed,
                report.unavailable,
            )

    def close(self) -> None:
        self.operations.audit.close()
        self.backend.close()
        self.store.close()
        os.close(self.state_lock)


def _clock(settings: config.Settings) -> Clock:
    offset_file = settings.lifecycle.clock_offset_file
    return OffsetClock(offset_file) if offset_file else SystemClock()


def _backend(settings: config.Settings) -> Pkcs11Backend:
    return Pkcs11Backend(
        settings.pkcs11.library,
        PinDeriver(config.read_master_secret(settings)),
        settings.pkcs11.softhsm2_conf,
    )


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
    while not stop.wait(interval):
        maintenance.run_once()


def serve(settings: config.Settings, client_env: Path | None) -> int:
    daemon = Daemon.build(settings)
    audit = daemon.operations.audit
    guard = RequestGuard(settings.tls.trust_domain, daemon.tenants.is_served, audit, daemon.clock)
    running = grpc_server.bind(
        settings,
        guard,
        KeyManagementServicer(daemon.operations),
        AdminServicer(daemon.tenants, audit),
    )
    daemon.start()
    daemon.maintenance.run_once()  # catch up on rotations and deletions due while down
    running.start()
    stop = threading.Event()
    maintainer = threading.Thread(
        target=_maintain,
        args=(daemon.maintenance, settings.lifecycle.check_interval_seconds, stop),
        name="hsmd-maintenance",
        daemon=True,
    )
    maintainer.start()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    log.info("listening on %s:%d (mutual TLS)", settings.server.host, running.port)
    if client_env is not None:
        print(
            f"\nhsmd is ready. In another shell:\n"
            f"  source {client_env}\n"
            f"  hsm create-key --description 'my first key'\n"
            f'  hsm encrypt --key-id <KeyId> --plaintext "$(printf hello | base64)"\n'
            f"Stop with Ctrl-C.\n",
            flush=True,
        )
    stop.wait()
    log.info(
        "stopping: letting in-flight requests finish (up to %ss)", settings.server.grace_seconds
    )
    running.stop(settings.server.grace_seconds)
    maintainer.join(timeout=60)  # a pass in progress finishes before the store closes
    daemon.close()
    log.info("stopped")
    return 0


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
    tokens = directory / "tokens"
    tokens.mkdir(parents=True, exist_ok=True)
    softhsm_conf = directory / "softhsm2.conf"
    if not softhsm_conf.exists():
        softhsm_conf.write_text(
            f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
            "slots.removable = false\n"
        )
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
            f'[pkcs11]\nlibrary = "{config.DEFAULT_PKCS11_LIBRARY}"\n'
            'softhsm2_conf = "softhsm2.conf"\n\n'
            '[storage]\ndatabase = "hsmd.db"\nmaster_secret_file = "master.secret"\n'
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
        if not daemon.tenants.is_served(DEV_TENANT):
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


def _tenant_command(args: argparse.Namespace) -> int:
    """Operator commands go through the running daemon: only it may create tokens it serves."""
    try:
        with AdminClient.from_env() as admin:
            if args.tenant_command == "create":
                tenant = admin.create_tenant(args.name)
                print(
                    f"created tenant {tenant.name}"
                    f" (token {tenant.token_label}, serial {tenant.token_serial})"
                )
            else:
                for tenant in admin.list_tenants():
                    print(f"{tenant.name}\t{tenant.token_label}\t{tenant.token_serial}")
    except (HsmError, ConfigurationError) as exc:
        print(f"hsmd: {exc}", file=sys.stderr)
        return 1
    return 0


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
        backend = _backend(settings)
        try:
            outcome = reset_log(
                settings.storage.audit_log,
                _checkpointing(settings, backend.daemon_key()),
                _clock(settings),
            )
        finally:
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
    init = commands.add_parser("init", help="create or reuse a development set-up")
    init.add_argument("--dir", type=Path, default=Path("var"))
    init.add_argument(
        "--listen", default=DEV_LISTEN, help="HOST:PORT for a new set-up (default %(default)s)"
    )
    tenant = commands.add_parser(
        "tenant",
        help="manage tenants of a running daemon (operator credentials from HSM_* variables)",
    )
    tenant_commands = tenant.add_subparsers(dest="tenant_command", required=True)
    create = tenant_commands.add_parser("create", help="create a tenant and its token")
    create.add_argument("name")
    tenant_commands.add_parser("list", help="list tenants")
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        if args.command == "serve":
            settings = config.load(args.config)
            logging.getLogger().setLevel(settings.log_level)
            client_env = args.config.parent / "client.env"
            return serve(settings, client_env if client_env.exists() else None)
        if args.command == "init":
            path = init_dev(args.dir, args.listen)
            print(f"development set-up ready: {path}")
            return 0
        if args.command == "tenant":
            return _tenant_command(args)
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
