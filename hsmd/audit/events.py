"""Audit events and their one on-disk encoding: canonical JSON lines, each hash-chained.

An event has exactly the fields of AuditEvent and nothing else: identifiers (request, tenant,
principal, key, version), names (operation, outcome), the encryption-context *keys* and the
peer address. There is no field for a payload, a context value, key material, a PIN or a data
key, and no free-form "details" map, so a secret cannot get into the log by accident; it would
take someone putting one into an identifier on purpose.

Format, version 1 (docs/formats.md should carry the same text, for third-party verifiers).

The log is a UTF-8 text file of lines, each ending in LF (0x0A). Line n (from 1) holds the
event with sequence n, as one JSON object with exactly these members::

    sequence                 integer, = the line number
    time                     string, UTC, "YYYY-MM-DDTHH:MM:SS.ffffffZ" (always 6 fraction digits)
    request_id               string
    tenant                   string, "" for operators and unauthenticated callers
    principal                string, "tenant/<t>/<name>", "operator/<name>" or ""
    operation                string, the RPC name, e.g. "Encrypt"
    key_id                   string, "" if the RPC named no key
    key_version              integer, 0 if none
    encryption_context_keys  array of strings, sorted by code point, no duplicates
    outcome                  string, the status code name: "OK", "NOT_FOUND", ...
    peer                     string, the caller's network address
    previous_hash            string, 64 lowercase hex digits
    hash                     string, 64 lowercase hex digits

The encoding is canonical: RFC 8785 (JCS), i.e. members sorted by name, no whitespace, strings
escaped minimally (only `"`, `\\` and control characters; non-ASCII as raw UTF-8), integers
in plain decimal. For the value types above that is exactly Python's
`json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)` encoded as UTF-8.
Raw UTF-8 rather than \\u escapes because JCS says so, which lets any JCS library reproduce the
bytes; strings that are not valid Unicode (lone surrogates) are refused when the event is
built. JSON escapes LF, so no field can split or forge a line.

The chain::

    previous_hash(1)   = "0" * 64
    previous_hash(n+1) = hash(n)
    hash(n) = hex(SHA-256(ASCII(previous_hash(n)) || LF || JCS(line n without "hash")))

A verifier reads line n, checks that it is canonical (re-encoding the parsed object gives the
same bytes), that sequence = n, that previous_hash is the hash of line n-1, and recomputes
hash. Deleting, editing or reordering a line breaks one of these at that line. The chain has
no secret, so it shows tampering by anyone who does not also rewrite every later line; binding
the head to something outside the file (a signed checkpoint) is what would stop that.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

GENESIS_HASH = "0" * 64

# The members of a line, in the order of the dataclasses; "hash" is the one left out of its
# own input.
EVENT_FIELDS = (
    "time",
    "request_id",
    "tenant",
    "principal",
    "operation",
    "key_id",
    "key_version",
    "encryption_context_keys",
    "outcome",
    "peer",
)
LINE_FIELDS = ("sequence", *EVENT_FIELDS, "previous_hash", "hash")

_STRING_FIELDS = ("request_id", "tenant", "principal", "operation", "key_id", "outcome", "peer")
_MAX_KEY_VERSION = 2**32 - 1  # uint32 in the API
_HEX_HASH = re.compile(r"[0-9a-f]{64}")


class MalformedEvent(ValueError):
    """A line is not an event in the canonical encoding above."""


@dataclass(frozen=True)
class AuditEvent:
    """What the caller knows of one RPC outcome; the log adds sequence and hashes.

    Built with an aware time (converted to UTC) and context keys in any order (stored sorted
    and deduplicated, so equal events encode to equal bytes). Raises ValueError or TypeError
    for a value the format cannot hold: a naive time, a non-string, a version outside uint32,
    a string that is not valid Unicode.
    """

    time: datetime
    request_id: str
    tenant: str
    principal: str
    operation: str
    key_id: str
    key_version: int
    encryption_context_keys: tuple[str, ...]
    outcome: str
    peer: str

    def __post_init__(self) -> None:
        if not isinstance(self.time, datetime) or self.time.utcoffset() is None:
            raise ValueError("an audit event needs a timezone-aware time")
        for name in _STRING_FIELDS:
            _check_text(name, getattr(self, name))
        if not isinstance(self.key_version, int) or isinstance(self.key_version, bool):
            raise TypeError("key_version must be an int")
        if not 0 <= self.key_version <= _MAX_KEY_VERSION:
            raise ValueError(f"key_version {self.key_version} is out of range")
        keys: object = self.encryption_context_keys  # typed, but callers may pass anything
        if isinstance(keys, str | bytes):
            # A bare string would be taken apart into one-letter keys.
            raise TypeError("encryption_context_keys must be a sequence of strings")
        for key in self.encryption_context_keys:
            _check_text("encryption_context_keys", key)
        # Frozen: normalise through object.__setattr__, once, here.
        object.__setattr__(self, "time", self.time.astimezone(UTC))
        object.__setattr__(
            self, "encryption_context_keys", tuple(sorted(set(self.encryption_context_keys)))
        )


@dataclass(frozen=True)
class RecordedEvent:
    """An event as the log holds it: its position and its link to the one before."""

    sequence: int
    event: AuditEvent
    previous_hash: str
    hash: str


def chain(event: AuditEvent, sequence: int, previous_hash: str) -> RecordedEvent:
    """Places an event at a position after a hash: the one way a RecordedEvent is made."""
    return RecordedEvent(
        sequence, event, previous_hash, compute_hash(event, sequence, previous_hash)
    )


def compute_hash(event: AuditEvent, sequence: int, previous_hash: str) -> str:
    """hash(n) of the module docstring."""
    body = _canonical(_members(event, sequence, previous_hash))
    return hashlib.sha256(previous_hash.encode("ascii") + b"\n" + body).hexdigest()


def encode_line(record: RecordedEvent) -> bytes:
    """The record's line in the log, LF included."""
    members = _members(record.event, record.sequence, record.previous_hash)
    members["hash"] = record.hash
    return _canonical(members) + b"\n"


def decode_line(line: bytes) -> RecordedEvent:
    """Parses one line (with or without its LF) strictly: canonical encoding, exact members.

    Does not check the hash; that needs the line before (see AuditLog.verify).

    Raises:
        MalformedEvent: the line is not valid UTF-8 JSON, lacks or adds a member, holds a value
            of the wrong type, or is not in canonical form.
    """
    raw = line.removesuffix(b"\n")
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedEvent(f"not a JSON line: {exc}") from None
    if not isinstance(obj, dict):
        raise MalformedEvent("not a JSON object")
    if set(obj) != set(LINE_FIELDS):
        missing = sorted(set(LINE_FIELDS) - set(obj))
        extra = sorted(set(obj) - set(LINE_FIELDS))
        raise MalformedEvent(f"wrong members: missing {missing}, unexpected {extra}")
    sequence = obj["sequence"]
    if not isinstance(sequence, int) or isinstance(sequence, bool) or sequence < 1:
        raise MalformedEvent("sequence must be a positive integer")
    for name in ("previous_hash", "hash"):
        if not isinstance(obj[name], str) or not _HEX_HASH.fullmatch(obj[name]):
            raise MalformedEvent(f"{name} must be 64 lowercase hex digits")
    keys = obj["encryption_context_keys"]
    if not isinstance(keys, list):
        raise MalformedEvent("encryption_context_keys must be an array")
    try:
        event = AuditEvent(
            time=_parse_time(obj["time"]),
            request_id=obj["request_id"],
            tenant=obj["tenant"],
            principal=obj["principal"],
            operation=obj["operation"],
            key_id=obj["key_id"],
            key_version=obj["key_version"],
            encryption_context_keys=tuple(keys),
            outcome=obj["outcome"],
            peer=obj["peer"],
        )
    except (TypeError, ValueError) as exc:
        raise MalformedEvent(str(exc)) from None
    record = RecordedEvent(sequence, event, obj["previous_hash"], obj["hash"])
    # Values that parse the same but are spelled differently (escapes, spacing, member order,
    # an unsorted key list) would hash the same; insisting on the canonical bytes makes every
    # byte of a line count.
    if encode_line(record) != raw + b"\n":
        raise MalformedEvent("not in canonical form")
    return record


def format_time(moment: datetime) -> str:
    """UTC, microseconds always, "Z"; isoformat pads the year, strftime does not everywhere."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _parse_time(text: Any) -> datetime:
    if not isinstance(text, str) or not text.endswith("Z"):
        raise MalformedEvent("time must be an ISO 8601 UTC string ending in Z")
    try:
        moment = datetime.fromisoformat(text[:-1])
    except ValueError as exc:
        raise MalformedEvent(f"time: {exc}") from None
    if moment.tzinfo is not None:
        raise MalformedEvent("time must carry no offset besides Z")
    return moment.replace(tzinfo=UTC)


def _members(event: AuditEvent, sequence: int, previous_hash: str) -> dict[str, Any]:
    return {
        "sequence": sequence,
        "time": format_time(event.time),
        "request_id": event.request_id,
        "tenant": event.tenant,
        "principal": event.principal,
        "operation": event.operation,
        "key_id": event.key_id,
        "key_version": event.key_version,
        "encryption_context_keys": list(event.encryption_context_keys),
        "outcome": event.outcome,
        "peer": event.peer,
        "previous_hash": previous_hash,
    }


def _canonical(members: dict[str, Any]) -> bytes:
    return json.dumps(members, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


def _check_text(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{name} is not valid Unicode") from None
