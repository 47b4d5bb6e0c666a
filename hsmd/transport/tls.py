"""The files of [tls], watched: certificates that rotate and revoke without a restart.

The server certificate and key and the CA bundle are read again when a file changes (a look
every `tls.reload_check_seconds`, and at once on SIGHUP); new connections then use them (gRPC
asks `_fetch` before each handshake), and the certificate verifier trusts the new CAs from the
next call. The CRL of `tls.crl` is read the same way and checked at every call
(hsmd.auth.revocation), so a revoked client's next call fails. A file that does not load (a
key that does not match its certificate, a bundle without a CA, a CRL no CA signed, a file
written half) is refused with a log line, and what is in use stays.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from hsmd.auth.certificates import ClientCertificateVerifier
from hsmd.auth.revocation import Revocations, load_revocations
from hsmd.config import TlsSettings
from hsmd.errors import ConfigError

log = logging.getLogger(__name__)

# The files read together: a server certificate is judged with its key.
_GROUPS = {"ca": ("ca_cert",), "server": ("server_cert", "server_key"), "crl": ("crl",)}
# What tells that a file changed: its identity, size and modification time.
_Stamp = tuple[int, int, int, int] | None


def _stamp(path: Path | None) -> _Stamp:
    if path is None:
        return None
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


class TlsFiles:
    """The server's key and certificate, the CA bundle and the CRL in use, and the files they
    come from. Thread-safe: `check` runs in the watcher thread (or the main thread, on
    SIGHUP), `_fetch` in gRPC's."""

    def __init__(
        self,
        settings: TlsSettings,
        verifier: ClientCertificateVerifier,
        now: Callable[[], datetime],
    ) -> None:
        """Loads every file.

        Raises:
            ConfigError: one does not load (the message names it and says why).
        """
        self._settings = settings
        self._verifier = verifier
        self._now = now
        self._lock = threading.Lock()
        self._pending: grpc.ServerCertificateConfiguration | None = None
        self._checking = threading.Lock()
        self._seen = self._current_stamps()
        self._pair = server_pair(settings)
        self._ca_bundle = settings.ca_cert.read_bytes()
        self.server_not_after = _not_after(self._pair[1])
        self.revocations = self._load_crl()
        verifier.revoke(self.revocations)

    def credentials(self) -> grpc.ServerCredentials:
        """Mutual TLS whose certificate, key and CAs follow the files (the handshake
        requires a client certificate; the guard verifies it again, hsmd.auth.certificates)."""
        return grpc.dynamic_ssl_server_credentials(
            self._configuration(),
            self._fetch,  # type: ignore[arg-type]  # grpc documents None: "no change"
            require_client_authentication=True,
        )

    def check(self) -> None:
        """Reads the files that changed since the last look and puts to use those that load;
        logs (ERROR) and keeps the old for those that do not. One look at a time (the
        watcher's, SIGHUP's). The CA bundle goes first: the server's handshake and the CRL's
        signatures are judged against it. A refused file is not read again until it (or the
        other file of its group) changes."""
        with self._checking:
            stamps = self._current_stamps()

            def changed(group: str) -> bool:
                return any(stamps[name] != self._seen[name] for name in _GROUPS[group])

            trusted = changed("ca") and self._apply("ca", self._reload_ca, stamps)
            if changed("server") or trusted:
                self._apply("server", self._reload_server, stamps)
            if changed("crl") or trusted:
                self._apply("crl", self._reload_revocations, stamps)

    def _apply(self, group: str, reload: Callable[[], None], stamps: dict[str, _Stamp]) -> bool:
        for name in _GROUPS[group]:
            self._seen[name] = stamps[name]  # looked at: used, or refused until it changes
        try:
            reload()
        except ConfigError as exc:
            log.error("tls: the changed file is refused; the one in use stays: %s", exc)
            return False
        except OSError as exc:
            log.error("tls: cannot read %s (%s); the one in use stays", exc.filename, exc.strerror)
            return False
        return True

    def watch(self, interval: float, stop: threading.Event) -> threading.Thread:
        """Looks for changed files every `interval` seconds until `stop` is set."""

        def run() -> None:
            while not stop.wait(interval):
                self.check()

        watcher = threading.Thread(target=run, name="hsmd-tls-files", daemon=True)
        watcher.start()
        return watcher

    def expiry_times(self) -> list[tuple[tuple[str], float]]:
        """When each certificate in use expires, and when the CRL is due to be replaced, as
        POSIX times (the hsmd_certificate_expiry_timestamp_seconds metric)."""
        times = [(("server",), self.server_not_after.timestamp())]
        times += [
            ((f"ca:{anchor.subject.rfc4514_string()}",), anchor.not_valid_after_utc.timestamp())
            for anchor in self._verifier.anchors
        ]
        if self.revocations.next_update is not None:
            times.append((("crl",), self.revocations.next_update.timestamp()))
        return times

    def _reload_ca(self) -> None:
        bundle = self._settings.ca_cert.read_bytes()
        self._verifier.trust(bundle)  # raises ConfigError before anything changed
        with self._lock:
            self._ca_bundle = bundle
            self._pending = self._configuration()  # handshakes trust it too, whatever else
        log.warning("tls: reloaded ca_cert; handshakes and calls trust its CAs")

    def _reload_server(self) -> None:
        pair = server_pair(self._settings)
        with self._lock:
            self._pair = pair
            self._pending = self._configuration()
        self.server_not_after = _not_after(pair[1])
        log.warning("tls: reloaded server_cert and server_key; new connections use them")

    def _reload_revocations(self) -> None:
        self.revocations = self._load_crl()
        self._verifier.revoke(self.revocations)
        log.warning(
            "tls: reloaded the revocation list: %d certificates revoked",
            len(self.revocations.revoked),
        )

    def _load_crl(self) -> Revocations:
        crl = self._settings.crl
        if crl is None:
            return Revocations.none()
        return load_revocations(crl.read_bytes(), self._verifier.anchors, self._now())

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [self._pair], root_certificates=self._ca_bundle
        )

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's question before each handshake: a new configuration, once, or None."""
        with self._lock:
            pending, self._pending = self._pending, None
        return pending

    def _current_stamps(self) -> dict[str, _Stamp]:
        settings = self._settings
        return {
            "server_cert": _stamp(settings.server_cert),
            "server_key": _stamp(settings.server_key),
            "ca_cert": _stamp(settings.ca_cert),
            "crl": _stamp(settings.crl),
        }


def server_pair(settings: TlsSettings) -> tuple[bytes, bytes]:
    """The server's (key, certificate chain) PEM, if the key is the certificate's.

    Raises:
        ConfigError: either cannot be parsed, or they do not match.
        OSError: either cannot be read.
    """
    key_pem, chain_pem = settings.server_key.read_bytes(), settings.server_cert.read_bytes()
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
        certificate = x509.load_pem_x509_certificate(chain_pem)
    except (ValueError, TypeError):
        raise ConfigError(
            "tls.server_key or tls.server_cert cannot be parsed (PEM, key without a password)"
        ) from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    encoding = serialization.Encoding.DER
    if key.public_key().public_bytes(encoding, public) != certificate.public_key().public_bytes(
        encoding, public
    ):
        raise ConfigError("tls.server_key is not the key of tls.server_cert")
    return key_pem, chain_pem


def _not_after(chain_pem: bytes) -> datetime:
    return x509.load_pem_x509_certificate(chain_pem).not_valid_after_utc
