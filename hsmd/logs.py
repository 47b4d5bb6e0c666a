"""The daemon's log lines are formatted and written by one thread of their own, in batches.

Every call logs an access line; formatting it (time stamp included) and writing it to stderr
under the handler's lock on the request thread cost about a sixth of a call's GIL time (issue
10's profile). Here a request thread only renders the message and appends the record to a
deque; the writer thread formats every record waiting and writes them with one write. The
writer is woken only when it may be asleep (its event is clear): while it writes one batch,
the lines of many calls gather for the next with one wake-up between them, where a queue woke
it (a futex call pair) for every line. Lines are not lost at a clean stop (close drains the
deque); a kill -9 may lose the last few, which the audit log, written before each reply, does
not depend on.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
from datetime import UTC, datetime
from typing import TextIO

# Lines waiting to be written at most; beyond it (stderr blocked) lines are dropped and counted,
# never queued without bound and never waited for on a request thread.
MAX_WAITING_LINES = 100_000
# How long close() waits for the writer (stderr may be blocked for good).
CLOSE_TIMEOUT_SECONDS = 5.0


class _Enqueue(logging.Handler):
    """Puts the record, with its message and any traceback already rendered (the arguments
    may change once the call goes on), on the writer's deque."""

    def __init__(
        self, records: collections.deque[logging.LogRecord], waiting: threading.Event
    ) -> None:
        super().__init__()
        self._records = records
        self._waiting = waiting
        self.dropped = 0

    def handle(self, record: logging.LogRecord) -> bool:
        # No handler lock: deque.append is atomic, and emit touches nothing else shared
        # (a lost count of dropped lines under a race is harmless).
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if len(self._records) >= MAX_WAITING_LINES:
                self.dropped += 1
                return
            record.msg = record.getMessage()
            record.args = None
            if record.exc_info:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
                record.exc_info = None
            self._records.append(record)
            if not self._waiting.is_set():
                self._waiting.set()
        except Exception:  # a log line must never fail a call
            self.handleError(record)


class BatchingLogWriter:
    """Owns the root logger's output while it runs: start() routes every record through a
    queue to `stream`; close() writes what is left and restores the handlers it replaced."""

    def __init__(self, stream: TextIO, formatter: logging.Formatter) -> None:
        self._stream = stream
        self._formatter = formatter
        self._records: collections.deque[logging.LogRecord] = collections.deque()
        self._waiting = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="hsmd-log", daemon=True)
        self._replaced: list[logging.Handler] = []
        self._handler = _Enqueue(self._records, self._waiting)

    def start(self) -> None:
        root = logging.getLogger()
        self._replaced = list(root.handlers)
        for handler in self._replaced:
            root.removeHandler(handler)
        root.addHandler(self._handler)
        self._thread.start()

    def close(self) -> None:
        root = logging.getLogger()
        root.removeHandler(self._handler)
        for handler in self._replaced:
            root.addHandler(handler)
        self._stopping = True
        self._waiting.set()
        self._thread.join(CLOSE_TIMEOUT_SECONDS)

    def _run(self) -> None:
        while True:
            self._waiting.wait()
            self._waiting.clear()  # before taking: a record appended after the take sets it
            stopping = self._stopping
            self._write(self._take())
            if stopping:
                return

    def _take(self) -> list[logging.LogRecord]:
        records = self._records
        return [records.popleft() for _ in range(len(records))]

    def _write(self, records: list[logging.LogRecord]) -> None:
        """Writes the records; a record that cannot be formatted is written as its bare
        message, and nothing ends the writer (stderr gone: nothing else to tell)."""
        lines = []
        for record in records:
            try:
                lines.append(self._formatter.format(record))
            except Exception:
                lines.append(f"{record.levelname} {record.name}: {record.msg!r}")
        dropped, self._handler.dropped = self._handler.dropped, 0
        if dropped:
            lines.append(f"WARNING hsmd.logs: {dropped} log lines dropped: stderr was blocked")
        if lines:
            try:
                self._stream.write("\n".join(lines) + "\n")
                self._stream.flush()
            except Exception:  # noqa: S110 - stderr gone: nothing else to tell
                pass


class JsonFormatter(logging.Formatter):
    """`[log] format = "json"`: one JSON object a line, for log shippers. Every line has time
    (UTC, ISO 8601), level, logger and message; a call's access line also has request_id,
    tenant, principal, operation, status and duration_ms (the `access` dict the guard passes
    as extra); a traceback is in exception; a worker process's lines name it in worker."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self._worker = worker

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            line.update(access)
        if self._worker is not None:
            line["worker"] = self._worker
        if record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, ensure_ascii=False, default=str)
