"""The gRPC server: mutual TLS with a pinned CA, the guard, health and reflection, graceful stop.

`bind` takes the port before the daemon repairs its state, so a second daemon on the same
address fails before it touches anything; `RunningServer.start` then begins serving.
"""

from __future__ import annotations

import logging
import resource
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from hsmd.config import Settings
from hsmd.errors import ConfigError
from hsmd.transport.forward import FORWARDED_METADATA_OPTIONS, MAX_MESSAGE
from hsmd.transport.guard import RequestGuard
from hsmd.transport.servicer import AdminServicer, KeyManagementServicer, RegionServicer
from hsmd.transport.tls import TlsFiles
from hsmd.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    region_pb2,
    region_pb2_grpc,
    service_pb2,
    service_pb2_grpc,
)

log = logging.getLogger(__name__)

# File descriptors kept for everything but connections: token object files, the database,
# the audit log and its index, the log, gRPC's own pipes.
_RESERVED_DESCRIPTORS = 256


@dataclass
class RunningServer:
    server: grpc.Server
    health: health.HealthServicer
    health_names: list[str]
    port: int

    def start(self) -> None:
        self.server.start()
        for name in self.health_names:
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace_seconds: float) -> None:
        """Refuses new calls at once and cancels those still running after grace_seconds.
        Returns at once: the caller waits for its handlers (RequestGuard.drain), since gRPC
        can cancel a call but not stop the thread running its handler."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace_seconds)


def _connection_limits(settings: Settings) -> list[tuple[str, int]]:
    """gRPC options that keep connections from exhausting the process: a cap on open
    connections (counted from accept, so connections still in their TLS handshake count), a
    short handshake, idle connections closed, and a cap on calls per connection.

    The cap must leave file descriptors for tokens, the database and the logs, or a flood of
    connections that never start TLS would make every new file fail: the soft RLIMIT_NOFILE is
    raised to the hard one, and the cap lowered (with a warning) to fit under it.
    """
    server = settings.server
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    connections = server.max_connections
    if soft != resource.RLIM_INFINITY and connections > soft - _RESERVED_DESCRIPTORS:
        connections = max(1, soft - _RESERVED_DESCRIPTORS)
        log.warning(
            "server.max_connections %d does not fit the open-file limit %d (less %d for files);"
            " %d connections at most",
            server.max_connections,
            soft,
            _RESERVED_DESCRIPTORS,
            connections,
        )
    return [
        ("grpc.max_allowed_incoming_connections", connections),
        ("grpc.server_handshake_timeout_ms", int(server.handshake_timeout_seconds * 1000)),
        ("grpc.max_connection_idle_ms", int(server.idle_timeout_seconds * 1000)),
        ("grpc.max_concurrent_streams", server.max_streams_per_connection),
    ]


def bind(
    settings: Settings,
    guard: RequestGuard,
    kms: KeyManagementServicer,
    admin: AdminServicer | None,
    tls: TlsFiles,
    *,
    port: int | None = None,
    shared: bool = False,
    region: RegionServicer | None = None,
) -> RunningServer:
    """The public server on server.listen (or on `port` of its host), with the certificates of
    `tls`. shared: other processes of this daemon listen on the same port (SO_REUSEPORT,
    hsmd/workers.py); otherwise the port is this process's alone, so a stray second daemon
    cannot take half its calls."""
    server, health_servicer, names = _server(
        settings,
        guard,
        kms,
        admin,
        region,
        [
            ("grpc.so_reuseport", int(shared)),
            # A new server certificate or CA bundle counts from a connection's handshake: bound
            # how long one connection lasts (revocation is checked at every call).
            ("grpc.max_connection_age_ms", int(settings.server.max_connection_age_seconds * 1000)),
            ("grpc.max_connection_age_grace_ms", 30_000),
            *_connection_limits(settings),
        ],
    )
    # The handshake alone is not enough (docs/security.md#authentication): the guard verifies
    # every client certificate again with hsmd.auth.certificates.
    credentials = tls.credentials()
    host, port = settings.server.host, settings.server.port if port is None else port
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_secure_port(address, credentials)
    except RuntimeError as exc:  # grpcio's only signal that the address is taken or invalid
        raise ConfigError(f"server.listen: cannot listen on {address}") from exc
    return RunningServer(server, health_servicer, names, bound)


def bind_internal(
    settings: Settings,
    guard: RequestGuard,
    kms: KeyManagementServicer,
    admin: AdminServicer,
    socket_path: str,
    region: RegionServicer | None = None,
) -> RunningServer:
    """The coordinator's server for the calls its workers forward (hsmd/transport/forward.py):
    a Unix socket in a directory only the daemon's user can enter, without TLS (the workers
    pass on what their handshakes showed, and this guard verifies it)."""
    server, health_servicer, names = _server(
        settings, guard, kms, admin, region, FORWARDED_METADATA_OPTIONS
    )
    server.add_insecure_port(f"unix:{socket_path}")
    return RunningServer(server, health_servicer, names, 0)


def _server(
    settings: Settings,
    guard: RequestGuard,
    kms: KeyManagementServicer,
    admin: AdminServicer | None,
    region: RegionServicer | None,
    options: list[tuple[str, int]],
) -> tuple[grpc.Server, health.HealthServicer, list[str]]:
    """admin, region: None in a worker process, which forwards those calls (and region None
    in an instance that is in no region)."""
    server = grpc.server(
        futures.ThreadPoolExecutor(
            max_workers=settings.server.workers, thread_name_prefix="hsmd-rpc"
        ),
        interceptors=[guard],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
            *options,
        ],
        maximum_concurrent_rpcs=settings.server.max_concurrent_rpcs,
    )
    service_pb2_grpc.add_KeyManagementServiceServicer_to_server(kms, server)
    if admin is not None:  # a worker forwards every operator call (hsmd/transport/forward.py)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(admin, server)
    if region is not None:
        region_pb2_grpc.add_RegionServiceServicer_to_server(region, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    services = [
        service_pb2.DESCRIPTOR.services_by_name["KeyManagementService"].full_name,
        admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
    ]
    if settings.region.name is not None:  # served here, or forwarded by a worker
        services.append(region_pb2.DESCRIPTOR.services_by_name["RegionService"].full_name)
    names = [*services, health.SERVICE_NAME, reflection.SERVICE_NAME, _REFLECTION_V1]
    reflection.enable_server_reflection(names, server)
    server.add_generic_rpc_handlers((_reflection_v1(names),))
    return server, health_servicer, ["", *services]


# grpcio-reflection serves v1alpha only; v1 (what grpcurl and current tools ask first) has the
# same messages, field for field, under another package: the same servicer answers it.
_REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def _reflection_v1(names: list[str]) -> grpc.GenericRpcHandler:
    servicer = reflection.ReflectionServicer(names)
    return grpc.method_handlers_generic_handler(
        _REFLECTION_V1,
        {
            "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                servicer.ServerReflectionInfo,
                request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
            )
        },
    )
