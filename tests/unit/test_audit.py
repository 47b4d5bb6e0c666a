"""The audit log on real files: format, chain, tamper detection, restart, fail-closed, paging."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import itertools
import json
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from hsmd.audit import events
from hsmd.audit.events import AuditEvent, RecordedEvent, decode_line, encode_line
from hsmd.audit.log import AuditCorrupt, AuditLog, AuditUnavailable, VerifyResult
from hsmd.errors import BackendUnavailable, InternalError, InvalidArgument

T0 = datetime(2025, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)


def _event(n: int = 0, tenant: str = "acme", key_id: str = "k1", **changes: Any) -> AuditEvent:
    values: dict[str, Any] = {
        "time": T0 + timedelta(seconds=n),
        "request_id": f"req{n:04d}",
        "tenant": tenant,
        "principal": f"tenant/{tenant}/app",
        "operation": "Encrypt",
        "key_id": key_id,
        "key_version": 1,
        "encryption_context_keys": ("purpose",),
        "outcome": "OK",
        "peer": "ipv4:127.0.0.1:5555",
    }
    values.update(changes)
    return AuditEvent(**values)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "audit.log"


@pytest.fixture
def audit(path: Path) -> Iterator[AuditLog]:
    log = AuditLog(path)
    yield log
    log.close()


def _fill(log: AuditLog, count: int) -> list[RecordedEvent]:
    return [log.append(_event(n)).record for n in range(count)]


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _rewrite(path: Path, lines: list[bytes]) -> None:
    # In place, so the path still names the file the log has open (as an editor saving over
    # the same inode would); replacing the file is ensure_writable's case.
    with path.open("r+b") as f:
        f.write(b"".join(lines))
        f.truncate()


# The format


def test_append_then_read_back(audit: AuditLog) -> None:
    sent = _event(1, encryption_context_keys=("b", "a", "b"))
    record = audit.append(sent).record
    assert (record.sequence, record.previous_hash) == (1, events.GENESIS_HASH)
    assert record.event == sent
    assert sent.encryption_context_keys == ("a", "b")
    got, cursor = audit.read()
    assert got == [record]
    assert cursor is None


def test_a_third_party_can_verify_a_line_from_the_documented_recipe(audit: AuditLog) -> None:
    first, second = _fill(audit, 2)
    previous = events.GENESIS_HASH
    for raw in _lines(audit.path):
        obj = json.loads(raw)
        stored = obj.pop("hash")
        body = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert obj["previous_hash"] == previous
        expected = hashlib.sha256(f"{previous}\n{body}".encode()).hexdigest()
        assert stored == expected
        previous = stored
    assert previous == second.hash != first.hash


def test_the_line_format_is_stable() -> None:
    record = events.chain(_event(0, encryption_context_keys=("z", "ä")), 1, events.GENESIS_HASH)
    line = encode_line(record)
    assert (
        line
        == (
            '{"encryption_context_keys":["z","ä"],"hash":"' + record.hash + '","key_id":"k1",'
            '"key_version":1,"operation":"Encrypt","outcome":"OK","peer":"ipv4:127.0.0.1:5555",'
            '"previous_hash":"' + "0" * 64 + '","principal":"tenant/acme/app",'
            '"request_id":"req0000","sequence":1,"tenant":"acme",'
            '"time":"2025-03-04T05:06:07.890123Z"}\n'
        ).encode()
    )
    assert record.hash == "09dfeb02925a6a3d8bf58cc36b248451611c075f7096d0a93afe13bda85e1b80"


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"encryption_context_keys": ()},
        {"encryption_context_keys": (',"key_id":"x"', '"hash"', "\\", "\u2028")},
        {"key_id": ',"key_id":', "peer": 'x"\n{"sequence":2}', "tenant": ""},
        {"principal": "tenant/ä/\x00", "request_id": "r" * 5000},
    ],
)
def test_the_one_pass_line_is_the_documented_encoding(changes: dict[str, Any]) -> None:
    """The log writes chain_line's line; it must be exactly encode_line of the chained record,
    whatever the fields hold."""
    event = _event(3, **changes)
    record, line = events.chain_line(event, 7, "ab" * 32)
    assert record == events.chain(event, 7, "ab" * 32)
    assert line == encode_line(record)


def test_restamping_changes_only_the_time() -> None:
    event = _event(0)
    later = event.at(T0 + timedelta(hours=1))
    assert later == dataclasses.replace(event, time=T0 + timedelta(hours=1))
    with pytest.raises(ValueError, match="timezone-aware"):
        event.at(datetime(2025, 1, 1))  # a naive time


def test_a_line_holds_exactly_the_declared_fields(audit: AuditLog) -> None:
    assert tuple(f.name for f in dataclasses.fields(AuditEvent)) == (
        *events.EVENT_FIELDS,
        *events.OPTIONAL_EVENT_FIELDS,
    )
    assert [f.name for f in dataclasses.fields(RecordedEvent)] == [
        "sequence",
        "event",
        "previous_hash",
        "hash",
    ]
    _fill(audit, 3)
    for raw in _lines(audit.path):
        assert set(json.loads(raw)) == set(events.LINE_FIELDS)


def test_no_field_can_split_a_line(audit: AuditLog) -> None:
    sneaky = _event(1, peer='x"\n{"sequence":2}', encryption_context_keys=("a\nb", "\u2028"))
    record = audit.append(sneaky).record
    assert len(_lines(audit.path)) == 1
    assert audit.read()[0] == [record]
    assert audit.verify().valid


def test_time_is_utc_with_microseconds() -> None:
    plus_two = timezone(timedelta(hours=2))
    event = _event(time=datetime(2025, 1, 1, 2, 0, tzinfo=plus_two))
    assert event.time == datetime(2025, 1, 1, 0, 0, tzinfo=UTC)
    assert events.format_time(event.time) == "2025-01-01T00:00:00.000000Z"
    assert events.format_time(datetime(5, 1, 1, tzinfo=UTC)) == "0005-01-01T00:00:00.000000Z"


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"time": datetime(2025, 1, 1)}, ValueError),  # naive
        ({"tenant": b"acme"}, TypeError),
        ({"key_version": True}, TypeError),
        ({"key_version": -1}, ValueError),
        ({"key_version": 2**32}, ValueError),
        ({"encryption_context_keys": "purpose"}, TypeError),
        ({"encryption_context_keys": (1,)}, TypeError),
        ({"peer": "\ud800"}, ValueError),
    ],
    ids=[
        "naive-time",
        "bytes",
        "bool-version",
        "negative",
        "over-uint32",
        "bare-str",
        "int-key",
        "lone-surrogate",
    ],
)
def test_an_event_refuses_values_the_format_cannot_hold(
    changes: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        _event(**changes)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda s: s.replace('"sequence":1', '"sequence":1.0'),
        lambda s: s.replace(",", ", ", 1),
        lambda s: s.replace('"a","z"', '"a","a","z"'),
        lambda s: s.replace('"a","z"', '"z","a"'),
        lambda s: s.replace(".890123Z", "Z"),
        lambda s: s.replace("Z", "+00:00"),
        lambda s: s.replace('"acme"', '"\\u0061cme"'),
        lambda s: s[:-2] + ',"extra":1}',
        lambda s: s.replace('"peer":"ipv4:127.0.0.1:5555",', ""),
        lambda s: "[" + s + "]",
    ],
    ids=[
        "float",
        "space",
        "duplicate",
        "unsorted",
        "no-micros",
        "offset",
        "escape",
        "extra",
        "missing",
        "array",
    ],
)
def test_decoding_accepts_only_the_canonical_line(mangle: Callable[[str], str]) -> None:
    record = events.chain(_event(0, encryption_context_keys=("z", "a")), 1, events.GENESIS_HASH)
    line = encode_line(record).decode().rstrip("\n")
    assert decode_line(line.encode()) == record
    with pytest.raises(events.MalformedEvent):
        decode_line(mangle(line).encode())


# The chain and its verification


def test_the_chain_verifies(audit: AuditLog) -> None:
    records = _fill(audit, 10)
    assert [r.sequence for r in records] == list(range(1, 11))
    for before, after in itertools.pairwise(records):
        assert after.previous_hash == before.hash
    assert _outcome(audit.verify()) == events_ok(10)


def events_ok(count: int) -> tuple[bool, int, int, str]:
    return (True, count, 0, "")


def _outcome(result: VerifyResult) -> tuple[bool, int, int, str]:
    return (result.valid, result.events_checked, result.first_broken_position, result.problem)


def test_an_empty_log_verifies(audit: AuditLog) -> None:
    assert _outcome(audit.verify()) == events_ok(0)


def _delete(lines: list[bytes], position: int) -> list[bytes]:
    return lines[: position - 1] + lines[position:]


def _edit(lines: list[bytes], position: int) -> list[bytes]:
    changed = list(lines)
    changed[position - 1] = changed[position - 1].replace(b'"tenant":"acme"', b'"tenant":"acmf"')
    return changed


def _swap(lines: list[bytes], position: int) -> list[bytes]:
    changed = list(lines)
    changed[position - 1], changed[position] = changed[position], changed[position - 1]
    return changed


_TAMPERING = [
    pytest.param(tamper, position, id=f"{tamper.__name__[1:]}-{position}")
    for tamper in (_delete, _edit, _swap)
    for position in range(1, 11)
    if not (tamper is _swap and position == 10)  # line 10 has no successor to swap with
]


@pytest.mark.parametrize(("tamper", "position"), _TAMPERING)
def test_tampering_is_reported_at_its_first_position(
    audit: AuditLog, tamper: Callable[[list[bytes], int], list[bytes]], position: int
) -> None:
    _fill(audit, 10)
    _rewrite(audit.path, tamper(_lines(audit.path), position))
    result = audit.verify()
    assert not result.valid
    assert result.first_broken_position == position
    assert result.events_checked == position - 1
    assert result.problem


def test_editing_any_single_byte_is_reported_at_its_line(audit: AuditLog) -> None:
    _fill(audit, 10)
    lines = _lines(audit.path)
    offset = sum(len(line) for line in lines[:4])  # line 5 starts here
    with audit.path.open("r+b") as f:
        for index, original in enumerate(lines[4]):
            f.seek(offset + index)
            f.write(b"y" if original == ord("x") else b"x")
            f.flush()
            result = audit.verify()
            assert (result.valid, result.first_broken_position) == (False, 5), index
            f.seek(offset + index)
            f.write(bytes([original]))
            f.flush()
    assert audit.verify().valid


def test_a_rewritten_head_is_reported(audit: AuditLog) -> None:
    # Someone who recomputes the chain from line 3 on fools the hashes, not the process that
    # remembers what it wrote last.
    records = _fill(audit, 3)
    forged = [records[0], records[1]]
    forged.append(events.chain(_event(9), 3, records[1].hash))
    _rewrite(audit.path, [encode_line(r) for r in forged])
    result = audit.verify()
    assert (result.valid, result.first_broken_position) == (False, 3)
    assert "rewritten" in result.problem


def test_a_truncated_tail_is_reported(audit: AuditLog) -> None:
    _fill(audit, 10)
    _rewrite(audit.path, _lines(audit.path)[:7])
    result = audit.verify()
    assert (result.valid, result.first_broken_position, result.events_checked) == (False, 8, 7)
    assert "truncated" in result.problem


def test_a_torn_line_inside_the_head_is_reported(audit: AuditLog) -> None:
    _fill(audit, 3)
    lines = _lines(audit.path)
    _rewrite(audit.path, [*lines[:2], lines[2][:-5]])
    result = audit.verify()
    assert (result.valid, result.first_broken_position) == (False, 3)


def test_an_append_in_flight_is_not_seen(audit: AuditLog) -> None:
    records = _fill(audit, 3)
    with audit.path.open("ab") as f:
        f.write(b'{"encryption_context_keys":[')
    assert audit.read() == (records, None)
    assert _outcome(audit.verify()) == events_ok(3)


# Start-up and restart


def test_the_file_is_created_owner_only(audit: AuditLog) -> None:
    assert stat.S_IMODE(audit.path.stat().st_mode) == 0o600


def test_a_restart_continues_the_chain(path: Path) -> None:
    with AuditLog(path) as first:
        records = _fill(first, 5)
    with AuditLog(path) as second:
        sixth = second.append(_event(6)).record
        assert (sixth.sequence, sixth.previous_hash) == (6, records[-1].hash)
        assert _outcome(second.verify()) == events_ok(6)


def test_the_head_is_found_behind_a_long_last_line(path: Path) -> None:
    with AuditLog(path) as first:
        first.append(_event(1))
        long = first.append(
            _event(2, encryption_context_keys=tuple(f"k{i}" for i in range(3000)))
        ).record
    assert len(_lines(path)[1]) > 3 * 4096
    with AuditLog(path) as second:
        assert second.append(_event(3)).record.previous_hash == long.hash


def test_a_torn_last_line_is_set_aside_and_the_chain_goes_on(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A crash mid-write leaves a line without its LF, whose event was never acknowledged."""
    with AuditLog(path) as first:
        records = _fill(first, 3)
    intact = path.stat().st_size
    fragment = b'{"encryption_context_keys":["pur'
    with path.open("ab") as f:
        f.write(fragment)
    with AuditLog(path) as second:
        assert path.stat().st_size == intact
        (kept,) = path.parent.glob(f"{path.name}.torn-*")
        assert kept.read_bytes() == fragment
        assert second.append(_event(4)).record.previous_hash == records[-1].hash
    assert any(
        "torn line" in r.getMessage() and str(kept) in r.getMessage() for r in caplog.records
    )


def test_a_last_line_that_is_not_an_event_stops_start_up(path: Path) -> None:
    with AuditLog(path) as first:
        _fill(first, 2)
    _rewrite(path, [*_lines(path)[:1], _lines(path)[1].replace(b"acme", b"acmf")])
    with pytest.raises(AuditCorrupt, match="does not match its hash"):
        AuditLog(path)
    _rewrite(path, [*_lines(path)[:1], b"not json\n"])
    with pytest.raises(AuditCorrupt, match="not a valid event"):
        AuditLog(path)


def test_a_second_writer_is_refused(audit: AuditLog) -> None:
    with pytest.raises(AuditUnavailable, match="in use"):
        AuditLog(audit.path)


def test_an_unopenable_path_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(AuditUnavailable):
        AuditLog(tmp_path / "missing-directory" / "audit.log")
    with pytest.raises(AuditUnavailable):
        AuditLog(tmp_path)


# Concurrency and group commit


def test_concurrent_appends_make_one_valid_chain(audit: AuditLog) -> None:
    threads, each = 16, 40
    results: list[RecordedEvent] = []
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def work(worker: int) -> None:
        start.wait()
        for n in range(each):
            record = audit.append(_event(n, tenant=f"t{worker}")).record
            with lock:
                results.append(record)

    pool = [threading.Thread(target=work, args=(w,)) for w in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert sorted(r.sequence for r in results) == list(range(1, threads * each + 1))
    assert _outcome(audit.verify()) == events_ok(threads * each)
    got, _ = audit.read(limit=threads * each)
    assert got == sorted(results, key=lambda r: r.sequence)


def test_concurrent_callers_share_fsyncs(audit: AuditLog, monkeypatch: pytest.MonkeyPatch) -> None:
    real_fsync = os.fsync
    calls: list[int] = []

    def slow_fsync(fd: int) -> None:
        calls.append(fd)
        time.sleep(0.05)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    start = threading.Barrier(16)

    def work(n: int) -> None:
        start.wait()
        audit.append(_event(n))

    pool = [threading.Thread(target=work, args=(n,)) for n in range(16)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert len(calls) < 8
    assert _outcome(audit.verify()) == events_ok(16)


def _counted_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    real_fsync = os.fsync
    calls: list[int] = []

    def counting_fsync(fd: int) -> None:
        calls.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    return calls


def test_the_first_of_the_calls_at_work_waits_for_the_others_so_one_fsync_covers_all(
    audit: AuditLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without waiting for each other, calls a few microseconds apart each pay an fsync; with
    the guard's count of calls at work (3, each appending before it ends), the first waits
    for the others' lines and syncs them all at once. The window and the quiet interval are
    far longer than the test here, so only the count ends the wait."""
    fsyncs = _counted_fsyncs(monkeypatch)
    monkeypatch.setattr("hsmd.audit.log.GATHER_QUIET_SECONDS", 60.0)
    audit.expect_appends(lambda: 3, gather_seconds=60.0)
    results: list[int] = []

    def call(n: int) -> None:
        results.append(audit.append(_event(n)).size)

    pool = [threading.Thread(target=call, args=(n,)) for n in range(3)]
    for thread in pool:
        thread.start()
        # The next call starts only once this one waits, so each would sync alone otherwise.
        _until(lambda: audit._gathering or len(results) == 3)
    for thread in pool:
        thread.join(30)
    assert len(results) == 3
    assert len(fsyncs) == 1
    assert _outcome(audit.verify()) == events_ok(3)


def test_a_lone_call_never_waits_for_others(
    audit: AuditLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the quiet interval and the window both 60 s, only the count can end a wait: an
    append that waited at all would outlive the bound."""
    fsyncs = _counted_fsyncs(monkeypatch)
    monkeypatch.setattr("hsmd.audit.log.GATHER_QUIET_SECONDS", 60.0)
    audit.expect_appends(lambda: 1, gather_seconds=60.0)
    assert _appended_within(audit, 30.0)  # no call at work but this one
    assert len(fsyncs) == 1


def test_a_call_at_work_that_sends_no_line_costs_one_quiet_interval_not_the_window(
    audit: AuditLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow call at work (an RSA-4096 signature) sends no line for a long time: the leader
    stops waiting once lines stop coming, far inside the 60 s window (the thread would
    otherwise outlive the join), and the event is durable when append returns."""
    fsyncs = _counted_fsyncs(monkeypatch)
    audit.expect_appends(lambda: 2, gather_seconds=60.0)
    assert _appended_within(audit, 30.0)
    assert len(fsyncs) == 1


def test_the_wait_for_others_is_bounded_by_the_window(
    audit: AuditLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    fsyncs = _counted_fsyncs(monkeypatch)
    monkeypatch.setattr("hsmd.audit.log.GATHER_QUIET_SECONDS", 60.0)
    audit.expect_appends(lambda: 2, gather_seconds=0.01)
    assert _appended_within(audit, 30.0)  # the quiet interval (60 s) cannot end this wait
    assert len(fsyncs) == 1


def test_a_log_that_breaks_while_the_leader_waits_fails_its_append(
    audit: AuditLog, path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The leader must not call its line durable once the log says it is broken: it is woken
    and fails as every later append does, and syncs nothing."""
    fsyncs = _counted_fsyncs(monkeypatch)
    monkeypatch.setattr("hsmd.audit.log.GATHER_QUIET_SECONDS", 60.0)
    audit.expect_appends(lambda: 2, gather_seconds=60.0)
    outcome: list[BaseException | None] = []

    def lead() -> None:
        try:
            audit.append(_event(0))
            outcome.append(None)
        except AuditUnavailable as exc:
            outcome.append(exc)

    leader = threading.Thread(target=lead)
    leader.start()
    _until(lambda: audit._gathering)
    os.truncate(path, 0)  # lines cut from the log: the pre-flight finds it broken
    with pytest.raises(AuditUnavailable):
        audit.ensure_writable()
    leader.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], AuditUnavailable)
    assert fsyncs == []


def _appended_within(audit: AuditLog, bound: float) -> bool:
    """Whether an append, in a thread of its own, returned within `bound` seconds."""
    done = threading.Event()
    thread = threading.Thread(target=lambda: (audit.append(_event(0)), done.set()), daemon=True)
    thread.start()
    return done.wait(bound)


def _until(condition: Callable[[], bool], bound: float = 30.0) -> None:
    deadline = time.monotonic() + bound
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true"
        time.sleep(0.001)


def test_an_append_returns_only_after_an_fsync_covers_its_line(
    audit: AuditLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync = os.fsync
    synced_sizes: list[int] = []

    def recording_fsync(fd: int) -> None:
        real_fsync(fd)
        synced_sizes.append(os.fstat(fd).st_size)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    for n in range(3):
        audit.append(_event(n))
        assert synced_sizes[-1] == audit.path.stat().st_size


def test_readers_are_not_confused_by_concurrent_appends(audit: AuditLog) -> None:
    done = threading.Event()

    def write() -> None:
        for n in range(300):
            audit.append(_event(n))
        done.set()

    writer = threading.Thread(target=write)
    writer.start()
    while not done.is_set():
        got, _ = audit.read(limit=1000)
        assert [r.sequence for r in got] == list(range(1, len(got) + 1))
        assert audit.verify().valid
    writer.join()
    assert _outcome(audit.verify()) == events_ok(300)


# Fail closed


def test_a_moved_log_is_unwritable_until_moved_back(audit: AuditLog, tmp_path: Path) -> None:
    audit.ensure_writable()
    aside = tmp_path / "aside.log"
    audit.path.rename(aside)
    with pytest.raises(AuditUnavailable, match="path is gone"):
        audit.ensure_writable()
    aside.rename(audit.path)
    audit.ensure_writable()
    audit.append(_event(1))


def test_a_deleted_log_is_unwritable(audit: AuditLog) -> None:
    audit.path.unlink()
    with pytest.raises(AuditUnavailable):
        audit.ensure_writable()
    with pytest.raises(AuditUnavailable):
        audit.read()


def test_a_replaced_log_is_unwritable(audit: AuditLog, tmp_path: Path) -> None:
    _fill(audit, 2)
    audit.path.rename(tmp_path / "aside.log")
    shutil.copy(tmp_path / "aside.log", audit.path)
    with pytest.raises(AuditUnavailable, match="another file"):
        audit.ensure_writable()
    with pytest.raises(AuditUnavailable, match="another file"):
        audit.verify()
    audit.path.unlink()
    audit.path.mkdir()
    with pytest.raises(AuditUnavailable, match="another file"):
        audit.ensure_writable()


def test_a_nearly_full_disk_is_unwritable(path: Path) -> None:
    with AuditLog(path, min_free_bytes=2**62) as log, pytest.raises(AuditUnavailable):
        log.ensure_writable()


def test_a_closed_descriptor_is_unwritable(path: Path) -> None:
    log = AuditLog(path)
    os.close(log._fd)
    with pytest.raises(AuditUnavailable, match="descriptor unusable"):
        log.ensure_writable()
    with pytest.raises(AuditUnavailable):
        log.append(_event(1))
    log.close()


def _assert_refused_from_now_on(log: AuditLog) -> None:
    with pytest.raises(AuditUnavailable):
        log.append(_event(99))
    with pytest.raises(AuditUnavailable):
        log.ensure_writable()


def test_a_failed_write_refuses_every_later_event(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = AuditLog(path)
    records = _fill(log, 2)

    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patch:
        patch.setattr(os, "write", full)
        with pytest.raises(AuditUnavailable) as raised:
            log.append(_event(3))
    assert isinstance(raised.value, BackendUnavailable)  # UNAVAILABLE at the transport
    _assert_refused_from_now_on(log)
    log.close()
    with AuditLog(path) as restarted:
        assert restarted.append(_event(3)).record.previous_hash == records[-1].hash
        assert _outcome(restarted.verify()) == events_ok(3)


def test_a_write_to_a_read_only_descriptor_fails_closed(audit: AuditLog) -> None:
    read_only = os.open(audit.path, os.O_RDONLY)
    os.dup2(read_only, audit._fd)
    os.close(read_only)
    with pytest.raises(AuditUnavailable, match="write failed"):
        audit.append(_event(1))
    _assert_refused_from_now_on(audit)


def test_a_failed_fsync_refuses_every_later_event(
    audit: AuditLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", broken)
        with pytest.raises(AuditUnavailable, match="fsync failed"):
            audit.append(_event(1))
    _assert_refused_from_now_on(audit)


def _short_write(monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write

    def half(fd: int, data: bytes) -> int:
        return real_write(fd, data[: len(data) // 2])

    monkeypatch.setattr(os, "write", half)


def test_a_short_write_is_cut_off(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = AuditLog(path)
    records = _fill(log, 2)
    with monkeypatch.context() as patch:
        _short_write(patch)
        with pytest.raises(AuditUnavailable, match="short write"):
            log.append(_event(3))
    _assert_refused_from_now_on(log)
    assert path.read_bytes().endswith(b"\n")
    log.close()
    with AuditLog(path) as restarted:
        assert restarted.append(_event(3)).record.previous_hash == records[-1].hash


def test_a_short_write_that_cannot_be_cut_stops_start_up(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = AuditLog(path)
    _fill(log, 2)
    with monkeypatch.context() as patch:
        _short_write(patch)

        def no_truncate(fd: int, length: int) -> None:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        patch.setattr(os, "ftruncate", no_truncate)
        with pytest.raises(AuditUnavailable):
            log.append(_event(3))
    result = log.verify()
    assert (result.valid, result.first_broken_position) == (False, 3)
    log.close()
    with AuditLog(path) as reopened:  # the fragment the failed cut left is set aside
        assert reopened.verify().valid
    assert list(path.parent.glob(f"{path.name}.torn-*"))


def test_a_closed_log_refuses_everything(path: Path) -> None:
    log = AuditLog(path)
    _fill(log, 1)
    log.close()
    log.close()
    _assert_refused_from_now_on(log)
    with pytest.raises(AuditUnavailable):
        log.read()
    with pytest.raises(AuditUnavailable):
        log.verify()


# Reading


def test_read_filters_by_tenant_and_key_and_pages(audit: AuditLog) -> None:
    records = [
        audit.append(_event(n, tenant="ab"[n % 2], key_id=f"k{n % 3}")).record for n in range(30)
    ]

    def pages(**filters: str | None) -> list[RecordedEvent]:
        got: list[RecordedEvent] = []
        cursor: int | None = 0
        while cursor is not None:
            page, cursor = audit.read(after_sequence=cursor, limit=4, **filters)
            assert len(page) <= 4
            got.extend(page)
        return got

    assert pages() == records
    assert pages(tenant="a") == [r for r in records if r.event.tenant == "a"]
    assert pages(key_id="k2") == [r for r in records if r.event.key_id == "k2"]
    assert pages(tenant="b", key_id="k1") == [
        r for r in records if r.event.tenant == "b" and r.event.key_id == "k1"
    ]
    assert pages(tenant="nobody") == []


def test_the_cursor_is_none_exactly_when_nothing_follows(audit: AuditLog) -> None:
    records = _fill(audit, 8)
    assert audit.read(limit=4) == (records[:4], 4)
    assert audit.read(after_sequence=4, limit=4) == (records[4:], None)
    assert audit.read(after_sequence=8, limit=4) == ([], None)


def test_read_rejects_a_bad_page(audit: AuditLog) -> None:
    with pytest.raises(InvalidArgument):
        audit.read(after_sequence=-1)
    with pytest.raises(InvalidArgument):
        audit.read(limit=0)


def test_read_refuses_a_damaged_log(audit: AuditLog) -> None:
    _fill(audit, 3)
    _rewrite(audit.path, _delete(_lines(audit.path), 2))
    with pytest.raises(AuditCorrupt) as raised:
        audit.read()
    assert isinstance(raised.value, InternalError)


# A group of events (a batch call's items)


def test_append_many_chains_a_group_with_one_write_and_one_fsync(
    audit: AuditLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = audit.append(_event(0)).record
    calls: list[str] = []
    real_write, real_fsync = os.write, os.fsync

    def counted_write(fd: int, data: bytes) -> int:
        calls.append("write")
        return real_write(fd, data)

    def counted_fsync(fd: int) -> None:
        calls.append("fsync")
        real_fsync(fd)

    monkeypatch.setattr(os, "write", counted_write)
    monkeypatch.setattr(os, "fsync", counted_fsync)
    appended = audit.append_many([_event(n) for n in range(1, 6)])
    monkeypatch.undo()
    assert calls == ["write", "fsync"]
    records = [a.record for a in appended]
    assert [r.sequence for r in records] == [2, 3, 4, 5, 6]
    assert records[0].previous_hash == first.hash
    assert [a.size for a in appended] == [len(line) for line in _lines(audit.path)[1:]]
    assert audit.append(_event(6)).record.previous_hash == records[-1].hash
    assert audit.verify().valid
    got, _ = audit.read()
    assert got[1:6] == records
    assert audit.append_many([]) == []


def test_append_many_fails_closed_and_writes_none_of_the_group(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = AuditLog(path)
    _fill(log, 2)
    with monkeypatch.context() as patch:
        _short_write(patch)
        with pytest.raises(AuditUnavailable, match="short write"):
            log.append_many([_event(n) for n in range(3, 8)])
    _assert_refused_from_now_on(log)
    with pytest.raises(AuditUnavailable):
        log.append_many([_event(9)])
    assert len(_lines(path)) == 2
    log.close()
