"""Opening a mutual-TLS gRPC channel to hsmd, from arguments or from HSM_* environment variables.

The daemon knows a caller only by its client certificate, so a channel without one is useless:
this module makes the certificate a required part of every connection.
"""

import os
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

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "ConnectionSettings":
        """Read the HSM_* variables; an empty variable counts as missing.

        Raises:
            ConfigurationError: a required variable is missing; the error names it.
        """

        def required(field: str) -> str:
            variable = cls.VARIABLES[field]
            value = environ.get(variable)
            if not value:
                raise ConfigurationError(variable, f"{variable} is not set")
            return value

        return cls(
            endpoint=required("endpoint"),
            ca_cert_path=Path(required("ca_cert_path")),
            client_cert_path=Path(required("client_cert_path")),
            client_key_path=Path(required("client_key_path")),
            server_name=environ.get(cls.VARIABLES["server_name"]) or None,
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
