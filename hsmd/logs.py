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


class _Enqueue(logging.Handler):
    """Puts the record, with its message and any traceback already rendered (the arguments
    may change once the call goes on), on the writer's queue."""

    def __init__(self, records: queue.SimpleQueue[logging.LogRecord | None]) -> None:
        super().__init__()
        self._records = records

    def emit(self, record: logging.LogRecord) -> None:
        try:
            record.msg = record.getMessage()
            record.args = None
            if record.exc_info:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
                record.exc_info = None
            self._records.put(record)
        except Exception:  # a log line must never fail a call
            self.handleError(record)


class BatchingLogWriter:
    """Owns the root logger's output while it runs: start() routes every record through a
    queue to `stream`; close() writes what is left and restores the handlers it replaced."""

    def __init__(self, stream: TextIO, formatter: logging.Formatter) -> None:
        self._stream = stream
        self._formatter = formatter
        self._records: queue.SimpleQueue[logging.LogRecord | None] = queue.SimpleQueue()
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
        self._records.put(_STOP)
        self._thread.join()

    def _run(self) -> None:
        while True:
            batch = [self._records.get()]
            while not self._records.empty() and batch[-1] is not _STOP:
                batch.append(self._records.get())
            lines = [self._formatter.format(record) for record in batch if record is not None]
            if lines:
                try:
                    self._stream.write("\n".join(lines) + "\n")
                    self._stream.flush()
                except (OSError, ValueError):  # stderr gone: nothing else to tell
                    pass
            if batch[-1] is _STOP:
                return
