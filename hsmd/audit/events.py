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
    tenant                   string, the caller's; for operators the tenant a tenant
                             administration call names, else ""; "" for unauthenticated
    principal                string, "tenant/<t>/<name>", "operator/<name>" or ""
    operation                string, the RPC name, e.g. "Encrypt"
    key_id                   string, "" if the RPC named no key
    key_version              integer, 0 if none
    encryption_context_keys  array of strings, sorted by code point, no duplicates
    outcome                  string, the status code name: "OK", "NOT_FOUND", ...
    peer                     string, the caller's network address
    regions                  array of strings, sorted, no duplicates: the regions a
                             multi-region key's replication involved (both ends). Present
                             only on such events, so lines of other events are unchanged.
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
no secret, so it shows tampering by anyone who does not also rewrite every later line; signed
checkpoints (below) bind the head to a key outside the file.

Other line kinds. An event line has no "kind" member. Two more kinds of line have one; they
obey the same chain rule (sequence = line number, previous_hash, hash over the line without
"hash"), so a verifier walks every line the same way and only then looks at the kind::

    kind = "checkpoint"   members: sequence, kind, time, head_sequence, head_hash, head_offset,
                          offset, public_key_sha256, signature_algorithm, signature,
                          previous_hash, hash
    kind = "reset"        members: sequence, kind, time, archived_log, archived_sequence,
                          archived_hash, previous_hash, hash

A checkpoint says, signed by the daemon's key, that line head_sequence (< sequence, and at most
MAX_CHECKPOINT_LAG lines before it: events can land while the daemon signs) had hash head_hash
and started at byte head_offset of the file. offset is the byte at which the checkpoint line
itself starts. public_key_sha256 is the hex SHA-256 of the key's DER SubjectPublicKeyInfo;
signature_algorithm is "ED25519_SHA_512" (pure Ed25519, 64 bytes) or "ECDSA_SHA_256" (P-256,
DER); signature is lowercase hex. The signature input is::

    ASCII("hsmd audit checkpoint v1") || LF || JCS({head_hash, head_offset, head_sequence,
                                                   public_key_sha256, signature_algorithm, time})

A reset line can only be line 1: it starts a new chain after an operator archived a broken log
(`hsmd audit reset`) and names the archive's file, its last line that verified, and that
line's hash (archived_sequence 0 and the 64 zeros if none did).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Iterable
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
# Members of an event line present only when they hold something (see the format above).
OPTIONAL_EVENT_FIELDS = ("regions",)

_STRING_FIELDS = ("request_id", "tenant", "principal", "operation", "key_id", "outcome", "peer")
_MAX_KEY_VERSION = 2**32 - 1  # uint32 in the API
_HEX_HASH = re.compile(r"[0-9a-f]{64}")
_HEX_SIGNATURE = re.compile(r"(?:[0-9a-f]{2}){1,256}")
_MAX_OFFSET = 2**63 - 1

KIND_CHECKPOINT = "checkpoint"
KIND_RESET = "reset"
CHECKPOINT_FIELDS = (
    "sequence",
    "kind",
    "time",
    "head_sequence",
    "head_hash",
    "head_offset",
    "offset",
    "public_key_sha256",
    "signature_algorithm",
    "signature",
    "previous_hash",
    "hash",
)
RESET_FIELDS = (
    "sequence",
    "kind",
    "time",
    "archived_log",
    "archived_sequence",
    "archived_hash",
    "previous_hash",
    "hash",
)
# The signature algorithms a checkpoint can name, by the API's names for them.
ED25519 = "ED25519_SHA_512"
ECDSA_P256 = "ECDSA_SHA_256"
SIGNATURE_ALGORITHMS = (ED25519, ECDSA_P256)
SIGNATURE_CONTEXT = b"hsmd audit checkpoint v1\n"
# How far before its own line a checkpoint's head may be: the events appended while the daemon
# signed. A verifier keeps this many lines' hashes and offsets, so its memory stays bounded.
MAX_CHECKPOINT_LAG = 10_000
_MAX_ARCHIVED_LOG = 255


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
    regions: tuple[str, ...] = ()

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
        regions: object = self.regions
        if isinstance(regions, str | bytes):
            raise TypeError("regions must be a sequence of strings")
        for region in self.regions:
            _check_text("regions", region)
        object.__setattr__(self, "regions", tuple(sorted(set(self.regions))))
        # Frozen: normalise through object.__setattr__, once, here.
        object.__setattr__(self, "time", self.time.astimezone(UTC))
        object.__setattr__(
            self, "encryption_context_keys", tuple(sorted(set(self.encryption_context_keys)))
        )

    def at(self, moment: datetime) -> AuditEvent:
        """The same event at another time (the log stamps each event as it writes it); the
        other fields were checked when this one was built, so only the time is."""
        if not isinstance(moment, datetime) or moment.utcoffset() is None:
            raise ValueError("an audit event needs a timezone-aware time")
        stamped = copy.copy(self)
        object.__setattr__(stamped, "time", moment.astimezone(UTC))
        return stamped


@dataclass(frozen=True)
class RecordedEvent:
    """An event as the log holds it: its position and its link to the one before."""

    sequence: int
    event: AuditEvent
    previous_hash: str
    hash: str


@dataclass(frozen=True)
class CheckpointStatement:
    """What a checkpoint signs: that line head_sequence, starting at byte head_offset, had
    head_hash at `time`, under the key public_key_sha256 names."""

    head_sequence: int
    head_hash: str
    head_offset: int
    time: datetime
    public_key_sha256: str
    signature_algorithm: str

    def __post_init__(self) -> None:
        if not isinstance(self.time, datetime) or self.time.utcoffset() is None:
            raise ValueError("a checkpoint needs a timezone-aware time")
        _check_count("head_sequence", self.head_sequence, 1)
        _check_count("head_offset", self.head_offset, 0)
        _check_hex_hash("head_hash", self.head_hash)
        _check_hex_hash("public_key_sha256", self.public_key_sha256)
        if self.signature_algorithm not in SIGNATURE_ALGORITHMS:
            raise ValueError(f"signature_algorithm must be one of {SIGNATURE_ALGORITHMS}")
        object.__setattr__(self, "time", self.time.astimezone(UTC))

    def signed_bytes(self) -> bytes:
        """The signature input of the module docstring."""
        return SIGNATURE_CONTEXT + _canonical(
            {
                "head_hash": self.head_hash,
                "head_offset": self.head_offset,
                "head_sequence": self.head_sequence,
                "public_key_sha256": self.public_key_sha256,
                "signature_algorithm": self.signature_algorithm,
                "time": format_time(self.time),
            }
        )


@dataclass(frozen=True)
class CheckpointRecord:
    """A checkpoint line: a signed statement placed in the chain at `sequence`, whose line
    starts at byte `offset`."""

    sequence: int
    statement: CheckpointStatement
    signature: bytes
    offset: int
    previous_hash: str
    hash: str


@dataclass(frozen=True)
class ResetRecord:
    """Line 1 of a chain that an operator started after archiving a broken log."""

    sequence: int
    time: datetime
    archived_log: str
    archived_sequence: int
    archived_hash: str
    previous_hash: str
    hash: str


Record = RecordedEvent | CheckpointRecord | ResetRecord


def chain(event: AuditEvent, sequence: int, previous_hash: str) -> RecordedEvent:
    """Places an event at a position after a hash: the one way a RecordedEvent is made."""
    return chain_line(event, sequence, previous_hash)[0]


def chain_line(event: AuditEvent, sequence: int, previous_hash: str) -> tuple[RecordedEvent, bytes]:
    """chain() and encode_line() in one encoding: the line is the hashed body with the hash
    member put in its sorted place, just before "key_id" (no member between them, and no
    string inside the body can hold the unescaped quotes of ',"key_id":')."""
    body = _canonical(_members(event, sequence, previous_hash))
    digest = hashlib.sha256(previous_hash.encode("ascii") + b"\n" + body).hexdigest()
    at = body.index(_KEY_ID_MEMBER)
    line = b'%s,"hash":"%s"%s\n' % (body[:at], digest.encode("ascii"), body[at:])
    return RecordedEvent(sequence, event, previous_hash, digest), line


_KEY_ID_MEMBER = b',"key_id":'


def compute_hash(event: AuditEvent, sequence: int, previous_hash: str) -> str:
    """hash(n) of the module docstring."""
    body = _canonical(_members(event, sequence, previous_hash))
    return hashlib.sha256(previous_hash.encode("ascii") + b"\n" + body).hexdigest()


def encode_line(record: RecordedEvent) -> bytes:
    """The record's line in the log, LF included."""
    members = _members(record.event, record.sequence, record.previous_hash)
    members["hash"] = record.hash
    return _canonical(members) + b"\n"


def place_checkpoint(
    statement: CheckpointStatement,
    signature: bytes,
    sequence: int,
    offset: int,
    previous_hash: str,
) -> CheckpointRecord:
    """Places a signed statement in the chain at `sequence`, its line starting at `offset`."""
    record = CheckpointRecord(sequence, statement, signature, offset, previous_hash, "")
    _check_record(record)
    digest = _hash_members(_record_members(record), previous_hash)
    return CheckpointRecord(sequence, statement, signature, offset, previous_hash, digest)


def reset_record(
    time: datetime, archived_log: str, archived_sequence: int, archived_hash: str
) -> ResetRecord:
    """Line 1 of a new chain that continues from an archived log.

    Raises:
        ValueError: a value the format cannot hold (a naive time, an empty or overlong file
            name, a negative sequence, a malformed hash).
    """
    if not isinstance(time, datetime) or time.utcoffset() is None:
        raise ValueError("a reset record needs a timezone-aware time")
    record = ResetRecord(
        1, time.astimezone(UTC), archived_log, archived_sequence, archived_hash, GENESIS_HASH, ""
    )
    _check_record(record)
    digest = _hash_members(_record_members(record), GENESIS_HASH)
    return ResetRecord(
        1, record.time, archived_log, archived_sequence, archived_hash, GENESIS_HASH, digest
    )


def record_hash(record: Record) -> str:
    """What the record's hash should be, computed from its other members (hash(n) above)."""
    if isinstance(record, RecordedEvent):
        return compute_hash(record.event, record.sequence, record.previous_hash)
    return _hash_members(_record_members(record), record.previous_hash)


def record_time(record: Record) -> datetime:
    if isinstance(record, RecordedEvent):
        return record.event.time
    if isinstance(record, CheckpointRecord):
        return record.statement.time
    return record.time


def encode_record(record: Record) -> bytes:
    """Any record's line in the log, LF included."""
    if isinstance(record, RecordedEvent):
        return encode_line(record)
    members = _record_members(record)
    members["hash"] = record.hash
    return _canonical(members) + b"\n"


def decode_line(line: bytes) -> RecordedEvent:
    """Parses one event line (with or without its LF) strictly: canonical encoding, exact
    members. decode_record reads lines of every kind.

    Does not check the hash; that needs the line before (see AuditLog.verify).

    Raises:
        MalformedEvent: the line is not valid UTF-8 JSON, lacks or adds a member, holds a value
            of the wrong type, or is not in canonical form.
    """
    raw = line.removesuffix(b"\n")
    record = _decode_event(_parse_object(raw))
    _require_canonical(record, raw)
    return record


def decode_record(line: bytes) -> Record:
    """Parses one line of any kind (with or without its LF) strictly, like decode_line.

    Raises:
        MalformedEvent: the line is not a record of a known kind in canonical form.
    """
    raw = line.removesuffix(b"\n")
    obj = _parse_object(raw)
    kind = obj.get("kind")
    record: Record
    if kind is None:
        record = _decode_event(obj)
    elif kind == KIND_CHECKPOINT:
        record = _decode_checkpoint(obj)
    elif kind == KIND_RESET:
        record = _decode_reset(obj)
    else:
        raise MalformedEvent("kind must be absent (an event), checkpoint or reset")
    _require_canonical(record, raw)
    return record


def _require_canonical(record: Record, raw: bytes) -> None:
    # Values that parse the same but are spelled differently (escapes, spacing, member order,
    # an unsorted key list) would hash the same; insisting on the canonical bytes makes every
    # byte of a line count.
    if encode_record(record) != raw + b"\n":
        raise MalformedEvent("not in canonical form")


def _decode_event(obj: dict[str, Any]) -> RecordedEvent:
    regions = obj.pop(_REGIONS, [])
    _check_members(obj, LINE_FIELDS)
    keys = obj["encryption_context_keys"]
    if not isinstance(keys, list) or not isinstance(regions, list):
        raise MalformedEvent("encryption_context_keys and regions must be arrays")
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
            regions=tuple(regions),
        )
    except (TypeError, ValueError) as exc:
        raise MalformedEvent(str(exc)) from None
    return RecordedEvent(obj["sequence"], event, obj["previous_hash"], obj["hash"])


def _parse_object(raw: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedEvent(f"not a JSON line: {exc}") from None
    if not isinstance(obj, dict):
        raise MalformedEvent("not a JSON object")
    return obj


def _check_members(obj: dict[str, Any], fields: tuple[str, ...]) -> None:
    """Exact members, and the chain members every kind shares, well typed."""
    if set(obj) != set(fields):
        # Member names come from the file: show a bounded number of bounded names.
        missing = sorted(set(fields) - set(obj))
        extra = [name[:40] for name in sorted(set(obj) - set(fields))[:5]]
        raise MalformedEvent(f"wrong members: missing {missing}, unexpected {extra}")
    sequence = obj["sequence"]
    if not isinstance(sequence, int) or isinstance(sequence, bool) or sequence < 1:
        raise MalformedEvent("sequence must be a positive integer")
    for name in ("previous_hash", "hash"):
        if not isinstance(obj[name], str) or not _HEX_HASH.fullmatch(obj[name]):
            raise MalformedEvent(f"{name} must be 64 lowercase hex digits")


def _decode_checkpoint(obj: dict[str, Any]) -> CheckpointRecord:
    _check_members(obj, CHECKPOINT_FIELDS)
    signature = obj["signature"]
    if not isinstance(signature, str) or not _HEX_SIGNATURE.fullmatch(signature):
        raise MalformedEvent("signature must be 1-256 bytes in lowercase hex")
    try:
        statement = CheckpointStatement(
            head_sequence=obj["head_sequence"],
            head_hash=obj["head_hash"],
            head_offset=obj["head_offset"],
            time=_parse_time(obj["time"]),
            public_key_sha256=obj["public_key_sha256"],
            signature_algorithm=obj["signature_algorithm"],
        )
        record = CheckpointRecord(
            obj["sequence"],
            statement,
            bytes.fromhex(signature),
            obj["offset"],
            obj["previous_hash"],
            obj["hash"],
        )
        _check_record(record)
    except (TypeError, ValueError) as exc:
        raise MalformedEvent(str(exc)) from None
    return record


def _decode_reset(obj: dict[str, Any]) -> ResetRecord:
    _check_members(obj, RESET_FIELDS)
    try:
        record = ResetRecord(
            obj["sequence"],
            _parse_time(obj["time"]),
            obj["archived_log"],
            obj["archived_sequence"],
            obj["archived_hash"],
            obj["previous_hash"],
            obj["hash"],
        )
        _check_record(record)
    except (TypeError, ValueError) as exc:
        raise MalformedEvent(str(exc)) from None
    return record


def _check_record(record: CheckpointRecord | ResetRecord) -> None:
    """Raises TypeError or ValueError for a value the format cannot hold."""
    if isinstance(record, CheckpointRecord):
        _check_count("offset", record.offset, 0)
        if not 1 <= len(record.signature) <= 256:
            raise ValueError("a signature is 1-256 bytes")
        return
    if record.time.utcoffset() is None:
        raise ValueError("a reset record needs a timezone-aware time")
    _check_text("archived_log", record.archived_log)
    if not 1 <= len(record.archived_log) <= _MAX_ARCHIVED_LOG or "/" in record.archived_log:
        raise ValueError(f"archived_log must be a file name of 1-{_MAX_ARCHIVED_LOG} characters")
    _check_count("archived_sequence", record.archived_sequence, 0)
    _check_hex_hash("archived_hash", record.archived_hash)


def _check_count(name: str, value: object, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an integer")
    if not low <= value <= _MAX_OFFSET:
        raise ValueError(f"{name} {value} is out of range")


def _check_hex_hash(name: str, value: object) -> None:
    if not isinstance(value, str) or not _HEX_HASH.fullmatch(value):
        raise ValueError(f"{name} must be 64 lowercase hex digits")


def _record_members(record: CheckpointRecord | ResetRecord) -> dict[str, Any]:
    """The members of a checkpoint or reset line without "hash"."""
    if isinstance(record, CheckpointRecord):
        statement = record.statement
        return {
            "sequence": record.sequence,
            "kind": KIND_CHECKPOINT,
            "time": format_time(statement.time),
            "head_sequence": statement.head_sequence,
            "head_hash": statement.head_hash,
            "head_offset": statement.head_offset,
            "offset": record.offset,
            "public_key_sha256": statement.public_key_sha256,
            "signature_algorithm": statement.signature_algorithm,
            "signature": record.signature.hex(),
            "previous_hash": record.previous_hash,
        }
    return {
        "sequence": record.sequence,
        "kind": KIND_RESET,
        "time": format_time(record.time),
        "archived_log": record.archived_log,
        "archived_sequence": record.archived_sequence,
        "archived_hash": record.archived_hash,
        "previous_hash": record.previous_hash,
    }


def _hash_members(members: dict[str, Any], previous_hash: str) -> str:
    return hashlib.sha256(previous_hash.encode("ascii") + b"\n" + _canonical(members)).hexdigest()


def bounded_text(value: str, budget: int) -> str:
    """The value if its JSON encoding takes at most budget bytes, else a stand-in that says
    how long it was and starts its SHA-256: "oversized:<n> characters:sha256:<32 hex>".

    An event records what a caller sent, but never more than hsmd/limits.py allows, even for a
    call refused for that very size (docs/formats.md).
    """
    if len(value) + 2 <= budget and _encodes_as_itself(value):
        return value
    if len(value) <= budget and _encoded_size(value) <= budget:
        return value
    return _stand_in(f"{len(value)} characters", value.encode("utf-8", "surrogatepass"))


def bounded_keys(keys: Iterable[str], budget: int) -> tuple[str, ...]:
    """The keys, sorted, if their JSON array takes at most budget bytes; else one stand-in,
    "oversized:<n> keys:sha256:<32 hex>" over the canonical array."""
    ordered = sorted(set(keys))
    encoded = _canonical_value(ordered)
    if len(encoded) <= budget:
        return tuple(ordered)
    return (_stand_in(f"{len(ordered)} keys", encoded),)


def _stand_in(size: str, data: bytes) -> str:
    return f"oversized:{size}:sha256:{hashlib.sha256(data).hexdigest()[:32]}"


def _encodes_as_itself(value: str) -> bool:
    """True if JSON writes the string as its own characters between two quotes (the usual
    key id or peer), so its encoded size is known without encoding it."""
    return value.isascii() and value.isprintable() and '"' not in value and "\\" not in value


def _encoded_size(value: str) -> int:
    return len(_canonical_value(value))


def _canonical_value(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8", "surrogatepass"
    )


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
    } | ({_REGIONS: list(event.regions)} if event.regions else {})


_REGIONS = OPTIONAL_EVENT_FIELDS[0]


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
