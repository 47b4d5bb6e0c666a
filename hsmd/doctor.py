"""`hsmd doctor --config FILE`: looks over a deployment and says what is wrong and how to fix
it, before the daemon (or an operator) finds out the hard way.

It reads, and changes nothing: the config, the modes and owners of the files the daemon needs,
the certificates (expiry, the server's names, chains, the CRL), the token directory (its owner
mark, copied tokens), the quarantine and the free space. It may run beside a running daemon.
Each finding is `ok`, `warning` (works, but act soon) or `PROBLEM` (the daemon will not start,
or is at risk); the exit code is 1 if there is a problem.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from hsmd import binding, config, repair
from hsmd.auth.certificates import ClientCertificateVerifier
from hsmd.auth.revocation import load_revocations
from hsmd.backend import softhsm_files
from hsmd.domain import Clock
from hsmd.errors import ConfigError, HsmdError
from hsmd.keystore.sqlite_store import SqliteKeyStore
from hsmd.transport.tls import server_pair

OK, WARNING, PROBLEM = "ok", "warning", "PROBLEM"
# Certificates that expire sooner than this are a warning.
EXPIRY_WARNING = timedelta(days=30)
# Less free space than this, where the daemon writes, is a warning (the daemon itself refuses
# changes below 1 MiB).
LOW_SPACE_BYTES = 1 << 30


@dataclass(frozen=True)
class Finding:
    level: str
    what: str
    fix: str = ""

    def __str__(self) -> str:
        return f"{self.level:8} {self.what}" + (f"\n         fix: {self.fix}" if self.fix else "")


def examine(config_path: Path, clock: Clock) -> list[Finding]:
    """Every finding about the deployment of this config, in the order a reader fixes them."""
    try:
        settings = config.load(config_path)
    except ConfigError as exc:
        return [Finding(PROBLEM, f"the config does not load: {exc}", "fix the field it names")]
    findings = [Finding(OK, f"the config {config_path} loads")]
    for check in (_files, _certificates, _tokens, _quarantine, _space):
        try:
            findings += check(settings, clock.now())
        except (OSError, HsmdError) as exc:  # one check that cannot finish leaves the others
            findings.append(Finding(PROBLEM, f"{check.__name__[1:]}: cannot check: {exc}"))
    return findings


def _files(settings: config.Settings, now: datetime) -> Iterator[Finding]:
    """Who owns the files the daemon writes or keeps secret, and who else may read them."""
    storage, tls = settings.storage, settings.tls
    me = os.geteuid()
    private = [
        ("storage.master_secret_file", storage.master_secret_file),
        ("tls.server_key", tls.server_key),
    ]
    for field, path in private:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            yield Finding(
                PROBLEM,
                f"{field} {path} can be read by others (mode {mode:04o})",
                f"chmod 600 {path}",
            )
    written = [
        ("storage.database's directory", storage.database.parent),
        ("storage.audit_log's directory", storage.audit_log.parent),
        ("pkcs11.token_dir", _token_dir(settings)),
    ]
    for field, directory in written:
        if directory is None or not directory.exists():
            continue
        owner = directory.stat().st_uid
        if owner != me:
            yield Finding(
                WARNING,
                f"{field} {directory} belongs to uid {owner}, not to uid {me} running this",
                f"run hsmd doctor as the daemon's user, or chown -R that user {directory}",
            )
        elif not os.access(directory, os.W_OK):
            yield Finding(PROBLEM, f"{field} {directory} is not writable", f"chmod u+w {directory}")
    token_dir = _token_dir(settings)
    if token_dir is not None and token_dir.exists():
        mode = stat.S_IMODE(token_dir.stat().st_mode)
        if mode & 0o077:
            yield Finding(
                WARNING,
                f"pkcs11.token_dir {token_dir} can be entered by others (mode {mode:04o});"
                " its files are encrypted under the tenants' PINs, but need no other reader",
                f"chmod 700 {token_dir}",
            )
    yield Finding(OK, "file modes and owners checked")


def _certificates(settings: config.Settings, now: datetime) -> Iterator[Finding]:
    tls = settings.tls
    try:
        verifier = ClientCertificateVerifier(tls.ca_cert.read_bytes(), tls.trust_domain, _Now(now))
    except ConfigError as exc:
        yield Finding(PROBLEM, str(exc), "put your CA certificate(s) in tls.ca_cert")
        return
    for anchor in verifier.anchors:
        yield from _expiry(f"tls.ca_cert {anchor.subject.rfc4514_string()}", anchor, now)
    try:
        _, chain = server_pair(tls)
    except ConfigError as exc:
        yield Finding(PROBLEM, str(exc), "issue the server a certificate for its key")
        return
    server = x509.load_pem_x509_certificate(chain)
    yield from _expiry("tls.server_cert", server, now)
    yield from _server_names(server, settings.server.host)
    issuers = {anchor.subject: anchor for anchor in verifier.anchors}
    issuer = issuers.get(server.issuer)
    if issuer is None:
        yield Finding(
            WARNING,
            f"tls.server_cert's issuer {server.issuer.rfc4514_string()} is not in tls.ca_cert:"
            " clients must trust it on their own",
            "give clients that CA, or issue the server's certificate from the clients' CA",
        )
    else:
        try:
            server.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            yield Finding(
                PROBLEM,
                "tls.server_cert names a CA of tls.ca_cert as issuer, but that CA did not sign it",
                "issue the server's certificate again",
            )
    if tls.crl is not None:
        try:
            revocations = load_revocations(tls.crl.read_bytes(), verifier.anchors, now)
        except ConfigError as exc:
            yield Finding(PROBLEM, str(exc), "publish a CRL signed by a CA of tls.ca_cert")
            return
        due = revocations.next_update
        if due is not None and due < now:
            yield Finding(
                WARNING,
                f"tls.crl was due to be replaced at {due.isoformat()}; it still counts",
                "publish a new CRL (the daemon reads it without a restart)",
            )
        else:
            yield Finding(OK, f"tls.crl: {len(revocations.revoked)} certificates revoked")


def _expiry(what: str, certificate: x509.Certificate, now: datetime) -> Iterator[Finding]:
    ends = certificate.not_valid_after_utc
    if ends < now:
        yield Finding(PROBLEM, f"{what} expired at {ends.isoformat()}", "renew it")
    elif ends - now < EXPIRY_WARNING:
        yield Finding(
            WARNING,
            f"{what} expires in {(ends - now).days} days ({ends.date()})",
            "renew it; the daemon picks up a new file without a restart",
        )
    else:
        yield Finding(OK, f"{what} valid until {ends.date()}")


def _server_names(server: x509.Certificate, host: str) -> Iterator[Finding]:
    """Whether the server's certificate names the address it listens on (when that is one)."""
    try:
        names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        yield Finding(PROBLEM, "tls.server_cert has no subjectAltName", "issue it with the names")
        return
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 (compared, not bound)
        return
    try:
        wanted: object = ipaddress.ip_address(host)
        present = wanted in names.get_values_for_type(x509.IPAddress)
    except ValueError:
        present = host.lower() in (n.lower() for n in names.get_values_for_type(x509.DNSName))
    if not present:
        yield Finding(
            WARNING,
            f"tls.server_cert does not name {host}, the address server.listen gives",
            "issue it with that name, or make sure clients connect by a name it has",
        )


def _tokens(settings: config.Settings, now: datetime) -> Iterator[Finding]:
    token_dir = _token_dir(settings)
    if token_dir is None:
        yield Finding(
            WARNING,
            "no token directory is known: changes to tokens cannot be made durable",
            "set pkcs11.token_dir",
        )
        return
    tokens = softhsm_files.scan_tokens(token_dir)  # raises StartupRefused for a copied token
    bound = SqliteKeyStore.read_binding(settings.storage.database)
    if bound is not None:
        decision = binding.token_dir_binding(settings.storage.database, bound[0], token_dir)
        if decision.action is repair.Binding.REFUSE:
            yield Finding(
                PROBLEM,
                f"pkcs11.token_dir {token_dir}: the daemon will refuse it: {decision.reason}",
                "point the config at the database these tokens belong to, or at its own tokens",
            )
    yield Finding(OK, f"pkcs11.token_dir {token_dir}: {len(tokens)} tokens, no copies")


def _quarantine(settings: config.Settings, now: datetime) -> Iterator[Finding]:
    count = SqliteKeyStore.read_quarantine_count(settings.storage.database)
    if count:
        yield Finding(
            WARNING,
            f"{count} token objects are in quarantine (found in a token, named by no key)",
            "hsmd quarantine list, then destroy or adopt each (docs/operations.md#quarantine)",
        )


def _space(settings: config.Settings, now: datetime) -> Iterator[Finding]:
    places = {
        "pkcs11.token_dir": _token_dir(settings),
        "storage.database": settings.storage.database.parent,
        "storage.audit_log": settings.storage.audit_log.parent,
    }
    for field, directory in places.items():
        if directory is None or not directory.exists():
            continue
        free = shutil.disk_usage(directory).free
        if free < LOW_SPACE_BYTES:
            yield Finding(
                WARNING,
                f"{field}: {free // (1 << 20)} MiB free under {directory}",
                "make room: below 1 MiB the daemon refuses every change",
            )
    yield Finding(OK, "free space checked")


def _token_dir(settings: config.Settings) -> Path | None:
    return softhsm_files.token_dir_of(settings.pkcs11.token_dir, settings.pkcs11.softhsm2_conf)


class _Now:
    """The moment the doctor looks, as the verifier's clock."""

    def __init__(self, now: datetime) -> None:
        self._now = now

    def now(self) -> datetime:
        return self._now
