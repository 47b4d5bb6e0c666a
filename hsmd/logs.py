"""The daemon's log lines are formatted and written by one thread of their own, in batches.

Every call logs an access line; formatting it (time stamp included) and writing it to stderr
under the handler's lock on the request thread cost about a sixth of a call's GIL time (issue
10's profile). Here a request thread only queues the record; the writer thread formats every
record waiting and writes them with one write. Lines are not lost at a clean stop (close drains
the queue); a kill -9 may lose the last few, which the audit log, written before each reply,
does not depend on.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import TextIO

_STOP = None
# Lines waiting to be written at most; beyond it (stderr blocked) lines are dropped and counted,
# never queued without bound and never waited for on a request thread.
MAX_WAITING_LINES = 100_000
# How long close() waits for the writer (stderr may be blocked for good).
CLOSE_TIMEOUT_SECONDS = 5.0


class _Enqueue(logging.Handler):
    """Puts the record, with its message and any traceback already rendered (the arguments
    may change once the call goes on), on the writer's queue."""

    def __init__(self, records: queue.Queue[logging.LogRecord | None]) -> None:
        super().__init__()
        self._records = records
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            record.msg = record.getMessage()
            record.args = None
            if record.exc_info:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
                record.exc_info = None
            self._records.put_nowait(record)
        except queue.Full:
            self.dropped += 1
        except Exception:  # a log line must never fail a call
            self.handleError(record)


class BatchingLogWriter:
    """Owns the root logger's output while it runs: start() routes every record through a
    queue to `stream`; close() writes what is left and restores the handlers it replaced."""

    def __init__(self, stream: TextIO, formatter: logging.Formatter) -> None:
        self._stream = stream
        self._formatter = formatter
        self._records: queue.Queue[logging.LogRecord | None] = queue.Queue(MAX_WAITING_LINES)
        self._thread = threading.Thread(target=self._run, name="hsmd-log", daemon=True)
        self._replaced: list[logging.Handler] = []
        self._handler = _Enqueue(self._records)

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
        self._records.put(_STOP, timeout=CLOSE_TIMEOUT_SECONDS)
        self._thread.join(CLOSE_TIMEOUT_SECONDS)

    def _run(self) -> None:
        while True:
            batch = [self._records.get()]
            while not self._records.empty() and batch[-1] is not _STOP:
                batch.append(self._records.get())
            self._write([record for record in batch if record is not None])
            if batch[-1] is _STOP:
                return

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
