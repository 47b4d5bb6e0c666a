"""What an audit checkpoint costs, and that an append costs the same with checkpoints on.

Measures, on a SoftHSM2 token of its own and a log in --dir: the daemon key's signature, the
atomic replacement of the checkpoint file (temporary file, fsync, rename, fsync of the
directory), a whole checkpoint (sign, append the line and fsync it, replace the file), and a
sequential append with and without checkpoints configured. Prints a table; exits 0.
Usage: python -m bench.checkpoint [--dir DIR] [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from hsmd.audit.checkpoint import Checkpointing, write_atomically
from hsmd.audit.events import AuditEvent
from hsmd.audit.log import AuditLog
from hsmd.backend.pins import PinDeriver
from hsmd.backend.pkcs11_backend import Pkcs11Backend
from tests.harness import SOFTHSM_LIB


def _event(n: int) -> AuditEvent:
    return AuditEvent(
        time=datetime.now(UTC),
        request_id=f"{n:032x}",
        tenant="bench",
        principal="tenant/bench/app",
        operation="Encrypt",
        key_id="6f1c1ad0-5b6c-4d6e-9a43-6c8f2b1d7e55",
        key_version=1,
        encryption_context_keys=("purpose",),
        outcome="OK",
        peer="ipv4:127.0.0.1:40000",
    )


def _timed(rounds: int, step: Callable[[int], object]) -> list[float]:
    times = []
    for n in range(rounds):
        started = time.perf_counter()
        step(n)
        times.append(time.perf_counter() - started)
    return times


def _row(name: str, times: list[float]) -> str:
    ordered = sorted(times)
    p95 = ordered[int(len(ordered) * 0.95) - 1]
    return f"{name:<44} {statistics.median(times) * 1e3:8.3f} {p95 * 1e3:8.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hsmd-bench-checkpoint-", dir=args.dir))
    (work / "tokens").mkdir()
    conf = work / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {work / 'tokens'}\nobjectstore.backend = file\n"
        "log.level = ERROR\nslots.removable = false\n"
    )
    backend = Pkcs11Backend(SOFTHSM_LIB, PinDeriver(secrets.token_bytes(32)), conf)
    key = backend.daemon_key()
    rounds = args.rounds
    rows = [_row(f"sign ({key.spec}, SoftHSM2)", _timed(rounds, lambda n: key.sign(b"x" * 250)))]
    line = b"x" * 620 + b"\n"  # a checkpoint line is about this long
    target = work / "file.checkpoint"
    rows.append(
        _row(
            "replace the checkpoint file atomically",
            _timed(rounds, lambda n: write_atomically(target, line)),
        )
    )

    def log_with(checkpoints: bool, name: str) -> AuditLog:
        files = Checkpointing(
            key, work / f"{name}.checkpoint", work / f"{name}.pub.pem", 10**6, 86400
        )
        return AuditLog(work / f"{name}.jsonl", checkpoints=files if checkpoints else None)

    with log_with(True, "whole") as log:

        def checkpoint(n: int) -> None:
            log.append(_event(n))
            log.checkpoint()

        appended = _timed(rounds, lambda n: log.append(_event(n)))
        both = _timed(rounds, checkpoint)
    rows.append(_row("append + whole checkpoint", both))
    rows.append(_row("append, checkpoints configured", appended))
    with log_with(False, "plain") as log:
        rows.append(_row("append, no checkpoints", _timed(rounds, lambda n: log.append(_event(n)))))
    backend.close()
    print(f"{rounds} rounds in {args.dir} ({os.statvfs(work).f_bsize}-byte blocks)")
    shutil.rmtree(work)
    print(f"{'':<44} {'median ms':>8} {'p95 ms':>8}")
    print("\n".join(rows))
    print("whole checkpoint ~ (append + whole checkpoint) - (append, checkpoints configured)")


if __name__ == "__main__":
    main()
