"""Encrypt throughput through the daemon against the raw token rate, measured in one run.

Machines here are noisy, so every figure is reported as a ratio to the in-process python-pkcs11
AES-GCM rate measured in the same run on the same token library. Prints a table; exits 0.
Usage: python -m bench.rates [--seconds S]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from tests.harness import SOFTHSM_LIB, DaemonProcess, TestPki

PLAINTEXT = b"x" * 1024


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


def _encrypt_rate(daemon: DaemonProcess, threads: int, seconds: float) -> float:
    """Encrypt calls per second by `threads` clients, each with a channel of its own."""
    clients = [daemon.client("bench") for _ in range(threads)]
    key_id = clients[0].create_key().key_id
    counts = [0] * threads
    stop = time.monotonic() + seconds

    def run(index: int) -> None:
        while time.monotonic() < stop:
            clients[index].encrypt(key_id, PLAINTEXT)
            counts[index] += 1

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    started = time.monotonic()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(counts) / (time.monotonic() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="hsmd-bench-"))
    raw = raw_token_rate(directory, args.seconds)
    daemon = DaemonProcess(directory / "daemon", TestPki(directory / "pki"))
    daemon.start()
    try:
        daemon.create_tenant("bench")
        rows = [("raw python-pkcs11 AES-GCM 1 KB, in-process, 1 thread", raw)]
        for threads in (1, 8):
            rate = _encrypt_rate(daemon, threads, args.seconds)
            rows.append((f"Encrypt RPC 1 KB over mTLS, audited, {threads} client(s)", rate))
    finally:
        daemon.stop()
    print(f"{'measurement':60} {'per second':>12} {'ratio to raw':>13}")
    for name, rate in rows:
        print(f"{name:60} {rate:12.0f} {rate / raw:13.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
