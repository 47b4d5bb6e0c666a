"""The backend's concurrency model, in-process: throughput with 1 and 2 threads over 1 and 2
tenants, and one tenant's Encrypt latency while another generates RSA-4096 keys.

Every figure is measured twice in one run: through the backend's lanes, and with one lock
around every backend call (the model before lanes), on the same SoftHSM2 token library.
docs/concurrency.md has the figures and reads them. Prints a table; exits 0.
Usage: python -m bench.lanes [--seconds S]
"""

from __future__ import annotations

import argparse
import hashlib
import secrets
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hsmd.backend.lanes import LaneSizes
from hsmd.backend.pins import PinDeriver
from hsmd.backend.pkcs11_backend import Pkcs11Backend
from hsmd.domain import KeySpec, KeyUsage, SigningAlgorithm
from tests.harness import SOFTHSM_LIB

PLAINTEXT = b"x" * 1024


class _Serialised:
    """The backend behind one lock: every call waits for every other, as before lanes."""

    def __init__(self, backend: Pkcs11Backend) -> None:
        self._backend = backend
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._backend, name)

        def locked(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return method(*args, **kwargs)

        return locked


def _tenant(backend: Pkcs11Backend) -> str:
    name = "bench" + secrets.token_hex(4)
    backend.attach_token(name, backend.ensure_token(name))
    return name


def _key(backend: Any, tenant: str, spec: KeySpec, usage: KeyUsage) -> bytes:
    object_id = secrets.token_bytes(16)
    backend.generate_key(tenant, object_id, spec, usage)
    return object_id


def _rate(calls: list[Callable[[], object]], seconds: float) -> float:
    """Calls per second of all threads together, one thread per callable."""
    counts = [0] * len(calls)
    stop = time.monotonic() + seconds

    def run(index: int) -> None:
        while time.monotonic() < stop:
            calls[index]()
            counts[index] += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / seconds


def _throughput(backend: Any, tenants: list[str], seconds: float) -> list[str]:
    digest = hashlib.sha256(b"bench").digest()
    rows = []
    for name, spec, usage in (
        ("RSA-2048 sign (PSS)", KeySpec.RSA_2048, KeyUsage.SIGN_VERIFY),
        ("AES-256-GCM encrypt 1 KB", KeySpec.AES_256, KeyUsage.ENCRYPT_DECRYPT),
    ):
        keys = {t: _key(backend, t, spec, usage) for t in tenants}

        def call(
            tenant: str, spec: KeySpec = spec, keys: dict[str, bytes] = keys
        ) -> Callable[[], object]:
            if spec is KeySpec.AES_256:
                return lambda: backend.encrypt(tenant, keys[tenant], PLAINTEXT, b"")
            return lambda: backend.sign(
                tenant, keys[tenant], spec, SigningAlgorithm.RSASSA_PSS_SHA_256, digest
            )

        one, other = tenants
        figures = [
            _rate([call(one)], seconds),
            _rate([call(one), call(one)], seconds),
            _rate([call(one), call(other)], seconds),
        ]
        rows.append(f"{name:<28}" + "".join(f"{f:>14,.0f}" for f in figures))
    return rows


def _noisy_neighbour(
    backend: Any, tenant_a: str, tenant_b: str, seconds: float
) -> tuple[list[float], list[float], int]:
    """B's Encrypt latencies alone, then while A generates RSA-4096 keys; A's generations."""
    key_b = _key(backend, tenant_b, KeySpec.AES_256, KeyUsage.ENCRYPT_DECRYPT)

    def latencies(until: float) -> list[float]:
        times = []
        while time.monotonic() < until:
            started = time.perf_counter()
            backend.encrypt(tenant_b, key_b, PLAINTEXT, b"")
            times.append(time.perf_counter() - started)
        return times

    alone = latencies(time.monotonic() + seconds)
    stop = threading.Event()
    generated = [0]

    def generate() -> None:
        while not stop.is_set():
            _key(backend, tenant_a, KeySpec.RSA_4096, KeyUsage.SIGN_VERIFY)
            generated[0] += 1

    generator = threading.Thread(target=generate)
    generator.start()
    flooded = latencies(time.monotonic() + seconds)
    stop.set()
    generator.join()
    return alone, flooded, generated[0]


def _p99(times: list[float]) -> float:
    return sorted(times)[max(0, int(len(times) * 0.99) - 1)]


def _percentiles(times: list[float]) -> str:
    p50, p99 = statistics.median(times) * 1e3, _p99(times) * 1e3
    return f"{len(times):>8,} calls  p50 {p50:9.3f} ms  p99 {p99:9.3f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--fast-sessions", type=int, default=LaneSizes().fast)
    parser.add_argument("--slow-sessions", type=int, default=LaneSizes().slow)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hsmd-bench-lanes-"))
    (work / "tokens").mkdir()
    conf = work / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {work / 'tokens'}\nobjectstore.backend = file\n"
        "log.level = ERROR\nslots.removable = false\n"
    )
    sizes = LaneSizes(args.fast_sessions, args.slow_sessions)
    backend = Pkcs11Backend(SOFTHSM_LIB, PinDeriver(secrets.token_bytes(32)), conf, lanes=sizes)
    models = (("lanes", backend), ("one lock", _Serialised(backend)))
    print(f"lanes: fast_sessions={sizes.fast} slow_sessions={sizes.slow}; {args.seconds} s each")
    print(f"{'ops/s':<28}{'1 thread':>14}{'2 thr, 1 ten.':>14}{'2 thr, 2 ten.':>14}")
    for label, model in models:
        print(f"-- {label}")
        tenants = [_tenant(backend), _tenant(backend)]
        print("\n".join(_throughput(model, tenants, args.seconds)))
    print("tenant B's Encrypt (1 KB) alone, and while tenant A generates RSA-4096 keys:")
    for label, model in models:
        tenant_a, tenant_b = _tenant(backend), _tenant(backend)
        alone, flooded, generated = _noisy_neighbour(model, tenant_a, tenant_b, args.seconds * 2)
        print(f"-- {label}\n   alone    {_percentiles(alone)}")
        print(f"   flooded  {_percentiles(flooded)}  (A generated {generated})")
        print(f"   p99 flooded / alone = {_p99(flooded) / _p99(alone):.1f}")
    backend.close()
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
