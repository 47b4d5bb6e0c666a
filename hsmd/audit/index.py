"""Where each event's line is in the audit log, by tenant and key, so a page is found without
reading the log from its start.

The log is the truth and the index is derived from it: an entry says that the line with a
sequence starts at a byte offset and has a length, and which tenant and key its event names
(checkpoint and reset lines are indexed as positions only). The index remembers the last line
it holds, with its hash; on start the log checks that line against the file and indexes only
what follows it (after a kill -9, the lines whose entries were still in memory), or, if the
line does not match (another log, a reset, a damaged or missing index file), drops the index
and builds it again from the whole log. A reader still checks each line it reads against its
entry, so a wrong index is found, never served.

The daemon keeps its index in a small SQLite file beside the log (hsmd/keystore/audit_index.py);
MemoryAuditIndex serves tests and the offline tools, which build it at open.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class IndexedLine:
    """One line of the log: where it is, its hash, and for an event its tenant and key id
    (tenant None for a checkpoint or reset line)."""

    sequence: int
    offset: int
    length: int
    hash: str
    tenant: str | None
    key_id: str


@dataclass(frozen=True)
class LineLocation:
    sequence: int
    offset: int
    length: int


class AuditIndex(Protocol):
    """Event locations by sequence, tenant and key. Implementations raise AuditIndexFailed
    (hsmd.audit.errors) when they cannot read or write their store."""

    def last(self) -> IndexedLine | None:
        """The last line added (of any kind), or None for an empty index."""

    def add(self, lines: Sequence[IndexedLine]) -> None:
        """Adds lines that follow last(), in order."""

    def find(
        self, after_sequence: int, limit: int, tenant: str | None, key_id: str | None
    ) -> list[LineLocation]:
        """Up to limit events with sequence > after_sequence, in order; None matches any."""

    def clear(self) -> None:
        """Drops every entry: the index is built again from the log."""

    def close(self) -> None: ...


def index_path_for(log_path: Path) -> Path:
    """Where the daemon keeps a log's index: beside it, "<log>.index"."""
    return log_path.with_name(log_path.name + ".index")


class MemoryAuditIndex:
    """An AuditIndex in memory: one sorted list of locations per filter."""

    def __init__(self) -> None:
        self._last: IndexedLine | None = None
        self._by: defaultdict[tuple[str | None, str | None], list[LineLocation]] = defaultdict(list)

    def last(self) -> IndexedLine | None:
        return self._last

    def add(self, lines: Sequence[IndexedLine]) -> None:
        for line in lines:
            if line.tenant is not None:
                location = LineLocation(line.sequence, line.offset, line.length)
                for tenant in (None, line.tenant):
                    for key_id in (None, line.key_id):
                        self._by[(tenant, key_id)].append(location)
            self._last = line

    def find(
        self, after_sequence: int, limit: int, tenant: str | None, key_id: str | None
    ) -> list[LineLocation]:
        locations = self._by.get((tenant, key_id), [])
        start = bisect.bisect_right(locations, after_sequence, key=lambda found: found.sequence)
        return locations[start : start + limit]

    def clear(self) -> None:
        self._last = None
        self._by.clear()

    def close(self) -> None:
        self.clear()
