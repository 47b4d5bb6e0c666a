"""The audit index (hsmd/audit/index.py, hsmd/keystore/audit_index.py): the same contract in
memory and in SQLite, and a log that keeps it right across kill -9, loss and damage, against
real temporary files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hsmd.audit.events import AuditEvent, RecordedEvent
from hsmd.audit.index import AuditIndex, IndexedLine, LineLocation, MemoryAuditIndex
from hsmd.audit.log import AuditLog
from hsmd.keystore.audit_index import SqliteAuditIndex


def _event(n: int, tenant: str = "acme", key_id: str = "k1") -> AuditEvent:
    return AuditEvent(
        time=datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC),
        request_id=f"req{n:04}",
        tenant=tenant,
        principal=f"tenant/{tenant}/app",
        operation="Encrypt",
        key_id=key_id,
        key_version=1,
        encryption_context_keys=(),
        outcome="OK",
        peer="ipv4:127.0.0.1:5555",
    )


@pytest.fixture(params=["memory", "sqlite"])
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AuditIndex]:
    made: AuditIndex = (
        MemoryAuditIndex() if request.param == "memory" else SqliteAuditIndex(tmp_path / "i")
    )
    yield made
    made.close()


def _line(n: int, tenant: str | None = "a", key_id: str = "k") -> IndexedLine:
    return IndexedLine(n, n * 100, 100, f"{n:064x}", tenant, key_id)


def test_find_pages_by_sequence_with_each_filter(index: AuditIndex) -> None:
    assert index.last() is None
    index.add([_line(n, "ab"[n % 2], f"k{n % 3}") for n in range(1, 31)])
    index.add([_line(31, None, "")])  # a checkpoint: a position, not an event
    assert index.last() == _line(31, None, "")
    assert [found.sequence for found in index.find(0, 5, None, None)] == [1, 2, 3, 4, 5]
    assert [found.sequence for found in index.find(28, 5, None, None)] == [29, 30]
    assert [found.sequence for found in index.find(0, 100, "a", None)] == list(range(2, 31, 2))
    assert [found.sequence for found in index.find(3, 2, None, "k0")] == [6, 9]
    assert [found.sequence for found in index.find(0, 100, "b", "k1")] == [1, 7, 13, 19, 25]
    assert index.find(0, 10, "nobody", None) == []
    assert index.find(0, 1, "a", "k2") == [LineLocation(2, 200, 100)]


def test_clear_empties_it(index: AuditIndex) -> None:
    index.add([_line(1), _line(2)])
    index.clear()
    assert index.last() is None
    assert index.find(0, 10, None, None) == []


def _open(log: Path) -> AuditLog:
    return AuditLog(log, index=SqliteAuditIndex(log.with_name("audit.index")))


def _all(log: AuditLog, **filters: str) -> list[RecordedEvent]:
    found: list[RecordedEvent] = []
    cursor: int | None = 0
    while cursor is not None:
        page, cursor = log.read(after_sequence=cursor, limit=7, **filters)
        found += page
    return found


def _expect(log: AuditLog, count: int) -> None:
    everything = _all(log)
    assert [record.sequence for record in everything] == list(range(1, count + 1))
    by_key = _all(log, key_id="k2")
    assert by_key == [record for record in everything if record.event.key_id == "k2"]
    assert _all(log, tenant="b") == [r for r in everything if r.event.tenant == "b"]


def _fill(log: AuditLog, start: int, count: int) -> None:
    for n in range(start, start + count):
        log.append(_event(n, tenant="ab"[n % 2], key_id=f"k{n % 3}"))


_KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from tests.unit.test_audit_index import _event, _open
    log = _open(Path(sys.argv[1]))
    for n in range(600):
        log.append(_event(n, tenant="ab"[n % 2], key_id=f"k{n % 3}"))
    print("written", flush=True)
    time.sleep(600)
    """
)


def test_the_index_catches_up_after_kill_9(tmp_path: Path) -> None:
    log_path = tmp_path / "audit.log"
    writer = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(log_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline() == "written\n"
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
    left = SqliteAuditIndex(tmp_path / "audit.index")
    last = left.last()
    left.close()
    assert last is not None and last.sequence < 600  # entries were still in memory
    with _open(log_path) as log:
        _expect(log, 600)
        _fill(log, 600, 10)
        _expect(log, 610)


def _index_another_log(path: Path) -> None:
    with _open(path) as other:
        _fill(other, 0, 3)


@pytest.mark.parametrize(
    "harm",
    [
        lambda index: index.unlink(),
        lambda index: index.write_bytes(b"this is not a database" * 100),
        lambda index: (index.unlink(), _index_another_log(index.with_name("other.log"))),
    ],
    ids=["missing", "damaged", "another log's"],
)
def test_the_index_is_built_again_when_missing_damaged_or_not_this_logs(
    tmp_path: Path, harm: Callable[[Path], object]
) -> None:
    log_path = tmp_path / "audit.log"
    with _open(log_path) as log:
        _fill(log, 0, 300)
    for side in ("-wal", "-shm"):
        tmp_path.joinpath("audit.index" + side).unlink(missing_ok=True)
    harm(tmp_path / "audit.index")
    with _open(log_path) as log:
        _expect(log, 300)


def test_a_line_changed_under_the_index_is_corruption_not_an_answer(tmp_path: Path) -> None:
    log_path = tmp_path / "audit.log"
    with _open(log_path) as log:
        _fill(log, 0, 5)
        lines = log_path.read_bytes().splitlines(keepends=True)
        with log_path.open("r+b") as f:  # line 2 removed in place
            f.write(b"".join(lines[:1] + lines[2:]))
            f.truncate()
        with pytest.raises(Exception, match="line 2"):
            log.read(after_sequence=1, limit=1)


def test_append_reports_the_bytes_it_added(tmp_path: Path) -> None:
    with _open(tmp_path / "audit.log") as log:
        before = log.path.stat().st_size
        appended = log.append(_event(1))
        assert appended.size == log.path.stat().st_size - before > 0
