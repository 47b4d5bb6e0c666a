"""Opening a mutual-TLS gRPC channel to hsmd, from arguments, HSM_* environment variables or a
profile in the client's configuration file.

The daemon knows a caller only by its client certificate, so a channel without one is useless:
this module makes the certificate a required part of every connection.

Profiles work as the AWS CLI's do: `~/.config/hsm/config.toml` (or `$XDG_CONFIG_HOME/hsm/...`,
or the file `HSM_CONFIG_FILE` names) holds a `[default]` table and `[profile.NAME]` tables of
`endpoint`, `ca_cert`, `cert`, `key` and `server_name`; `HSM_PROFILE` (or `hsm --profile`)
picks one. An HSM_* variable overrides the profile, and a command-line option the variable.
Paths in the file are relative to its directory; `~` is expanded.
"""

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import grpc

from hsmclient.errors import ConfigurationError

# The daemon caps messages at the same size; larger data goes through envelope encryption.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024

_CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # Notice a dead peer (NAT timeout, crashed host) during a long call. Not more often, and
    # never on an idle connection: a gRPC server by default answers pings sent without data
    # more often than every 5 minutes with GOAWAY.
    ("grpc.keepalive_time_ms", 300_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 0),
)


def secure_channel(
    endpoint: str,
    ca_cert: bytes,
    client_cert: bytes,
    client_key: bytes,
    server_name: str | None = None,
) -> grpc.Channel:
    """Open a channel that trusts only `ca_cert` and presents the client certificate.

    `server_name` is the name the server certificate must carry when `endpoint` is an address
    or a name that the certificate does not list.
    """
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca_cert, private_key=client_key, certificate_chain=client_cert
    )
    options: list[tuple[str, str | int]] = list(_CHANNEL_OPTIONS)
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.secure_channel(endpoint, credentials, options=options)


@dataclass(frozen=True)
class ConnectionSettings:
    """Where the daemon is and which PEM files prove who we are."""

    endpoint: str
    ca_cert_path: Path
    client_cert_path: Path
    client_key_path: Path
    server_name: str | None = None

    # The environment variable that sets each field.
    VARIABLES: ClassVar[Mapping[str, str]] = {
        "endpoint": "HSM_ENDPOINT",
        "ca_cert_path": "HSM_CA_CERT",
        "client_cert_path": "HSM_CLIENT_CERT",
        "client_key_path": "HSM_CLIENT_KEY",
        "server_name": "HSM_SERVER_NAME",
    }
    # The profile key that sets each field.
    PROFILE_KEYS: ClassVar[Mapping[str, str]] = {
        "endpoint": "endpoint",
        "ca_cert_path": "ca_cert",
        "client_cert_path": "cert",
        "client_key_path": "key",
        "server_name": "server_name",
    }

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "ConnectionSettings":
        """Read the HSM_* variables, and the profile (see the module) for those not set; an
        empty variable counts as missing.

        Raises:
            ConfigurationError: a required setting is missing, a profile named is not in the
                file, or the file is not valid; the error names the variable.
        """
        profile = _profile(environ)

        def setting(field: str) -> str | None:
            value = environ.get(cls.VARIABLES[field]) or profile.get(field)
            return value or None

        def required(field: str) -> str:
            value = setting(field)
            if value is None:
                variable = cls.VARIABLES[field]
                raise ConfigurationError(variable, f"{variable} is not set (nor in a profile)")
            return value

        return cls(
            endpoint=required("endpoint"),
            ca_cert_path=Path(required("ca_cert_path")),
            client_cert_path=Path(required("client_cert_path")),
            client_key_path=Path(required("client_key_path")),
            server_name=setting("server_name"),
        )

    def open_channel(self) -> grpc.Channel:
        """Read the PEM files and open a secure channel.

        Raises:
            ConfigurationError: a PEM file cannot be read; the error names its variable.
        """
        return secure_channel(
            self.endpoint,
            ca_cert=self._read("ca_cert_path"),
            client_cert=self._read("client_cert_path"),
            client_key=self._read("client_key_path"),
            server_name=self.server_name,
        )

    def _read(self, field: str) -> bytes:
        path: Path = getattr(self, field)
        try:
            return path.read_bytes()
        except OSError as error:
            variable = self.VARIABLES[field]
            message = f"cannot read {path} ({variable}): {error.strerror}"
            raise ConfigurationError(variable, message) from error


PROFILE_VARIABLE = "HSM_PROFILE"
CONFIG_FILE_VARIABLE = "HSM_CONFIG_FILE"


def config_file(environ: Mapping[str, str]) -> Path:
    """The client's configuration file: HSM_CONFIG_FILE, or hsm/config.toml in
    $XDG_CONFIG_HOME (default ~/.config)."""
    named = environ.get(CONFIG_FILE_VARIABLE)
    if named:
        return Path(named).expanduser()
    base = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "hsm" / "config.toml"


def _profile(environ: Mapping[str, str]) -> dict[str, str]:
    """The chosen profile's settings by ConnectionSettings field, paths resolved; empty when
    there is no file and no profile was asked for.

    Raises:
        ConfigurationError: the file is not valid TOML or a setting not a string, or a profile
            asked for by name is not in it.
    """
    name = environ.get(PROFILE_VARIABLE) or "default"
    path = config_file(environ)
    try:
        document = tomllib.loads(path.read_text())
    except FileNotFoundError:
        document = {}
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigurationError(CONFIG_FILE_VARIABLE, f"cannot read {path}: {error}") from None
    profiles = document.get("profile", {})
    table = document.get("default", {}) if name == "default" else profiles.get(name)
    if not isinstance(table, dict):
        message = f"profile {name!r} is not in {path} (a [profile.{name}] table)"
        raise ConfigurationError(PROFILE_VARIABLE, message)
    settings = {}
    for field, key in ConnectionSettings.PROFILE_KEYS.items():
        value = table.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            message = f"{path}: {key} of profile {name!r} must be a string"
            raise ConfigurationError(CONFIG_FILE_VARIABLE, message)
        if field.endswith("_path"):
            value = str(path.parent / Path(value).expanduser())
        settings[field] = value
    return settings
