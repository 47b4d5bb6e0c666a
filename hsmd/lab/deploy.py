"""The deployments the isolation lab compares: one multi-tenant instance serving every tenant,
and one single-tenant instance per tenant. The lab starts its own on 127.0.0.1 (a PKI, a master
secret and a token directory each, on local disk), or targets existing ones named in a TOML
file, given their endpoints and certificates (docs/lab.md)."""

from __future__ import annotations

import hashlib
import re
import secrets
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hsmclient import AdminClient, HsmClient
from hsmclient.channel import ConnectionSettings

from hsmd import devpki
from hsmd.config import DEFAULT_PKCS11_LIBRARY
from hsmd.errors import ConfigError

TRUST_DOMAIN = "hsmd.lab"
_RATE_QUOTAS = (
    "symmetric_requests_per_second",
    "asymmetric_requests_per_second",
    "key_generation_requests_per_second",
    "management_requests_per_second",
    "audit_requests_per_second",
)
_LISTENING = re.compile(r"listening on [^ ]+:(\d+)")
_START_SECONDS = 120.0


@dataclass(frozen=True)
class Credentials:
    cert: Path
    key: Path


@dataclass
class Instance:
    """One hsmd instance: how to reach it, the tenants it serves, and (when the lab runs it)
    what only its own deployment shows: its files, its process, its master secret."""

    name: str
    endpoint: str
    ca_cert: Path
    tenants: dict[str, Credentials]
    operator: Credentials | None = None
    directory: Path | None = None  # the state directory, when the lab made it
    process: subprocess.Popen[bytes] | None = None
    master_secret: bytes | None = None
    config_digest: str = ""
    library: str = DEFAULT_PKCS11_LIBRARY

    @property
    def own(self) -> bool:
        """Whether the lab runs it (white-box controls need that)."""
        return self.directory is not None

    def settings(self, who: Credentials) -> ConnectionSettings:
        return ConnectionSettings(self.endpoint, self.ca_cert, who.cert, who.key)

    def client(self, tenant: str, *, retries: bool = True) -> HsmClient:
        return HsmClient(self.settings(self.tenants[tenant]).open_channel(), retries=retries)

    def admin(self) -> AdminClient:
        if self.operator is None:
            raise ConfigError(f"{self.name}: no operator certificate is given")
        return AdminClient(self.settings(self.operator).open_channel())


@dataclass
class Lab:
    """The deployments compared: `multi` serves every tenant, `single[t]` only t."""

    tenants: list[str]
    multi: Instance
    single: dict[str, Instance]

    def instances(self) -> list[Instance]:
        return [self.multi, *self.single.values()]


@contextmanager
def local_lab(directory: Path, tenants: list[str]) -> Iterator[Lab]:
    """Starts the lab's own deployments under directory, and stops them at the end."""
    pki = _Pki(directory / "pki", tenants)
    started: list[Instance] = []
    try:
        multi = _start(directory / "multi", "multi-tenant", pki, tenants, None)
        started.append(multi)
        single = {}
        for tenant in tenants:
            single[tenant] = _start(
                directory / f"single-{tenant}", f"single:{tenant}", pki, [tenant], tenant
            )
            started.append(single[tenant])
        yield Lab(tenants, multi, single)
    finally:
        for instance in started:
            stop(instance)


def stop(instance: Instance) -> None:
    process = instance.process
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def targeted_lab(config_path: Path) -> Lab:
    """Existing deployments, named in a TOML file (docs/lab.md):

        tenants = ["alpha", "beta"]
        [multi]
        endpoint = "hsm.example:7443"
        ca_cert = "ca.pem"
        operator = { cert = "ops.pem", key = "ops-key.pem" }   # optional: the quota control
        [multi.tenants.alpha]
        cert = "alpha.pem"
        key = "alpha-key.pem"
        [single.alpha]   # endpoint, ca_cert, tenants.alpha as above

    Relative paths are relative to the file.

    Raises:
        ConfigError: the file or a field is missing or malformed.
    """
    try:
        doc = tomllib.loads(config_path.read_text())
        base = config_path.parent
        tenants = [str(t) for t in doc["tenants"]]
        multi = _targeted("multi-tenant", doc["multi"], base)
        single = {t: _targeted(f"single:{t}", doc["single"][t], base) for t in tenants}
    except (OSError, KeyError, TypeError, AttributeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{config_path}: not a lab configuration ({exc!r})") from None
    if len(tenants) < 2:
        raise ConfigError(f"{config_path}: tenants must name at least two tenants")
    for tenant in tenants:
        if tenant not in multi.tenants or tenant not in single[tenant].tenants:
            raise ConfigError(
                f"{config_path}: tenant {tenant!r} needs a certificate in [multi.tenants] and"
                f" in [single.{tenant}.tenants]"
            )
    return Lab(tenants, multi, single)


def _targeted(name: str, table: dict[str, Any], base: Path) -> Instance:
    def credentials(entry: dict[str, Any]) -> Credentials:
        return Credentials(base / str(entry["cert"]), base / str(entry["key"]))

    tenants: dict[str, Any] = table["tenants"]
    operator = table.get("operator")
    return Instance(
        name,
        str(table["endpoint"]),
        base / str(table["ca_cert"]),
        {tenant: credentials(entry) for tenant, entry in tenants.items()},
        credentials(operator) if operator is not None else None,
    )


class _Pki:
    """One CA for the lab's deployments: a server certificate, an operator's, and one client
    certificate per tenant (principal "lab")."""

    def __init__(self, directory: Path, tenants: list[str]) -> None:
        directory.mkdir(parents=True)
        now = datetime.now(UTC)
        self.ca = devpki.create_ca("hsmd isolation lab CA", now)
        self.ca_cert = directory / "ca.pem"
        self.ca_cert.write_bytes(self.ca.cert_pem())
        self.server = Credentials(directory / "server.pem", directory / "server-key.pem")
        devpki.issue(self.ca, "localhost", hosts=["localhost", "127.0.0.1"], server=True).write(
            self.server.cert, self.server.key
        )
        self.operator = self._client(
            directory, "operator", devpki.operator_uri(TRUST_DOMAIN, "lab")
        )
        self.tenants = {
            tenant: self._client(directory, tenant, devpki.tenant_uri(TRUST_DOMAIN, tenant, "lab"))
            for tenant in tenants
        }

    def _client(self, directory: Path, name: str, uri: str) -> Credentials:
        made = Credentials(directory / f"{name}.pem", directory / f"{name}-key.pem")
        devpki.issue(self.ca, name, uris=[uri]).write(made.cert, made.key)
        return made


def _start(
    directory: Path, name: str, pki: _Pki, tenants: list[str], dedicated: str | None
) -> Instance:
    """An hsmd instance on a free port of 127.0.0.1, with its tenants made."""
    (directory / "tokens").mkdir(parents=True, mode=0o700)
    secret = secrets.token_bytes(32)
    secret_file = directory / "master.secret"
    secret_file.write_bytes(secret)
    secret_file.chmod(0o600)
    tenancy = f'\n[tenancy]\nmode = "single"\ntenant = "{dedicated}"\n' if dedicated else ""
    config = directory / "hsmd.toml"
    config.write_text(
        '[server]\nlisten = "127.0.0.1:0"\n\n'
        f'[tls]\nca_cert = "{pki.ca_cert}"\nserver_cert = "{pki.server.cert}"\n'
        f'server_key = "{pki.server.key}"\ntrust_domain = "{TRUST_DOMAIN}"\n\n'
        '[pkcs11]\ntoken_dir = "tokens"\n\n'
        '[storage]\ndatabase = "hsmd.db"\nmaster_secret_file = "master.secret"\n'
        # Floods are held by the fair-share scheduler alone: the rate quotas are lifted (the
        # quota control sets its own).
        + "\n[quotas]\n"
        + "".join(f"{quota} = 1000000\n" for quota in _RATE_QUOTAS)
        + tenancy
    )
    log = directory / "hsmd.log"
    with log.open("wb") as output:
        process = subprocess.Popen(  # noqa: S603 (our own interpreter and arguments)
            [sys.executable, "-m", "hsmd", "serve", "--config", str(config)],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    instance = Instance(
        name,
        "",
        pki.ca_cert,
        {tenant: pki.tenants[tenant] for tenant in tenants},
        pki.operator,
        directory,
        process,
        secret,
        _digest(config),
    )
    try:
        instance.endpoint = f"localhost:{_wait_for_port(log, process)}"
        if dedicated is None:
            with instance.admin() as admin:
                for tenant in tenants:
                    admin.create_tenant(tenant)
    except BaseException:
        stop(instance)  # not left running when it cannot be used
        raise
    return instance


def _wait_for_port(log: Path, process: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + _START_SECONDS
    while time.monotonic() < deadline:
        match = _LISTENING.search(log.read_text(errors="replace"))
        if match:
            return int(match.group(1))
        if process.poll() is not None:
            break
        time.sleep(0.05)
    raise ConfigError(f"a lab deployment did not start:\n{log.read_text()[-2000:]}")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
