"""Who the caller is, for the guard, and the calls a worker process passes to the coordinator.

With `[server] processes` above 1 (hsmd/workers.py), worker processes take every connection.
A worker serves itself the calls in SERVED_BY_WORKERS: operations on existing keys that change
no token and no record. Every other call (a key created or changed, any operator call), and a
call of a tenant whose token the worker has not opened (made after the worker started), is
passed as its raw bytes to the coordinator over a Unix socket only the daemon's user can reach,
with the client certificate and chain the TLS handshake presented and the client's address.

The coordinator's guard verifies that certificate exactly as a worker's does (ForwardedCaller
is the only difference): nothing a worker concluded about the caller is trusted, only what the
handshake showed it. The answer, its status, details and trailers (the request id) go back to
the client unchanged; the coordinator has audited the call.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, cast

import grpc

from hsmd.errors import BackendUnavailable
from hsmd.transport.status import to_status

log = logging.getLogger(__name__)

REQUEST_ID_METADATA = "x-request-id"

# Binary metadata: gRPC carries the PEM bytes as they are.
_CERTIFICATE = "x-hsmd-forwarded-cert-bin"
_CHAIN = "x-hsmd-forwarded-chain-bin"
_PEER = "x-hsmd-forwarded-peer"
MAX_MESSAGE = 8 * 1024 * 1024
# A forwarded call carries the client's certificate and chain (at most
# auth.certificates.MAX_PRESENTED_BYTES, 16 KiB) in its metadata: gRPC's default limits
# (8 KiB soft, 16 KiB hard) would refuse a long chain that a single process accepts.
FORWARDED_METADATA_OPTIONS = [
    ("grpc.max_metadata_size", 64 * 1024),
    ("grpc.absolute_max_metadata_size", 64 * 1024),
]

# What a worker serves with its own token sessions: nothing here writes a token or the
# database (the coordinator alone does: docs/concurrency.md "More than one process").
SERVED_BY_WORKERS = frozenset(
    {
        "Encrypt",
        "Decrypt",
        "ReEncrypt",
        "GenerateDataKey",
        "GenerateDataKeyWithoutPlaintext",
        "GenerateRandom",
        "Sign",
        "Verify",
        "GenerateMac",
        "VerifyMac",
        "GetPublicKey",
        "DescribeKey",
        "BatchEncrypt",
        "BatchDecrypt",
        "BatchReEncrypt",
        "BatchGenerateDataKey",
        "BatchSign",
        "BatchVerify",
        "BatchGenerateMac",
        "BatchVerifyMac",
    }
)


class TlsCaller:
    """The caller as its TLS handshake with this process showed it."""

    def certificates(self, context: grpc.ServicerContext) -> tuple[bytes, bytes] | None:
        """The leaf and the chain it came with (PEM), or None without a certificate."""
        # grpc-stubs types each value as bytes; at run time it is a list of bytes. gRPC puts
        # the leaf in x509_pem_cert and the certificates the client sent after it, as one
        # PEM string, in x509_pem_cert_chain (absent when it sent only the leaf).
        properties = context.auth_context()
        certificates = cast(Sequence[bytes], properties.get("x509_pem_cert", ()))
        if not certificates:
            return None
        chain = b"".join(cast(Sequence[bytes], properties.get("x509_pem_cert_chain", ())))
        return certificates[0], chain

    def peer(self, context: grpc.ServicerContext) -> str:
        return str(context.peer())


class ForwardedCaller:
    """The caller as its TLS handshake with a worker showed it (the coordinator's internal
    socket, which only the daemon's own processes can reach)."""

    def certificates(self, context: grpc.ServicerContext) -> tuple[bytes, bytes] | None:
        metadata = _metadata(context)
        leaf = metadata.get(_CERTIFICATE)
        if not isinstance(leaf, bytes) or not leaf:
            return None
        chain = metadata.get(_CHAIN)
        return leaf, chain if isinstance(chain, bytes) else b""

    def peer(self, context: grpc.ServicerContext) -> str:
        peer = _metadata(context).get(_PEER)
        return peer if isinstance(peer, str) else ""


def _metadata(context: grpc.ServicerContext) -> dict[str, str | bytes]:
    return dict(context.invocation_metadata())


Caller = TlsCaller | ForwardedCaller


@dataclass(frozen=True)
class _Ended(grpc.Status):
    """A forwarded call's status, to end the client's call with."""

    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


class Forwarder:
    """A worker's channel to the coordinator, and the handlers that use it."""

    def __init__(self, socket_path: str, serves: Callable[[str], bool]) -> None:
        """serves(tenant): whether this worker has the tenant's token open."""
        self._channel = grpc.insecure_channel(
            f"unix:{socket_path}",
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.max_send_message_length", MAX_MESSAGE),
                *FORWARDED_METADATA_OPTIONS,
            ],
        )
        self.serves = serves
        self._caller = TlsCaller()

    def close(self) -> None:
        self._channel.close()

    def forward(self, method: str, request: bytes, context: grpc.ServicerContext) -> bytes:
        """The coordinator's answer to the call; ends the call with its status if it failed."""
        metadata: tuple[tuple[str, str | bytes], ...] = ((_PEER, self._caller.peer(context)),)
        presented = self._caller.certificates(context)
        if presented is not None:
            metadata += ((_CERTIFICATE, presented[0]), (_CHAIN, presented[1]))
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = self._channel.unary_unary(method)
        try:
            response, outcome = call.with_call(
                request, timeout=_timeout(context), metadata=metadata
            )
        except grpc.RpcError as exc:
            failed = cast(grpc.Call, exc)
            trailers = tuple(failed.trailing_metadata() or ())
            answered = any(key == REQUEST_ID_METADATA for key, _ in trailers)
            if not answered and failed.code() is grpc.StatusCode.UNAVAILABLE:
                self._unanswered(method, failed, context)
            context.abort_with_status(_Ended(failed.code(), failed.details() or "", trailers))
        context.set_trailing_metadata(tuple(outcome.trailing_metadata()))
        return response

    def _unanswered(
        self, method: str, failed: grpc.Call, context: grpc.ServicerContext
    ) -> NoReturn:
        """The coordinator could not be reached (it is gone, or stopping): UNAVAILABLE, with
        a request id, as the guard answers a call it cannot audit; the channel's own words
        (which name the socket) only in the log. Other failures without the coordinator's
        request id (a deadline that passed, a cancelled call) are passed on as they are."""
        request_id = uuid.uuid4().hex
        log.error(
            "%s %s: the coordinator did not answer: %s %s",
            request_id,
            method,
            failed.code().name,
            failed.details(),
        )
        context.set_trailing_metadata(((REQUEST_ID_METADATA, request_id),))
        unanswered = BackendUnavailable("the coordinator did not answer")
        context.abort(*to_status(unanswered, request_id))


# A call without a deadline has ~9.2e18 s remaining in gRPC Python (the largest deadline),
# which passed on as a timeout fails at once with DEADLINE_EXCEEDED: forward it without one.
_NO_DEADLINE = 365 * 24 * 3600.0


def _timeout(context: grpc.ServicerContext) -> float | None:
    """The caller's deadline, to forward its call with, or None if it set none."""
    remaining = context.time_remaining()
    return None if remaining is None or remaining > _NO_DEADLINE else remaining


def passes_bytes(serialize: Callable[[Any], bytes] | None) -> Callable[[Any], bytes]:
    """A response serializer for a handler that answers either a message or, forwarded, the
    coordinator's bytes."""

    def serialized(response: Any) -> bytes:
        if isinstance(response, bytes) or serialize is None:
            return cast(bytes, response)
        return serialize(response)

    return serialized
