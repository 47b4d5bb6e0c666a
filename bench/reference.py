"""The two yardsticks every hsmd figure is divided by, measured in the same run: the raw
in-process python-pkcs11 rate on the same token library, and a gRPC Python echo server over
the same mutual TLS (what the transport alone costs).
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent import futures
from pathlib import Path

import grpc

from bench.load import Credentials, run_in_processes
from tests.harness import SOFTHSM_LIB, TestPki

_RAW = """
import os, sys, time
import ctypes
import pkcs11
from pkcs11 import Attribute as A, KeyType, Mechanism
from pkcs11.mechanisms import GCMParams
lib = pkcs11.lib(sys.argv[1])
slot = lib.get_slots(token_present=True)[0]
pin = "1234"
c = ctypes.CDLL(sys.argv[1])
c.C_InitToken(ctypes.c_ulong(slot.slot_id), b"5678", 4, b"bench".ljust(32))
with slot.get_token().open(rw=True, so_pin="5678") as so:
    so.init_pin(pin)
s = slot.get_token().open(rw=True, user_pin=pin)
key = s.generate_key(
    KeyType.AES, 256, store=False, template={A.ENCRYPT: True, A.SENSITIVE: True}
)
data = b"x" * 1024
n, end = 0, time.monotonic() + float(sys.argv[2])
start = time.monotonic()
while time.monotonic() < end:
    param = GCMParams(os.urandom(12), b"aad")
    key.encrypt(data, mechanism=Mechanism.AES_GCM, mechanism_param=param)
    n += 1
print(n / (time.monotonic() - start))
"""


def raw_token_rate(directory: Path, seconds: float) -> float:
    """AES-256-GCM of 1 KB in-process with python-pkcs11, in a process of its own (SoftHSM2
    reads its configuration once per process)."""
    tokens = directory / "raw-tokens"
    tokens.mkdir()
    conf = directory / "raw-softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n")
    result = subprocess.run(  # noqa: S603 (our own interpreter and script)
        [sys.executable, "-c", _RAW, str(SOFTHSM_LIB), str(seconds)],
        env=dict(os.environ, SOFTHSM2_CONF=str(conf)),
        capture_output=True,
        check=True,
        text=True,
    )
    return float(result.stdout.strip())


def echo_rate(pki: TestPki, seconds: float, clients: int = 8) -> float:
    """Unary calls per second (1 KB each way) to a gRPC echo server with the daemon's TLS
    settings (mutual TLS, 16 workers), from `clients` threads in two client processes."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    echo = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("bench.Echo", {"Echo": echo})]
    )
    credentials = grpc.ssl_server_credentials(
        [(pki.server_key.read_bytes(), pki.server_cert.read_bytes())],
        root_certificates=pki.ca_cert.read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        who = Credentials.for_tenant(pki, f"localhost:{port}", "echo")
        return run_in_processes("echo", [(who, "")] * clients, seconds) / seconds
    finally:
        server.stop(0)
