"""Settings: one frozen, validated object built once from a TOML file.

Relative paths in the file are relative to the file's own directory. Every error names the
field, so an operator can fix the file without reading code. Secrets are never in the file:
it names the master-secret file, whose permissions must be 0600.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hsmd.domain import is_valid_region_name
from hsmd.errors import ConfigError
from hsmd.quotas import FIELD_BOUNDS, QuotaLimits
from hsmd.scheduler import SchedulerLimits

DEFAULT_PKCS11_LIBRARY = "/usr/lib/softhsm/libsofthsm2.so"
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_LOG_FORMATS = ("text", "json")
TENANCY_MULTI = "multi"
TENANCY_SINGLE = "single"


@dataclass(frozen=True)
class ServerSettings:
    host: str
    port: int
    workers: int
    grace_seconds: float
    max_concurrent_rpcs: int
    max_connection_age_seconds: float
    max_connections: int = 1000
    handshake_timeout_seconds: float = 5.0
    idle_timeout_seconds: float = 300.0
    max_streams_per_connection: int = 100
    processes: int = 1


@dataclass(frozen=True)
class TlsSettings:
    """crl: a file of certificate revocation lists (PEM or DER), or None. The files are looked
    at every reload_check_seconds, and changed ones used without a restart (hsmd.transport.tls)."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    trust_domain: str
    crl: Path | None = None
    reload_check_seconds: float = 5.0


@dataclass(frozen=True)
class Pkcs11Settings:
    """token_dir: SoftHSM2's token directory (hsmd writes SoftHSM2's configuration for it);
    softhsm2_conf: a SoftHSM2 configuration file of the operator's. At most one of them.
    fast_sessions, slow_sessions: PKCS#11 sessions per tenant in each lane (docs/concurrency.md)."""

    library: Path
    softhsm2_conf: Path | None
    token_dir: Path | None = None
    fast_sessions: int = 2
    slow_sessions: int = 1


@dataclass(frozen=True)
class StorageSettings:
    """backup_dir: where AdminService.Backup writes its snapshots (hsmd/ops/backup.py);
    by default `backups` beside the database."""

    database: Path
    master_secret_file: Path
    audit_log: Path
    backup_dir: Path


@dataclass(frozen=True)
class AuditSettings:
    """Signed checkpoints of the audit log (hsmd/audit/checkpoint.py), and how long the
    first of concurrent calls waits for the others' events so that one fsync covers them
    (AuditLog.expect_appends)."""

    checkpoint_every_events: int
    checkpoint_interval_seconds: float
    checkpoint_file: Path
    public_key_file: Path
    group_commit_seconds: float


@dataclass(frozen=True)
class LifecycleSettings:
    check_interval_seconds: float
    clock_offset_file: Path | None


@dataclass(frozen=True)
class TenancySettings:
    """mode "multi" (the default) serves every tenant operators create; "single" serves
    `tenant` alone (created at start if missing) and refuses every other identity."""

    mode: str
    tenant: str | None = None

    @property
    def dedicated_tenant(self) -> str | None:
        """The one tenant a single-tenant instance serves; None for a shared instance."""
        return self.tenant if self.mode == TENANCY_SINGLE else None


@dataclass(frozen=True)
class QuotaSettings:
    """Every tenant's quotas unless SetTenantQuota overrides them, and the length of the
    period the audit volume is counted over."""

    defaults: QuotaLimits
    audit_period_seconds: float


@dataclass(frozen=True)
class ObservabilitySettings:
    """metrics_host, metrics_port: where the Prometheus and plain health endpoint listens
    (hsmd/transport/observe.py), or None: nowhere. log_format: "text" or "json" (one object a
    line). health_check_seconds: how often the token backend and the audit log are checked."""

    metrics_host: str | None = None
    metrics_port: int = 0
    log_format: str = "text"
    health_check_seconds: float = 5.0


@dataclass(frozen=True)
class RegionSettings:
    """This instance's region and the peer regions it trusts (multi-region keys, docs/regions
    .md). name None: the instance is in no region and makes no multi-region keys. peers maps
    a peer's region name to its HOST:PORT; a peer is trusted as the holder of a certificate
    of the trust domain naming spiffe://<trust-domain>/region/<name>, and the instance calls
    peers with client_cert, which names its own region the same way."""

    name: str | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    peers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    call_timeout_seconds: float = 10.0


@dataclass(frozen=True)
class Settings:
    server: ServerSettings
    tls: TlsSettings
    pkcs11: Pkcs11Settings
    storage: StorageSettings
    lifecycle: LifecycleSettings
    log_level: str
    audit: AuditSettings
    quotas: QuotaSettings
    scheduler: SchedulerLimits
    tenancy: TenancySettings = TenancySettings(TENANCY_MULTI)
    observability: ObservabilitySettings = ObservabilitySettings()
    region: RegionSettings = RegionSettings()


class _Section:
    """Reads one table of the file, checking types and refusing unknown fields."""

    def __init__(self, doc: Mapping[str, Any], name: str, base: Path) -> None:
        table = doc.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"[{name}] must be a table")
        self._table: dict[str, Any] = table
        self._name = name
        self._base = base
        self._read: set[str] = set()

    def _get(self, field: str, kind: type, default: Any) -> Any:
        self._read.add(field)
        value = self._table.get(field, default)
        if value is None:
            raise ConfigError(f"{self._name}.{field} is required")
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
            raise ConfigError(f"{self._name}.{field} must be a {kind.__name__}")
        return value

    def string(self, field: str, default: str | None = None) -> str:
        value: str = self._get(field, str, default)
        if not value:
            raise ConfigError(f"{self._name}.{field} must not be empty")
        return value

    def integer(self, field: str, default: int, low: int, high: int) -> int:
        value: int = self._get(field, int, default)
        if not low <= value <= high:
            raise ConfigError(f"{self._name}.{field} must be between {low} and {high}")
        return value

    def number(self, field: str, default: float, low: float, high: float) -> float:
        value: float = self._get(field, float, default)
        if not low <= value <= high:
            raise ConfigError(f"{self._name}.{field} must be between {low} and {high}")
        return value

    def path(self, field: str, default: str | None = None, *, must_exist: bool = True) -> Path:
        path = self._base / self.string(field, default)
        if must_exist and not path.exists():
            raise ConfigError(f"{self._name}.{field}: {path} does not exist")
        return path

    def optional_path(self, field: str, *, must_exist: bool = True) -> Path | None:
        if field not in self._table:
            self._read.add(field)
            return None
        return self.path(field, must_exist=must_exist)

    def table(self, field: str) -> dict[str, Any]:
        """An optional sub-table, {} if absent."""
        value: dict[str, Any] = self._get(field, dict, {})
        return value

    def __contains__(self, field: str) -> bool:
        return field in self._table

    def done(self) -> None:
        unknown = sorted(set(self._table) - self._read)
        if unknown:
            raise ConfigError(f"[{self._name}] has unknown field(s): {', '.join(unknown)}")


def load(path: Path, base: Path | None = None) -> Settings:
    """Reads and validates the settings file; relative paths in it are relative to base
    (default: its directory). Raises ConfigError naming the bad field."""
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    return parse(doc, (base or path.parent).resolve())


def parse(doc: Mapping[str, Any], base: Path) -> Settings:
    known = {
        "server",
        "tls",
        "pkcs11",
        "storage",
        "lifecycle",
        "log",
        "audit",
        "tenancy",
        "metrics",
        "region",
    }
    unknown = sorted(set(doc) - known - {"quotas", "scheduler"})
    if unknown:
        raise ConfigError(f"unknown table(s): {', '.join(unknown)}")

    server = _Section(doc, "server", base)
    host, _, port = server.string("listen", "127.0.0.1:8443").rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError("server.listen must be HOST:PORT with a port from 0 to 65535")
    server_settings = ServerSettings(
        host=host.strip("[]"),
        port=int(port),
        workers=server.integer("workers", DEFAULT_WORKERS, 1, 256),
        grace_seconds=server.number("grace_seconds", 10.0, 0.0, 600.0),
        max_concurrent_rpcs=server.integer("max_concurrent_rpcs", 1000, 1, 100_000),
        max_connection_age_seconds=server.number(
            "max_connection_age_seconds", 3600.0, 1.0, 86400.0
        ),
        max_connections=server.integer("max_connections", 1000, 1, 100_000),
        handshake_timeout_seconds=server.number("handshake_timeout_seconds", 5.0, 0.1, 120.0),
        idle_timeout_seconds=server.number("idle_timeout_seconds", 300.0, 1.0, 86400.0),
        max_streams_per_connection=server.integer("max_streams_per_connection", 100, 1, 10_000),
        processes=server.integer("processes", 1, 1, 64),
    )
    server.done()

    tls = _Section(doc, "tls", base)
    tls_settings = TlsSettings(
        ca_cert=tls.path("ca_cert"),
        server_cert=tls.path("server_cert"),
        server_key=tls.path("server_key"),
        trust_domain=tls.string("trust_domain", "hsmd.local"),
        crl=tls.optional_path("crl"),
        reload_check_seconds=tls.number("reload_check_seconds", 5.0, 0.1, 3600.0),
    )
    tls.done()

    pkcs11 = _Section(doc, "pkcs11", base)
    pkcs11_settings = Pkcs11Settings(
        library=pkcs11.path("library", DEFAULT_PKCS11_LIBRARY),
        softhsm2_conf=pkcs11.optional_path("softhsm2_conf"),
        token_dir=pkcs11.optional_path("token_dir"),
        fast_sessions=pkcs11.integer("fast_sessions", 2, 1, 64),
        slow_sessions=pkcs11.integer("slow_sessions", 1, 1, 64),
    )
    pkcs11.done()
    if pkcs11_settings.softhsm2_conf and pkcs11_settings.token_dir:
        raise ConfigError("pkcs11.token_dir and pkcs11.softhsm2_conf exclude each other")

    storage = _Section(doc, "storage", base)
    database = storage.path("database", "hsmd.db", must_exist=False)
    storage_settings = StorageSettings(
        database=database,
        master_secret_file=storage.path("master_secret_file"),
        audit_log=storage.path("audit_log", "audit.jsonl", must_exist=False),
        backup_dir=storage.optional_path("backup_dir", must_exist=False)
        or database.parent / "backups",
    )
    storage.done()
    _check_private(storage_settings.master_secret_file, "storage.master_secret_file")

    audit = _Section(doc, "audit", base)
    log_file = storage_settings.audit_log
    audit_settings = AuditSettings(
        checkpoint_every_events=audit.integer("checkpoint_every_events", 1000, 1, 1_000_000),
        checkpoint_interval_seconds=audit.number(
            "checkpoint_interval_seconds", 60.0, 0.05, 86400.0
        ),
        checkpoint_file=audit.optional_path("checkpoint_file", must_exist=False)
        or log_file.with_name(log_file.name + ".checkpoint"),
        public_key_file=audit.optional_path("public_key_file", must_exist=False)
        or log_file.with_name(log_file.name + ".pub.pem"),
        group_commit_seconds=audit.number("group_commit_ms", 2.0, 0.0, 100.0) / 1000,
    )
    audit.done()
    files = {
        "storage.audit_log": log_file,
        "audit.checkpoint_file": audit_settings.checkpoint_file,
        "audit.public_key_file": audit_settings.public_key_file,
    }
    if len({path.resolve() for path in files.values()}) != len(files):
        raise ConfigError(
            "storage.audit_log, audit.checkpoint_file and audit.public_key_file must be "
            "three different files"
        )

    lifecycle = _Section(doc, "lifecycle", base)
    lifecycle_settings = LifecycleSettings(
        check_interval_seconds=lifecycle.number("check_interval_seconds", 60.0, 0.05, 86400.0),
        clock_offset_file=lifecycle.optional_path("clock_offset_file", must_exist=False),
    )
    lifecycle.done()

    log = _Section(doc, "log", base)
    level = log.string("level", "INFO").upper()
    if level not in _LOG_LEVELS:
        raise ConfigError(f"log.level must be one of {', '.join(_LOG_LEVELS)}")
    log_format = log.string("format", "text")
    if log_format not in _LOG_FORMATS:
        raise ConfigError(f'log.format must be "{_LOG_FORMATS[0]}" or "{_LOG_FORMATS[1]}"')
    log.done()
    observability = _observability(_Section(doc, "metrics", base), log_format)

    tenancy = _tenancy(_Section(doc, "tenancy", base))
    return Settings(
        server_settings,
        tls_settings,
        pkcs11_settings,
        storage_settings,
        lifecycle_settings,
        level,
        audit_settings,
        _quotas(_Section(doc, "quotas", base)),
        _scheduler(
            _Section(doc, "scheduler", base),
            server_settings.workers,
            pkcs11_settings.fast_sessions + pkcs11_settings.slow_sessions,
            dedicated=tenancy.dedicated_tenant is not None,
        ),
        tenancy=tenancy,
        observability=observability,
        region=_region(_Section(doc, "region", base)),
    )


def _observability(section: _Section, log_format: str) -> ObservabilitySettings:
    listen = section.string("listen") if "listen" in section else None
    health_check_seconds = section.number("health_check_seconds", 5.0, 0.1, 3600.0)
    section.done()
    if listen is None:
        return ObservabilitySettings(
            log_format=log_format, health_check_seconds=health_check_seconds
        )
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError("metrics.listen must be HOST:PORT with a port from 0 to 65535")
    return ObservabilitySettings(host.strip("[]"), int(port), log_format, health_check_seconds)


def _region(section: _Section) -> RegionSettings:
    if "name" not in section:
        section.done()
        return RegionSettings()
    name = section.string("name")
    if not is_valid_region_name(name):
        raise ConfigError("region.name must be 1-32 characters of a-z 0-9 -, from a letter")
    peers: dict[str, str] = section.table("peers")
    for peer, address in peers.items():
        if not is_valid_region_name(peer) or peer == name:
            raise ConfigError(f"region.peers: {peer[:40]!r} is not another region's name")
        host, _, port = address.rpartition(":") if isinstance(address, str) else ("", "", "")
        if not host or not port.isdigit() or not 0 < int(port) <= 65535:
            raise ConfigError(f"region.peers.{peer} must be HOST:PORT")
    settings = RegionSettings(
        name=name,
        client_cert=section.path("client_cert"),
        client_key=section.path("client_key"),
        peers=peers,
        call_timeout_seconds=section.number("call_timeout_seconds", 10.0, 0.1, 600.0),
    )
    section.done()
    return settings


def _tenancy(section: _Section) -> TenancySettings:
    mode = section.string("mode", TENANCY_MULTI)
    if mode not in (TENANCY_MULTI, TENANCY_SINGLE):
        raise ConfigError(f'tenancy.mode must be "{TENANCY_MULTI}" or "{TENANCY_SINGLE}"')
    tenant = section.string("tenant") if "tenant" in section else None
    section.done()
    if mode == TENANCY_SINGLE and tenant is None:
        raise ConfigError('tenancy.tenant is required when tenancy.mode is "single"')
    if mode == TENANCY_MULTI and tenant is not None:
        raise ConfigError('tenancy.tenant is only for tenancy.mode = "single"')
    return TenancySettings(mode, tenant)  # the name is checked by hsmd.names at start


def _quotas(section: _Section) -> QuotaSettings:
    defaults = QuotaLimits()
    values: dict[str, Any] = {}
    for name, (low, high) in FIELD_BOUNDS.items():
        default = getattr(defaults, name)
        if isinstance(default, float):
            values[name] = section.number(name, default, low, high)
        else:
            values[name] = section.integer(name, default, int(low), int(high))
    settings = QuotaSettings(
        QuotaLimits(**values), section.number("audit_period_seconds", 3600.0, 1.0, 31 * 86400.0)
    )
    section.done()
    return settings


# A call holds its worker thread while it waits for a scheduler slot, and a tenant may have
# workers - 2 calls running or waiting: 64 lets a client keep 32 calls in flight without
# refusals (a waiting thread costs no CPU, only its stack).
DEFAULT_WORKERS = 64

# Worker threads the scheduler leaves free: to take, and admit or refuse at once, a call of
# a tenant whose calls are not yet waiting (and health checks), however full the rest is.
SPARE_WORKERS = 2


def _scheduler(
    section: _Section, workers: int, sessions_per_tenant: int, *, dedicated: bool
) -> SchedulerLimits:
    """The scheduler's limits; by default its running and waiting calls fill the thread pool
    but for SPARE_WORKERS threads (docs/operations.md#scheduler). A slot is a share of the
    daemon's CPU (a call holds it through its durable audit event): three by default, which
    a lone tenant fills (one call computes while another waits for the disk); more only
    lets a flooding tenant crowd the others (docs/concurrency.md, "Through the daemon").
    On a shared instance one tenant runs at most as many calls as its token has sessions,
    and leaves one slot free for the next call of another; a dedicated one has no other."""
    capacity = section.integer("capacity", max(1, min(3, workers - SPARE_WORKERS)), 1, 256)
    waiting_room = section.integer(
        "waiting_room", max(0, workers - capacity - SPARE_WORKERS), 0, 256
    )
    if workers > SPARE_WORKERS and capacity + waiting_room > workers - SPARE_WORKERS:
        raise ConfigError(
            f"scheduler.capacity + scheduler.waiting_room must leave {SPARE_WORKERS} of"
            f" server.workers ({workers}) free"
        )
    reserved = 0 if dedicated else 1
    limits = SchedulerLimits(
        capacity=capacity,
        # Half the slots, rounded up, but below capacity (when there are two or more), so a
        # fast call never waits for a slow one to finish, or is refused behind it.
        slow_capacity=section.integer(
            "slow_capacity", max(1, (capacity + 1) // 2), 1, max(1, capacity - 1)
        ),
        calls_per_tenant=section.integer(
            "calls_per_tenant", capacity + waiting_room, 1, capacity + waiting_room
        ),
        waiting_room=waiting_room,
        # A third of the client's default timeout (30 s): refused well before it times out.
        max_wait=section.number("max_wait_seconds", 10.0, 0.0, 600.0),
        running_per_tenant=min(sessions_per_tenant, max(1, capacity - reserved)),
    )
    section.done()
    return limits


def _check_private(path: Path, field: str) -> None:
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        raise ConfigError(f"{field}: {path} must not be readable by others (chmod 600)")


def read_master_secret(settings: Settings) -> bytes:
    secret = settings.storage.master_secret_file.read_bytes()
    if len(secret) < 32:
        raise ConfigError("storage.master_secret_file must hold at least 32 bytes")
    return secret
