"""Encrypt throughput through the daemon against the raw token rate, measured in one run.

Machines here are noisy, so every figure is reported as a ratio to the in-process python-pkcs11
AES-GCM rate measured in the same run on the same token library. Prints a table; exits 0.
Usage: python -m bench.rates [--seconds S]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

from bench.reference import raw_token_rate
from tests.harness import DaemonProcess, TestPki

PLAINTEXT = b"x" * 1024


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
