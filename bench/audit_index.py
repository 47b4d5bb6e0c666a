"""What a ListAuditEvents page by key costs with the audit index, against a scan of the log.

Writes a valid log of --events events (one in 10,000 about the watched key, the rest spread
over 1,000 keys of 10 tenants) in --dir, builds its index the way a daemon does at its first
start, then times a page of the watched key's events through the index (AuditLog.read) and
through a scan of the whole file that decodes every line (what each page cost before the
index). Prints a table; exits 0.
Usage: python -m bench.audit_index [--dir DIR] [--events N]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from hsmd.audit.events import (
    GENESIS_HASH,
    AuditEvent,
    RecordedEvent,
    chain,
    decode_record,
    encode_line,
)
from hsmd.audit.index import index_path_for
from hsmd.audit.log import AuditLog
from hsmd.keystore.audit_index import SqliteAuditIndex

WATCHED = "00000000-0000-4000-8000-ffffffffffff"


def _event(n: int) -> AuditEvent:
    key = WATCHED if n % 10_000 == 0 else f"00000000-0000-4000-8000-{n % 1000:012}"
    return AuditEvent(
        time=datetime(2026, 1, 1, tzinfo=UTC),
        request_id=f"{n:032x}",
        tenant=f"tenant{n % 10}",
        principal=f"tenant/tenant{n % 10}/app",
        operation="Encrypt",
        key_id=key,
        key_version=1,
        encryption_context_keys=("purpose",),
        outcome="OK",
        peer="ipv4:127.0.0.1:40000",
    )


def _write_log(path: Path, events: int) -> None:
    previous = GENESIS_HASH
    with path.open("wb") as log:
        for n in range(1, events + 1):
            record = chain(_event(n), n, previous)
            log.write(encode_line(record))
            previous = record.hash
    path.chmod(0o600)


def _scan(path: Path, key_id: str, limit: int) -> list[RecordedEvent]:
    found = []
    with path.open("rb") as lines:
        for raw in lines:
            record = decode_record(raw)
            if isinstance(record, RecordedEvent) and record.event.key_id == key_id:
                found.append(record)
                if len(found) > limit:
                    break
    return found[:limit]


def _timed(action: object, rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        action()  # type: ignore[operator]
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path)
    parser.add_argument("--events", type=int, default=200_000)
    args = parser.parse_args()
    directory = args.dir or Path(tempfile.mkdtemp(prefix="hsmd-bench-index-"))
    log_path = directory / "audit.jsonl"
    try:
        _write_log(log_path, args.events)
        size = log_path.stat().st_size
        started = time.perf_counter()
        with AuditLog(log_path, index=SqliteAuditIndex(index_path_for(log_path))) as log:
            built = time.perf_counter() - started
            page, _ = log.read(limit=100, key_id=WATCHED)
            assert len(page) == args.events // 10_000, len(page)
            indexed = _timed(lambda: log.read(limit=100, key_id=WATCHED), 20)
        scanned = _timed(lambda: _scan(log_path, WATCHED, 100), 2)
        print(f"log: {args.events} events, {size / 2**20:.0f} MiB; watched key: {len(page)}")
        print(f"index built from the whole log at first start: {built:.2f} s")
        print(f"page by key, through the index (median of 20): {indexed * 1000:.2f} ms")
        print(f"page by key, scanning the log (median of 2):   {scanned * 1000:.0f} ms")
        print(f"ratio: {scanned / indexed:.0f}x")
    finally:
        if args.dir is None:
            shutil.rmtree(directory)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
