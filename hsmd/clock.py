"""Clocks: the system's, one moved by an offset file for tests and drills, and the guard
that keeps lifecycle decisions from running on a clock set back.

Rotation periods and deletion windows are days long; the offset clock lets a test (or an
operator rehearsing a deletion) move the daemon's idea of now without touching the system
clock: now = system time + the number of seconds written in the file. Never configure it in
production.
"""

from __future__ import annotations

import logging
import os
import threading
from datetime import datetime, timedelta
from pathlib import Path

from hsmd.domain import Clock, SystemClock

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


class GuardedClock:
    """The clock that key lifecycle decisions read: never earlier than the latest time the
    daemon has acted at (its high-water mark, kept in the store across restarts).

    A system clock set back would otherwise let a deletion scheduled meanwhile be carried out
    as soon as the clock is corrected (0 real days of a 7-day window), and would carry out
    deletions and expiries a second time by the wrong calendar. So while the clock reads earlier
    than the mark, now() answers the mark (a window scheduled then is at least as long as
    asked), behind() says so, and the maintenance pass logs it loudly, audits it and holds
    back destructive work until the clock has passed the mark again. Small steps back (NTP
    slewing) below `tolerance` are not reported.
    """

    def __init__(
        self,
        inner: Clock,
        high_water: datetime | None,
        tolerance: timedelta = timedelta(seconds=1),
    ) -> None:
        self._inner = inner
        self._tolerance = tolerance
        self._lock = threading.Lock()
        self._high_water = high_water

    def now(self) -> datetime:
        reading = self._inner.now()
        with self._lock:
            if self._high_water is None or reading > self._high_water:
                self._high_water = reading
                return reading
            return self._high_water

    def behind(self) -> tuple[datetime, datetime] | None:
        """(the clock's reading, the high-water mark) while the clock reads earlier than the
        mark by more than the tolerance; None otherwise."""
        reading = self._inner.now()
        with self._lock:
            mark = self._high_water
        if mark is not None and reading < mark - self._tolerance:
            return reading, mark
        return None

    @property
    def system(self) -> Clock:
        """The clock as it reads (certificate validity, audit times: what the clock said)."""
        return self._inner

    @property
    def high_water(self) -> datetime | None:
        with self._lock:
            return self._high_water
