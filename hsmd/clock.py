"""Clocks: the system's, and one moved by an offset file for tests and drills.

Rotation periods and deletion windows are days long; the offset clock lets a test (or an
operator rehearsing a deletion) move the daemon's idea of now without touching the system
clock: now = system time + the number of seconds written in the file. Never configure it in
production.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timedelta
from pathlib import Path

from hsmd.domain import SystemClock

log = logging.getLogger(__name__)


class OffsetClock:
    def __init__(self, offset_file: Path) -> None:
        self._path = offset_file
        self._system = SystemClock()
        self._seen: tuple[int, float] = (-1, 0.0)

    def now(self) -> datetime:
        return self._system.now() + timedelta(seconds=self._offset())

    def _offset(self) -> float:
        """The file's number, re-read only when the file changed; 0 while it is missing."""
        try:
            changed = os.stat(self._path).st_mtime_ns
        except FileNotFoundError:
            return 0.0
        if changed != self._seen[0]:
            text = self._path.read_text().strip()
            try:
                offset = float(text) if text else 0.0
            except ValueError:
                log.error(
                    "clock offset file %s holds %r, not seconds; ignoring it", self._path, text
                )
                offset = 0.0
            self._seen = (changed, offset)
        return self._seen[1]
