"""The yardsticks every hsmd figure is divided by, measured in the same run: the raw in-process
python-pkcs11 rate of each operation on the same token library, and a gRPC Python echo server
over the same mutual TLS (what the transport alone costs), thread-pool or asyncio.
"""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier, Event
from pathlib import Path
from typing import Any

import grpc

from bench.load import KB, Credentials, run_in_processes
from hsmd.config import DEFAULT_WORKERS
from tests.harness import SOFTHSM_LIB, TestPki

_SPAWN = multiprocessing.get_context("spawn")
_PIN = "1234"
_SO_PIN = "5678"
_LABEL = "bench"
# The operations of the raw rates, as hsmd performs them (hsmd/backend/mechanisms.py):
# AES-256-GCM with a 12-byte IV, C_GenerateRandom then AES-GCM for a data key, ECDSA over a
# SHA-256 digest computed outside the token, RSA PKCS#1 v1.5 over a DigestInfo built outside.
RAW_OPERATIONS = ("encrypt", "datakey", "sign_ecdsa", "sign_rsa", "mac")
_SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")
_AAD = b"a" * 64  # about what hsmd binds: tenant, key id, version, context
# The daemon's server settings an echo server copies (hsmd/transport/server.py, config.py).
ECHO_WORKERS = DEFAULT_WORKERS


def _init_token(conf: str) -> None:
    """Initialises one token and its user PIN (in a process of its own: SoftHSM2 does not see
    a token that another process initialised after it loaded)."""
    os.environ["SOFTHSM2_CONF"] = conf
    import ctypes

    from hsmd.backend.tokens import load_library

    library = load_library(SOFTHSM_LIB)
    slot = library.get_slots(token_present=True)[0]
    c_init_token = ctypes.CDLL(str(SOFTHSM_LIB)).C_InitToken
    c_init_token(ctypes.c_ulong(slot.slot_id), _SO_PIN.encode(), 4, _LABEL.encode().ljust(32))
    with slot.get_token().open(rw=True, so_pin=_SO_PIN) as session:
        session.init_pin(_PIN)


def _raw_operations(session: Any) -> dict[str, Callable[[], object]]:
    """Each raw operation on session keys of this session (the token work is the same as on
    token keys; only creating them is slower)."""
    from pkcs11 import Attribute, KeyType, Mechanism
    from pkcs11.mechanisms import GCMParams
    from pkcs11.util.ec import encode_named_curve_parameters

    aes = session.generate_key(
        KeyType.AES, 256, store=False, template={Attribute.ENCRYPT: True, Attribute.SENSITIVE: True}
    )
    hmac = session.generate_key(
        KeyType.GENERIC_SECRET,
        256,
        store=False,
        template={Attribute.SIGN: True, Attribute.SENSITIVE: True},
    )
    curve = session.create_domain_parameters(
        KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")}, local=True
    )
    _, ecdsa = curve.generate_keypair(store=False)
    _, rsa = session.generate_keypair(KeyType.RSA, 2048, store=False)

    def encrypt(data: bytes) -> bytes:
        params = GCMParams(os.urandom(12), _AAD)
        ciphertext: bytes = aes.encrypt(data, mechanism=Mechanism.AES_GCM, mechanism_param=params)
        return ciphertext

    return {
        "encrypt": lambda: encrypt(KB),
        "datakey": lambda: encrypt(session.generate_random(256)),
        "sign_ecdsa": lambda: ecdsa.sign(hashlib.sha256(KB).digest(), mechanism=Mechanism.ECDSA),
        "sign_rsa": lambda: rsa.sign(
            _SHA256_DIGEST_INFO + hashlib.sha256(KB).digest(), mechanism=Mechanism.RSA_PKCS
        ),
        "mac": lambda: hmac.sign(KB, mechanism=Mechanism.SHA256_HMAC),
    }


def _raw_worker(
    conf: str, operations: Sequence[str], seconds: float, ready: Barrier, results: Any
) -> None:
    """One process, one session of the shared token, initialised as hsmd does (with
    CKF_OS_LOCKING_OK); every operation runs `seconds`, in step with the other processes."""
    os.environ["SOFTHSM2_CONF"] = conf
    from hsmd.backend.tokens import load_library

    token = load_library(SOFTHSM_LIB).get_token(token_label=_LABEL)
    with token.open(rw=True, user_pin=_PIN) as session:
        calls = _raw_operations(session)
        counts = {}
        for operation in operations:
            call = calls[operation]
            call()
            ready.wait()
            count, end = 0, time.monotonic() + seconds
            while time.monotonic() < end:
                call()
                count += 1
            counts[operation] = count
    results.put(counts)


def raw_rates(
    directory: Path,
    seconds: float,
    operations: Sequence[str] = RAW_OPERATIONS,
    processes: int = 2,
) -> dict[str, float]:
    """Operations per second of each raw operation in-process with python-pkcs11 on one
    SoftHSM2 token, by `processes` processes at once (a session each), `seconds` each."""
    tokens = Path(tempfile.mkdtemp(prefix="raw-tokens-", dir=directory))
    conf = tokens.with_suffix(".conf")
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n")
    setup = _SPAWN.Process(target=_init_token, args=(str(conf),))
    setup.start()
    setup.join()
    ready = _SPAWN.Barrier(processes)
    results = _SPAWN.Queue()
    workers = [
        _SPAWN.Process(
            target=_raw_worker, args=(str(conf), tuple(operations), seconds, ready, results)
        )
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    counts = [results.get() for _ in workers]
    for worker in workers:
        worker.join()
    return {name: sum(part[name] for part in counts) / seconds for name in operations}


def raw_token_rate(directory: Path, seconds: float) -> float:
    """AES-256-GCM of 1 KB in-process with python-pkcs11, one process, one thread."""
    return raw_rates(directory, seconds, ("encrypt",), processes=1)["encrypt"]


def _echo_handlers(use_asyncio: bool) -> grpc.GenericRpcHandler:
    """bench.Echo/Echo, which answers the request itself: a coroutine for the asyncio server
    (it would run a plain function on a thread pool)."""

    async def echo_async(request: bytes, context: Any) -> bytes:
        return request

    def echo(request: bytes, context: Any) -> bytes:
        return request

    handler = grpc.unary_unary_rpc_method_handler(echo_async if use_asyncio else echo)
    return grpc.method_handlers_generic_handler("bench.Echo", {"Echo": handler})


def _serve_echo(
    credentials: tuple[bytes, bytes, bytes], use_asyncio: bool, ports: Any, stop: Event
) -> None:
    """An echo server with the daemon's TLS settings (mutual TLS; the thread-pool server with
    the daemon's workers, or gRPC's asyncio server), in a process of its own like the daemon,
    until `stop` is set."""
    key, cert, ca = credentials
    server_credentials = grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=True
    )
    if use_asyncio:
        asyncio.run(_serve_echo_asyncio(server_credentials, ports, stop))
        return
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=ECHO_WORKERS))
    server.add_generic_rpc_handlers([_echo_handlers(use_asyncio=False)])
    ports.put(server.add_secure_port("127.0.0.1:0", server_credentials))
    server.start()
    stop.wait()
    server.stop(0)


async def _serve_echo_asyncio(
    server_credentials: grpc.ServerCredentials, ports: Any, stop: Event
) -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([_echo_handlers(use_asyncio=True)])
    ports.put(server.add_secure_port("127.0.0.1:0", server_credentials))
    await server.start()
    await asyncio.get_running_loop().run_in_executor(None, stop.wait)
    await server.stop(0)


@dataclass(frozen=True)
class EchoServer:
    endpoint: str
    pid: int  # for the server's CPU time


@contextmanager
def echo_server(pki: TestPki, use_asyncio: bool = False) -> Iterator[EchoServer]:
    """An echo server (bench.load's "echo" action calls it) while the block runs: gRPC's
    thread-pool server, as hsmd runs, or its asyncio server, in a process of its own."""
    ports = _SPAWN.Queue()
    stop = _SPAWN.Event()
    credentials = (
        pki.server_key.read_bytes(),
        pki.server_cert.read_bytes(),
        pki.ca_cert.read_bytes(),
    )
    server = _SPAWN.Process(target=_serve_echo, args=(credentials, use_asyncio, ports, stop))
    server.start()
    try:
        port = ports.get(timeout=60)
        assert server.pid is not None
        yield EchoServer(f"localhost:{port}", server.pid)
    finally:
        stop.set()
        server.join()


def echo_rate(pki: TestPki, seconds: float, clients: int = 8) -> float:
    """Unary calls per second (1 KB each way) to the thread-pool echo server, from `clients`
    threads in two client processes."""
    with echo_server(pki) as server:
        endpoint = server.endpoint
        who = Credentials.for_tenant(pki, endpoint, "echo")
        return run_in_processes("echo", [(who, "")] * clients, seconds) / seconds
