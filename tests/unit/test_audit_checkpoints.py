"""Signed checkpoints on real files with an in-memory key: when they are written, the file
beside the log, the start-up check, the offline verifier, fail-closed breaks, and reset.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from hsmd.audit import checkpoint as checkpoint_module
from hsmd.audit import events
from hsmd.audit.checkpoint import Checkpointing
from hsmd.audit.errors import AuditBroken, AuditCorrupt, AuditUnavailable
from hsmd.audit.events import AuditEvent, CheckpointRecord, ResetRecord, decode_record
from hsmd.audit.index import MemoryAuditIndex
from hsmd.audit.log import AuditLog
from hsmd.audit.reset import reset_log
from hsmd.audit.verify import CheckpointFileState, VerifyResult, verify_files, verify_lines
from hsmd.backend.pins import DAEMON_PIN_CONTEXT, PinDeriver
from hsmd.errors import InvalidArgument
from hsmd.names import validate_tenant_name

T0 = datetime(2025, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)


class FakeSigner:
    """A CheckpointSigner over an in-memory pyca key (ECDSA P-256 or Ed25519)."""

    def __init__(self, kind: str = "ecdsa") -> None:
        self.kind = kind
        self._key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey = (
            ec.generate_private_key(ec.SECP256R1())
            if kind == "ecdsa"
            else ed25519.Ed25519PrivateKey.generate()
        )
        self.calls = 0
        self.fail = False

    def sign(self, data: bytes) -> bytes:
        self.calls += 1
        if self.fail:
            raise InvalidArgument("the token is away")
        if isinstance(self._key, ec.EllipticCurvePrivateKey):
            return self._key.sign(data, ec.ECDSA(hashes.SHA256()))
        return self._key.sign(data)

    def public_key(self) -> bytes:
        return self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def _event(n: int = 0, **changes: Any) -> AuditEvent:
    values: dict[str, Any] = {
        "time": T0 + timedelta(seconds=n),
        "request_id": f"req{n:04d}",
        "tenant": "acme",
        "principal": "tenant/acme/app",
        "operation": "Encrypt",
        "key_id": "k1",
        "key_version": 1,
        "encryption_context_keys": ("purpose",),
        "outcome": "OK",
        "peer": "ipv4:127.0.0.1:5555",
    }
    values.update(changes)
    return AuditEvent(**values)


class Files:
    def __init__(self, directory: Path) -> None:
        self.log = directory / "audit.jsonl"
        self.checkpoint = directory / "audit.jsonl.checkpoint"
        self.public_key = directory / "audit.jsonl.pub.pem"

    def checkpointing(
        self, signer: FakeSigner, every: int = 1000, interval: float = 3600.0
    ) -> Checkpointing:
        return Checkpointing(signer, self.checkpoint, self.public_key, every, interval)

    def lines(self) -> list[bytes]:
        return self.log.read_bytes().splitlines(keepends=True)

    def records(self) -> list[events.Record]:
        return [decode_record(line) for line in self.lines()]

    def checkpoints(self) -> list[CheckpointRecord]:
        return [r for r in self.records() if isinstance(r, CheckpointRecord)]

    def verify(self, with_checkpoint: bool = True) -> VerifyResult:
        return verify_files(self.log, self.checkpoint if with_checkpoint else None, self.public_key)


@pytest.fixture
def files(tmp_path: Path) -> Files:
    return Files(tmp_path)


@pytest.fixture
def signer() -> FakeSigner:
    return FakeSigner()


@pytest.fixture
def opened(files: Files, signer: FakeSigner) -> Iterator[Callable[..., AuditLog]]:
    """Opens AuditLogs with checkpoints on `files`, and closes them after the test."""
    logs: list[AuditLog] = []

    def make(every: int = 1000, interval: float = 3600.0, **kwargs: Any) -> AuditLog:
        log = AuditLog(
            files.log, checkpoints=files.checkpointing(signer, every, interval), **kwargs
        )
        logs.append(log)
        return log

    yield make
    for log in logs:
        log.close()


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {condition}")
        time.sleep(0.005)


def _fill(log: AuditLog, count: int, start: int = 0) -> None:
    for n in range(start, start + count):
        log.append(_event(n))


def _closed_log(files: Files, signer: FakeSigner, count: int, every: int = 1000) -> None:
    """A log of `count` events, with checkpoints every `every` and one at close."""
    log = AuditLog(files.log, checkpoints=files.checkpointing(signer, every))
    for n in range(count):
        log.append(_event(n))
        if (n + 1) % every == 0:
            _wait_for(lambda: log.checkpoint() is None)  # the due checkpoint is written
    log.close()


def _rewrite(path: Path, lines: list[bytes]) -> None:
    with path.open("r+b") as f:
        f.write(b"".join(lines))
        f.truncate()


def _rehash_from(
    lines: list[bytes],
    start: int,
    change: Callable[[dict[str, Any]], None],
    fix_offsets: bool = True,
) -> list[bytes]:
    """Applies `change` to line `start` (1-based) and recomputes every hash (and checkpoint
    offset) from there on, as someone who can write the file but has no key would: each line
    stays canonical and chained; signatures stay as they were."""
    out = list(lines[: start - 1])
    previous = json.loads(lines[start - 2])["hash"] if start > 1 else events.GENESIS_HASH
    for index in range(start - 1, len(lines)):
        obj = json.loads(lines[index])
        if index == start - 1:
            change(obj)
        if obj.get("kind") == "checkpoint" and fix_offsets:
            obj["offset"] = sum(len(line) for line in out)
        obj["previous_hash"] = previous
        del obj["hash"]
        body = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        obj["hash"] = hashlib.sha256(f"{previous}\n{body}".encode()).hexdigest()
        previous = obj["hash"]
        out.append(
            json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
            + b"\n"
        )
    return out


def _kind(line: bytes) -> str:
    return str(json.loads(line).get("kind", "event"))


# When checkpoints are written


@pytest.mark.parametrize("kind", ["ecdsa", "ed25519"])
def test_a_checkpoint_follows_every_n_events(files: Files, kind: str) -> None:
    signer = FakeSigner(kind)
    log = AuditLog(files.log, checkpoints=files.checkpointing(signer, every=5))
    try:
        _fill(log, 5)
        _wait_for(lambda: len(files.lines()) == 6)
        _fill(log, 4, start=5)
        assert [_kind(line) for line in files.lines()] == ["event"] * 5 + ["checkpoint"] + [
            "event"
        ] * 4  # 4 unsigned events wait for the fifth
        _fill(log, 1, start=9)
        _wait_for(lambda: len(files.lines()) == 12)
    finally:
        log.close()
    first, second = files.checkpoints()
    assert (first.sequence, first.statement.head_sequence) == (6, 5)
    assert (second.sequence, second.statement.head_sequence) == (12, 11)
    assert signer.calls == 2  # never per event, and none at close: nothing new to sign
    assert files.checkpoint.read_bytes() == files.lines()[-1]
    result = files.verify()
    assert result.all_well
    assert (result.checkpoints_verified, result.checkpoint_file) == (2, CheckpointFileState.MATCHED)
    assert result.checkpoint_file_position == 12


def test_a_checkpoint_comes_within_the_interval_of_the_first_unsigned_event(
    files: Files, opened: Callable[..., AuditLog], signer: FakeSigner
) -> None:
    log = opened(every=1000, interval=0.05)
    log.append(_event(1))
    _wait_for(lambda: files.checkpoint.exists())
    assert [_kind(line) for line in files.lines()] == ["event", "checkpoint"]
    assert signer.calls == 1


def test_a_clean_close_signs_the_head_and_a_restart_needs_no_new_checkpoint(
    files: Files, signer: FakeSigner
) -> None:
    _closed_log(files, signer, 3)
    (last,) = files.checkpoints()
    assert (last.sequence, last.statement.head_sequence) == (4, 3)
    assert files.checkpoint.read_bytes() == files.lines()[3]
    with AuditLog(files.log, checkpoints=files.checkpointing(signer)) as again:
        assert again.checkpoint() is None
    assert signer.calls == 1
    assert len(files.lines()) == 4


def test_an_append_costs_one_fsync_and_no_signature(
    files: Files,
    opened: Callable[..., AuditLog],
    signer: FakeSigner,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log = opened(every=1000)
    synced: list[int] = []
    real_fsync = os.fsync

    def counting(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting)
    _fill(log, 20)
    assert len(synced) == 20  # one per sequential append: the checkpoint added none
    assert signer.calls == 0


def test_the_checkpoint_file_is_replaced_atomically_after_its_line_is_durable(
    files: Files, opened: Callable[..., AuditLog], monkeypatch: pytest.MonkeyPatch
) -> None:
    log = opened()
    _fill(log, 2)
    log.checkpoint()
    before = files.checkpoint.read_bytes()
    _fill(log, 1, start=2)
    steps: list[tuple[str, Any]] = []
    real_fsync, real_replace, real_open = os.fsync, os.replace, os.open
    descriptors: dict[int, str] = {}

    def spy_open(path: Any, flags: int, mode: int = 0o777) -> int:
        fd = real_open(path, flags, mode)
        descriptors[fd] = str(path)
        return fd

    def spy_fsync(fd: int) -> None:
        name = descriptors.get(fd, "log" if fd == log._fd else "?")
        if name.endswith(".tmp"):
            # The whole new content is in the temporary file before it is synced and renamed.
            steps.append(("tmp content", Path(name).read_bytes()))
        steps.append(("fsync", name))
        real_fsync(fd)

    def spy_replace(source: Any, target: Any) -> None:
        steps.append(("replace", (str(source), Path(target).read_bytes())))
        real_replace(source, target)

    monkeypatch.setattr(os, "open", spy_open)
    monkeypatch.setattr(os, "fsync", spy_fsync)
    monkeypatch.setattr(os, "replace", spy_replace)
    record = log.checkpoint()
    monkeypatch.undo()
    assert record is not None
    line = events.encode_record(record)
    temporary = str(files.checkpoint.with_name(".audit.jsonl.checkpoint.tmp"))
    assert steps == [
        ("fsync", "log"),  # the checkpoint line is durable in the log first
        ("tmp content", line),
        ("fsync", temporary),
        ("replace", (temporary, before)),  # the old checkpoint stays until the rename
        ("fsync", str(files.checkpoint.parent)),
    ]
    assert files.checkpoint.read_bytes() == line
    assert files.checkpoint.stat().st_mode & 0o777 == 0o600
    assert not Path(temporary).exists()


def test_the_public_key_is_exported_as_pem(
    files: Files, opened: Callable[..., AuditLog], signer: FakeSigner
) -> None:
    opened()
    key = serialization.load_pem_public_key(files.public_key.read_bytes())
    assert (
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        == signer.public_key()
    )


def test_a_failed_signature_is_retried_and_never_stops_the_log(
    files: Files, opened: Callable[..., AuditLog], signer: FakeSigner
) -> None:
    signer.fail = True
    log = opened(every=2, interval=0.05)
    _fill(log, 2)
    _wait_for(lambda: signer.calls >= 2)  # tried, failed, tried again after the interval
    _fill(log, 1, start=2)  # events still go in
    signer.fail = False
    _wait_for(lambda: files.checkpoint.exists())
    assert files.verify().all_well


def test_events_are_timed_under_the_write_lock_with_a_clock(files: Files) -> None:
    class Clock:
        def now(self) -> datetime:
            return T0 + timedelta(days=1)

    with AuditLog(files.log, clock=Clock()) as log:
        record = log.append(_event(0)).record
    assert record.event.time == T0 + timedelta(days=1)
    assert decode_record(files.lines()[0]) == record


def test_concurrent_appends_and_checkpoints_make_one_valid_signed_chain(files: Files) -> None:
    class Wall:
        def now(self) -> datetime:
            return datetime.now(UTC)

    signer = FakeSigner("ed25519")
    log = AuditLog(files.log, clock=Wall(), checkpoints=files.checkpointing(signer, every=7))
    threads, each = 8, 60

    def work(worker: int) -> None:
        for n in range(each):
            log.append(_event(worker * each + n))

    pool = [threading.Thread(target=work, args=(w,)) for w in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    log.close()
    result = files.verify()
    assert result.all_well, result  # no break, and no time going back under contention
    kinds = [_kind(line) for line in files.lines()]
    assert kinds.count("event") == threads * each
    assert kinds[-1] == "checkpoint"
    assert kinds.count("checkpoint") == result.checkpoints_verified == signer.calls
    # Each checkpoint signs at most 7 + the lines that landed while it was signed.
    heads = [c.statement.head_sequence for c in files.checkpoints()]
    assert heads == sorted(heads)


# The offline verifier


def test_a_clean_log_verifies(files: Files, signer: FakeSigner) -> None:
    _closed_log(files, signer, 12, every=5)
    result = files.verify()
    assert result.all_well
    assert result.events_checked == 15  # 12 events, checkpoints after 5, 10 and at close
    assert result.last_checkpoint is not None and result.last_checkpoint.sequence == 15
    assert result.lines_after_last_checkpoint == 0


def test_an_offline_cut_below_the_last_checkpoint_is_found(
    files: Files, signer: FakeSigner
) -> None:
    _closed_log(files, signer, 12, every=5)
    lines = files.lines()
    assert [_kind(lines[n - 1]) for n in (6, 12, 15)] == ["checkpoint"] * 3
    _rewrite(files.log, lines[:9])  # ends after the first checkpoint: a valid chain alone
    assert files.verify(with_checkpoint=False).valid  # without the file nothing shows it
    result = files.verify()
    assert not result.valid
    assert "truncated" in result.problem and "line 15" in result.problem
    assert result.first_broken_position == 10


def test_an_edited_line_rehashed_to_the_end_is_found(files: Files, signer: FakeSigner) -> None:
    _closed_log(files, signer, 12, every=5)

    def edit(obj: dict[str, Any]) -> None:
        obj["principal"] = "tenant/acme/someone-else"

    _rewrite(files.log, _rehash_from(files.lines(), 3, edit))
    result = files.verify()
    assert (result.valid, result.first_broken_position) == (False, 6)  # the first checkpoint
    assert "another hash" in result.problem


def test_an_edit_that_also_moves_the_checkpoints_head_fails_its_signature(
    files: Files, signer: FakeSigner
) -> None:
    _closed_log(files, signer, 12, every=5)
    lines = files.lines()
    edited = _rehash_from(lines, 3, lambda obj: obj.update(principal="tenant/acme/x"))
    # Point the first checkpoint at the new line 5, and re-hash from there on.
    new_head = json.loads(edited[4])["hash"]
    head_offset = sum(len(line) for line in edited[:4])
    edited = _rehash_from(
        edited, 6, lambda obj: obj.update(head_hash=new_head, head_offset=head_offset)
    )
    _rewrite(files.log, edited)
    result = files.verify(with_checkpoint=False)
    assert (result.valid, result.first_broken_position) == (False, 6)
    assert "signature does not verify" in result.problem
    # And with its file: the same, first.
    assert files.verify().first_broken_position == 6


def test_a_forged_checkpoint_signature_is_found(files: Files, signer: FakeSigner) -> None:
    _closed_log(files, signer, 12, every=5)
    lines = files.lines()

    def forge(obj: dict[str, Any]) -> None:
        signature = bytearray.fromhex(obj["signature"])
        signature[10] ^= 1
        obj["signature"] = signature.hex()

    _rewrite(files.log, _rehash_from(lines, 12, forge))
    result = files.verify(with_checkpoint=False)
    assert (result.valid, result.first_broken_position) == (False, 12)
    assert "signature does not verify" in result.problem
    other = FakeSigner()
    files.public_key.write_bytes(checkpoint_module.public_key_pem(other.public_key()))
    result = files.verify()
    assert (result.valid, result.first_broken_position) == (False, 6)
    assert "signed by the key" in result.problem


def test_the_checkpoint_file_missing_or_forged_is_a_problem(
    files: Files, signer: FakeSigner
) -> None:
    _closed_log(files, signer, 3)
    assert files.verify().checkpoint_file is CheckpointFileState.MATCHED
    content = files.checkpoint.read_bytes()
    files.checkpoint.unlink()
    missing = files.verify()
    assert (missing.valid, missing.first_broken_position) == (False, 0)
    assert "is missing" in missing.problem
    not_given = files.verify(with_checkpoint=False)
    assert not_given.valid and not_given.checkpoint_file is CheckpointFileState.NOT_CHECKED
    assert any("not detected" in note for note in not_given.notes)
    obj = json.loads(content)
    obj["head_sequence"] = 2
    files.checkpoint.write_bytes(
        json.dumps(obj, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    )
    assert "hash does not match" in files.verify().problem


def test_time_going_back_is_a_finding_not_a_break(files: Files, signer: FakeSigner) -> None:
    log = AuditLog(files.log, checkpoints=files.checkpointing(signer))
    for seconds in (0, 10, 5, 20, 19):
        log.append(_event(seconds))
    log.close()
    result = files.verify()
    assert result.valid and not result.all_well
    assert result.time_reversal_count == 2
    assert [
        (r.position, r.time, r.previous_position, r.previous_time) for r in result.time_reversals
    ] == [
        (3, T0 + timedelta(seconds=5), 2, T0 + timedelta(seconds=10)),
        (5, T0 + timedelta(seconds=19), 4, T0 + timedelta(seconds=20)),
    ]


def test_a_checkpoint_signed_before_later_events_is_not_a_time_reversal(files: Files) -> None:
    """Events land while a checkpoint is signed, so its time is before theirs."""

    class Ticking:
        def __init__(self) -> None:
            self.moment = T0

        def now(self) -> datetime:
            self.moment += timedelta(seconds=1)
            return self.moment

    signer = FakeSigner()
    log = AuditLog(files.log, clock=Ticking(), checkpoints=files.checkpointing(signer))
    original = signer.sign

    def slow_sign(data: bytes) -> bytes:
        log.append(_event(0))  # appended while the token signs
        return original(data)

    log.append(_event(0))
    signer.sign = slow_sign  # type: ignore[method-assign]
    record = log.checkpoint()
    signer.sign = original  # type: ignore[method-assign]
    log.append(_event(0))
    log.close()
    assert record is not None
    assert (record.sequence, record.statement.head_sequence) == (3, 1)  # one line of lag
    times = [events.record_time(r) for r in files.records()]
    assert times[2] < times[1]  # the checkpoint was signed before line 2 was written
    result = files.verify()
    assert result.all_well and result.checkpoints_verified == 2, result


def test_an_old_log_without_checkpoints_still_verifies(files: Files, signer: FakeSigner) -> None:
    with AuditLog(files.log) as old:
        _fill(old, 4)
    files.public_key.write_bytes(checkpoint_module.public_key_pem(signer.public_key()))
    result = files.verify()
    assert result.all_well and result.checkpoints_verified == 0
    assert result.checkpoint_file is CheckpointFileState.NONE_YET
    assert any("no checkpoint" in note for note in result.notes)


def test_line_kinds_are_decoded_strictly(files: Files, signer: FakeSigner) -> None:
    _closed_log(files, signer, 1)
    checkpoint_line = files.lines()[1].decode().rstrip("\n")
    for mangled in (
        checkpoint_line.replace('"kind":"checkpoint"', '"kind":"snapshot"'),
        checkpoint_line.replace('"offset":', '"offset":-'),
        checkpoint_line.replace('"signature":"', '"signature":"A'),
        checkpoint_line.replace('"signature_algorithm":"', '"signature_algorithm":"X'),
        checkpoint_line.replace('"head_sequence":1', '"head_sequence":0'),
        checkpoint_line[:-1] + ',"extra":1}',
    ):
        with pytest.raises(events.MalformedEvent):
            decode_record(mangled.encode())


def test_a_checkpoint_must_lie_where_it_says_and_name_a_head_before_it(
    files: Files, signer: FakeSigner
) -> None:
    _closed_log(files, signer, 2)
    lines = files.lines()
    moved = _rehash_from(
        lines, 3, lambda obj: obj.update(offset=obj["offset"] + 1), fix_offsets=False
    )
    result = verify_lines(moved, public_key=signer.public_key(), checkpoint_file=None)
    assert (result.valid, result.first_broken_position) == (False, 3)
    assert "starts at byte" in result.problem
    ahead = _rehash_from(lines, 3, lambda obj: obj.update(head_sequence=3))
    result = verify_lines(ahead, public_key=signer.public_key(), checkpoint_file=None)
    assert "signs line 3" in result.problem


def test_a_reset_record_only_starts_a_chain(files: Files) -> None:
    record = events.reset_record(T0, "old.jsonl", 0, events.GENESIS_HASH)
    line = events.encode_record(record)
    assert verify_lines([line], public_key=None, checkpoint_file=None).chain_start == record
    with AuditLog(files.log) as log:
        log.append(_event(0))
        with pytest.raises(InvalidArgument):
            log.start_chain("old.jsonl", 0, events.GENESIS_HASH)
    second = events.encode_line(events.chain(_event(1), 1, events.GENESIS_HASH))
    relinked = _rehash_from([second, line], 2, lambda obj: obj.update(sequence=2))
    result = verify_lines(relinked, public_key=None, checkpoint_file=None)
    assert (result.valid, result.first_broken_position) == (False, 2)
    assert "only be line 1" in result.problem


# Start-up


def test_start_up_refuses_a_log_cut_below_its_checkpoint(files: Files, signer: FakeSigner) -> None:
    _closed_log(files, signer, 6, every=3)
    _rewrite(files.log, files.lines()[:5])
    with pytest.raises(AuditBroken) as refused:
        AuditLog(files.log, checkpoints=files.checkpointing(signer))
    message = str(refused.value)
    assert str(files.log) in message and str(files.checkpoint) in message
    assert "was cut" in message and "line 8" in message and "hsmd audit reset" in message


def test_start_up_refuses_a_deleted_log(files: Files, signer: FakeSigner) -> None:
    _closed_log(files, signer, 2)
    files.log.unlink()
    with pytest.raises(AuditBroken, match="was cut: it has 0 bytes"):
        AuditLog(files.log, checkpoints=files.checkpointing(signer))


def test_start_up_refuses_a_rewritten_log(files: Files, signer: FakeSigner) -> None:
    _closed_log(files, signer, 6, every=3)
    _rewrite(files.log, _rehash_from(files.lines(), 2, lambda obj: obj.update(key_id="k2")))
    with pytest.raises(AuditBroken, match="rewritten"):
        AuditLog(files.log, checkpoints=files.checkpointing(signer))


def test_start_up_refuses_a_missing_checkpoint_file_if_the_log_has_checkpoints(
    files: Files, signer: FakeSigner
) -> None:
    _closed_log(files, signer, 2)
    files.checkpoint.unlink()
    with pytest.raises(AuditBroken, match=r"is missing.*line 3"):
        AuditLog(files.log, checkpoints=files.checkpointing(signer))


def test_start_up_refuses_a_forged_checkpoint_file_or_another_key(
    files: Files, signer: FakeSigner
) -> None:
    _closed_log(files, signer, 2)
    with pytest.raises(AuditBroken, match="holds the key"):
        AuditLog(files.log, checkpoints=files.checkpointing(FakeSigner()))

    def forge(obj: dict[str, Any]) -> None:
        signature = bytearray.fromhex(obj["signature"])
        signature[-1] ^= 1
        obj["signature"] = signature.hex()

    # A self-consistent line (its hash recomputed), but not signed by the key.
    lines = files.lines()
    files.checkpoint.write_bytes(_rehash_from(lines, 3, forge)[2])
    with pytest.raises(AuditBroken, match="does not verify"):
        AuditLog(files.log, checkpoints=files.checkpointing(signer))


def test_start_up_adopts_an_old_log_and_signs_it_soon(
    files: Files, signer: FakeSigner, caplog: pytest.LogCaptureFixture
) -> None:
    with AuditLog(files.log) as old:
        _fill(old, 3)
    with caplog.at_level(logging.WARNING):
        log = AuditLog(files.log, checkpoints=files.checkpointing(signer, interval=0.05))
    try:
        assert "no checkpoint yet" in caplog.text
        _wait_for(lambda: files.checkpoint.exists())
    finally:
        log.close()
    assert files.checkpoints()[0].statement.head_sequence == 3
    assert files.verify().all_well


def test_start_up_reads_a_few_kilobytes_whatever_the_size_of_the_log(
    files: Files, signer: FakeSigner, monkeypatch: pytest.MonkeyPatch
) -> None:
    with AuditLog(files.log, checkpoints=files.checkpointing(signer)) as log:
        _fill(log, 3000)
    assert files.log.stat().st_size > 1_000_000
    read = 0
    real_pread = os.pread

    def counting(fd: int, length: int, offset: int) -> bytes:
        nonlocal read
        data = real_pread(fd, length, offset)
        read += len(data)
        return data

    monkeypatch.setattr(os, "pread", counting)
    with AuditLog(files.log, checkpoints=files.checkpointing(signer)):
        pass
    assert read < 150_000  # the tail, the checkpoint line and its head, in 64 KiB reads at most


# Fail closed while running


def test_a_live_cut_found_by_verify_stops_the_log(
    files: Files, opened: Callable[..., AuditLog], caplog: pytest.LogCaptureFixture
) -> None:
    log = opened(every=3)
    _fill(log, 3)
    _wait_for(lambda: files.checkpoint.exists())
    _fill(log, 2, start=3)
    log.ensure_writable()
    with files.log.open("r+b") as f:
        f.truncate(len(b"".join(files.lines()[:2])))
    log.ensure_writable(check_length=False)  # VerifyAuditLog's pre-flight lets it report
    with caplog.at_level(logging.ERROR):
        result = log.verify()
        assert not result.valid and "truncated" in result.problem
        # verify itself stopped the log (no write or length check has run since).
        with pytest.raises(AuditUnavailable, match="broken: line 3: log truncated"):
            log.ensure_writable(check_length=False)
        size = files.log.stat().st_size
        with pytest.raises(AuditUnavailable):
            log.append(_event(9))
        for check_length in (True, False):
            with pytest.raises(AuditUnavailable, match="broken"):
                log.ensure_writable(check_length=check_length)
        with pytest.raises(AuditUnavailable):
            log.checkpoint()
    assert files.log.stat().st_size == size  # nothing more was written
    assert caplog.text.count("is broken") == 1


def test_the_pre_flight_finds_a_cut_log(files: Files, opened: Callable[..., AuditLog]) -> None:
    log = opened()
    _fill(log, 3)
    with files.log.open("r+b") as f:
        f.truncate(10)
    with pytest.raises(AuditUnavailable, match="cut from its end"):
        log.ensure_writable()
    with pytest.raises(AuditUnavailable, match="broken"):
        log.ensure_writable(check_length=False)


def test_nothing_is_appended_to_a_file_someone_else_wrote_to(
    files: Files, opened: Callable[..., AuditLog]
) -> None:
    log = opened()
    _fill(log, 2)
    with files.log.open("ab") as f:
        f.write(b"{}\n")
    before = files.log.read_bytes()
    with pytest.raises(AuditUnavailable, match="someone else"):
        log.append(_event(5))
    assert files.log.read_bytes() == before


def test_a_read_that_finds_a_bad_line_stops_the_log(
    files: Files, opened: Callable[..., AuditLog]
) -> None:
    log = opened()
    _fill(log, 3)
    lines = files.lines()
    _rewrite(files.log, [lines[0], lines[1].replace(b'"acme"', b'"acm\\u0065"'), lines[2]])
    with pytest.raises(AuditCorrupt):
        log.read()
    with pytest.raises(AuditUnavailable, match="broken"):
        log.ensure_writable()


# Reset


def test_reset_archives_a_broken_log_and_starts_a_chain_that_names_it(
    files: Files, signer: FakeSigner
) -> None:
    _closed_log(files, signer, 6, every=3)
    cut = files.lines()[:6]
    _rewrite(files.log, cut)

    class Clock:
        def now(self) -> datetime:
            return T0

    outcome = reset_log(files.log, files.checkpointing(signer), Clock(), MemoryAuditIndex())
    suffix = ".archived-20250304T050607Z"
    archive = files.log.with_name(files.log.name + suffix)
    assert [(a.name, b.name) for a, b in outcome.archived] == [
        ("audit.jsonl", "audit.jsonl" + suffix),
        ("audit.jsonl.checkpoint", "audit.jsonl.checkpoint" + suffix),
        ("audit.jsonl.pub.pem", "audit.jsonl.pub.pem" + suffix),
    ]
    assert archive.read_bytes() == b"".join(cut)  # nothing is cut or changed
    assert outcome.verification is not None and "truncated" in outcome.verification.problem
    first, second = files.records()
    assert isinstance(first, ResetRecord) and isinstance(second, CheckpointRecord)
    assert (first.archived_log, first.archived_sequence) == (archive.name, 6)
    assert first.archived_hash == json.loads(cut[-1])["hash"]
    result = files.verify()
    assert result.all_well and result.chain_start == first
    archived = verify_files(
        archive,
        files.checkpoint.with_name(files.checkpoint.name + suffix),
        files.public_key.with_name(files.public_key.name + suffix),
    )
    assert not archived.valid and "truncated" in archived.problem
    with AuditLog(files.log, checkpoints=files.checkpointing(signer)) as again:
        again.append(_event(1))
    with pytest.raises(AuditUnavailable, match="exists already"):
        reset_log(files.log, files.checkpointing(signer), Clock(), MemoryAuditIndex())


# The daemon's token PINs


def test_the_daemon_pin_context_is_no_tenant_name() -> None:
    with pytest.raises(InvalidArgument):
        validate_tenant_name(DAEMON_PIN_CONTEXT)
    pins = PinDeriver(b"m" * 32)
    assert pins.daemon_user_pin() not in {pins.user_pin("hsmd"), pins.user_pin("daemon")}
    assert pins.daemon_user_pin() != pins.daemon_so_pin()
