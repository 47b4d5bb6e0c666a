"""Envelope encryption of data of any size: the HSME message format (docs/envelope.md).

Direct encryption stops at 4 KB; larger data is encrypted here, in the client, under a fresh
data key that hsmd makes (GenerateDataKey) and keeps only encrypted in the message. The format
follows the AWS Encryption SDK's message format (version 2, with key commitment) and Tink's
streaming AEAD:

- A header: format version, a random 32-byte message id, the frame size, the encryption
  context, one encrypted data key per wrapping key (any one of them decrypts), a key
  commitment and a tag over all of it.
- A body of frames of `frame_size` plaintext bytes, each sealed with AES-256-GCM under a key
  derived for this message alone (HKDF-SHA-512 of the data key, salted with the message id),
  its nonce its sequence number, its associated data the message id, its sequence number,
  its length and whether it is the final frame. So a truncated message, a dropped, repeated
  or reordered frame, a frame from another message and a changed header all fail to verify.
- Key commitment: the same HKDF derives a 32-byte commitment stored in the header and checked
  before anything is decrypted, so one message cannot decrypt to two plaintexts under two
  data keys.

Streams run in constant memory (one frame at a time). decrypt_file writes to a temporary
file beside its destination and renames it only once the final frame has verified; a stream
destination (stdout) gets each frame once it has verified, and an error at the end means the
output so far must be discarded.

Every function takes an HsmClient (or anything with its generate_data_key, encrypt and decrypt
methods). A DataKeyCache lets several messages share one data key within bounds of age,
messages and bytes (each message still gets its own derived key).
"""

from __future__ import annotations

import hmac
import io
import os
import secrets
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from hsmclient.client import DataKey, DecryptResult, EncryptResult
from hsmclient.errors import HsmError

__all__ = [
    "DEFAULT_FRAME_SIZE",
    "DataKeyCache",
    "Decrypted",
    "EncryptedKey",
    "EnvelopeError",
    "EnvelopeHeader",
    "decrypt",
    "decrypt_file",
    "decrypt_stream",
    "encrypt",
    "encrypt_file",
    "encrypt_stream",
]

MAGIC = b"HSME"
VERSION = 1
# AES-256-GCM frames, HKDF-SHA-512 key derivation with a key commitment.
SUITE = 1
DEFAULT_FRAME_SIZE = 64 * 1024
MIN_FRAME_SIZE = 1024
MAX_FRAME_SIZE = 16 * 1024 * 1024
MAX_KEYS = 16
MAX_CONTEXT_PAIRS = 64
MAX_CONTEXT_BYTES = 8 * 1024
MAX_KEY_BLOB = 8 * 1024
_ID_SIZE = 32
_TAG_SIZE = 16
_KEY_SIZE = 32
_FINAL = 0xFFFF_FFFF
_MAX_SEQUENCE = 0xFFFF_FFFE


class EnvelopeError(Exception):
    """The message is not a valid HSME message, was changed, is cut short, or no key it was
    encrypted under could be used; nothing it holds is to be trusted."""


class DataKeys(Protocol):
    """What envelope encryption needs of a client (hsmclient.HsmClient has it)."""

    def generate_data_key(
        self,
        key_id: str,
        key_spec: str | None = None,
        number_of_bytes: int | None = None,
        encryption_context: Mapping[str, str] | None = None,
    ) -> DataKey: ...

    def encrypt(
        self,
        key_id: str,
        plaintext: bytes,
        encryption_context: Mapping[str, str] | None = None,
        encryption_algorithm: str = "SYMMETRIC_DEFAULT",
    ) -> EncryptResult: ...

    def decrypt(
        self,
        ciphertext_blob: bytes,
        encryption_context: Mapping[str, str] | None = None,
        key_id: str | None = None,
        encryption_algorithm: str | None = None,
    ) -> DecryptResult: ...


@dataclass(frozen=True)
class EncryptedKey:
    """The data key encrypted under one key of hsmd's (the blob of GenerateDataKey or Encrypt)."""

    key_id: str
    ciphertext_blob: bytes


@dataclass(frozen=True)
class EnvelopeHeader:
    """What a message says of itself (docs/envelope.md); authenticated, not secret."""

    message_id: bytes
    frame_size: int
    encryption_context: dict[str, str]
    encrypted_keys: tuple[EncryptedKey, ...]
    commitment: bytes


@dataclass(frozen=True)
class Decrypted:
    """A message's plaintext (left out of repr()) and its header."""

    plaintext: bytes = field(repr=False)
    header: EnvelopeHeader


@dataclass
class _Entry:
    data_key: bytes = field(repr=False)
    encrypted_keys: tuple[EncryptedKey, ...]
    made: float
    messages: int = 0
    bytes: int = 0


class DataKeyCache:
    """Data keys kept for reuse by several messages, each for at most max_age_seconds,
    max_messages messages and max_bytes plaintext bytes (checked before a message starts),
    as the AWS Encryption SDK's caching materials manager does. Decryption keeps the data
    keys it recovered for the same age. Thread-safe. Every message still derives its own key
    from the data key and its random message id."""

    def __init__(
        self,
        max_age_seconds: float,
        max_messages: int = 2**32,
        max_bytes: int = 2**62,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_age_seconds <= 0 or max_messages < 1 or max_bytes < 1:
            raise ValueError("a data-key cache needs a positive age, messages and bytes")
        self._max_age = max_age_seconds
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._encrypting: dict[tuple[object, ...], _Entry] = {}
        self._decrypting: dict[tuple[object, ...], _Entry] = {}

    def _for_encryption(self, name: tuple[object, ...]) -> _Entry | None:
        with self._lock:
            entry = self._encrypting.get(name)
            if entry is None or not self._usable(entry):
                self._encrypting.pop(name, None)
                return None
            entry.messages += 1
            return entry

    def _keep_for_encryption(self, name: tuple[object, ...], entry: _Entry) -> None:
        with self._lock:
            entry.messages = 1
            self._encrypting[name] = entry

    def _count_bytes(self, entry: _Entry, size: int) -> None:
        with self._lock:
            entry.bytes += size

    def _for_decryption(self, name: tuple[object, ...]) -> bytes | None:
        with self._lock:
            entry = self._decrypting.get(name)
            if entry is None or self._clock() - entry.made >= self._max_age:
                self._decrypting.pop(name, None)
                return None
            return entry.data_key

    def _keep_for_decryption(self, name: tuple[object, ...], data_key: bytes) -> None:
        with self._lock:
            self._decrypting[name] = _Entry(data_key, (), self._clock())

    def _usable(self, entry: _Entry) -> bool:
        return (
            self._clock() - entry.made < self._max_age
            and entry.messages < self._max_messages
            and entry.bytes < self._max_bytes
        )


# Encrypting


def encrypt(
    client: DataKeys,
    key_ids: str | Sequence[str],
    plaintext: bytes,
    encryption_context: Mapping[str, str] | None = None,
    *,
    frame_size: int = DEFAULT_FRAME_SIZE,
    cache: DataKeyCache | None = None,
) -> bytes:
    """The HSME message of plaintext, decryptable with any one of key_ids."""
    out = io.BytesIO()
    encrypt_stream(
        client,
        key_ids,
        io.BytesIO(plaintext),
        out,
        encryption_context,
        frame_size=frame_size,
        cache=cache,
    )
    return out.getvalue()


def encrypt_stream(
    client: DataKeys,
    key_ids: str | Sequence[str],
    source: BinaryIO,
    destination: BinaryIO,
    encryption_context: Mapping[str, str] | None = None,
    *,
    frame_size: int = DEFAULT_FRAME_SIZE,
    cache: DataKeyCache | None = None,
    progress: Callable[[int], None] | None = None,
) -> EnvelopeHeader:
    """Reads source to its end and writes its HSME message to destination, one frame at a
    time. progress(n), if given, is told of each n plaintext bytes done.

    Raises:
        ValueError: no key, too many keys, a frame size out of range, or an encryption
            context too large for the header.
        HsmError: hsmd refused to make or encrypt the data key.
    """
    keys = [key_ids] if isinstance(key_ids, str) else list(key_ids)
    context = dict(encryption_context or {})
    _check_parameters(keys, context, frame_size)
    data_key, encrypted_keys, cached = _data_key(client, keys, context, cache)
    message_id = secrets.token_bytes(_ID_SIZE)
    sealing, commitment = _derive(data_key, message_id)
    header = EnvelopeHeader(message_id, frame_size, context, encrypted_keys, commitment)
    head = _header_bytes(header)
    destination.write(head + sealing.encrypt(_nonce(0), b"", head))
    total = 0
    for sequence, chunk, final in _chunks(source, frame_size):
        sealed = sealing.encrypt(
            _nonce(sequence), chunk, _frame_aad(header.message_id, sequence, len(chunk), final)
        )
        if final:
            destination.write(struct.pack(">III", _FINAL, sequence, len(chunk)) + sealed)
        else:
            destination.write(struct.pack(">I", sequence) + sealed)
        total += len(chunk)
        if progress is not None and chunk:
            progress(len(chunk))
    if cache is not None and cached is not None:
        cache._count_bytes(cached, total)
    return header


def encrypt_file(
    client: DataKeys,
    key_ids: str | Sequence[str],
    source: Path | BinaryIO,
    destination: Path | BinaryIO,
    encryption_context: Mapping[str, str] | None = None,
    *,
    frame_size: int = DEFAULT_FRAME_SIZE,
    cache: DataKeyCache | None = None,
    progress: Callable[[int], None] | None = None,
) -> EnvelopeHeader:
    """encrypt_stream between files or streams; a destination file appears whole or not at
    all."""
    with _reading(source) as reader, _writing(destination) as writer:
        return encrypt_stream(
            client,
            key_ids,
            reader,
            writer,
            encryption_context,
            frame_size=frame_size,
            cache=cache,
            progress=progress,
        )


def _check_parameters(keys: list[str], context: dict[str, str], frame_size: int) -> None:
    if not keys or len(keys) > MAX_KEYS:
        raise ValueError(f"envelope encryption takes 1 to {MAX_KEYS} key ids")
    if not MIN_FRAME_SIZE <= frame_size <= MAX_FRAME_SIZE:
        raise ValueError(f"frame_size must be {MIN_FRAME_SIZE} to {MAX_FRAME_SIZE} bytes")
    if len(context) > MAX_CONTEXT_PAIRS or len(_context_bytes(context)) > MAX_CONTEXT_BYTES:
        raise ValueError(
            f"the encryption context may have {MAX_CONTEXT_PAIRS} pairs and"
            f" {MAX_CONTEXT_BYTES} bytes"
        )


def _data_key(
    client: DataKeys,
    keys: list[str],
    context: dict[str, str],
    cache: DataKeyCache | None,
) -> tuple[bytes, tuple[EncryptedKey, ...], _Entry | None]:
    """A data key and its encryptions under every key: from the cache, or made by hsmd
    (GenerateDataKey under the first key, Encrypt of it under each other)."""
    name = (tuple(keys), tuple(sorted(context.items())))
    if cache is not None:
        entry = cache._for_encryption(name)
        if entry is not None:
            return entry.data_key, entry.encrypted_keys, entry
    made = client.generate_data_key(keys[0], key_spec="AES_256", encryption_context=context)
    encrypted = [EncryptedKey(made.key_id, made.ciphertext_blob)]
    for key_id in keys[1:]:
        result = client.encrypt(key_id, made.plaintext, context)
        encrypted.append(EncryptedKey(result.key_id, result.ciphertext_blob))
    for key in encrypted:
        if len(key.ciphertext_blob) > MAX_KEY_BLOB or len(key.key_id.encode()) > 0xFFFF:
            raise ValueError("an encrypted data key is too large for the header")
    entry = None
    if cache is not None:
        entry = _Entry(made.plaintext, tuple(encrypted), cache._clock())
        cache._keep_for_encryption(name, entry)
    return made.plaintext, tuple(encrypted), entry


def _chunks(source: BinaryIO, frame_size: int) -> Iterator[tuple[int, bytes, bool]]:
    """(sequence number, plaintext, final) for each frame, reading one frame ahead so the
    last one is known; an empty source makes one empty final frame."""
    chunk = _read_up_to(source, frame_size)
    sequence = 1
    while True:
        following = _read_up_to(source, frame_size) if len(chunk) == frame_size else b""
        final = not following
        yield sequence, chunk, final
        if final:
            return
        if sequence == _MAX_SEQUENCE:
            raise ValueError("the data is too long for one message at this frame size")
        chunk, sequence = following, sequence + 1


def _read_up_to(source: BinaryIO, size: int) -> bytes:
    parts, left = [], size
    while left:
        part = source.read(left)
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


# Decrypting


def decrypt(
    client: DataKeys,
    message: bytes,
    encryption_context: Mapping[str, str] | None = None,
    *,
    cache: DataKeyCache | None = None,
) -> Decrypted:
    """The plaintext of an HSME message. encryption_context, if given, must be part of the
    message's (each pair present with the same value).

    Raises:
        EnvelopeError: see decrypt_stream.
    """
    out = io.BytesIO()
    header = decrypt_stream(client, io.BytesIO(message), out, encryption_context, cache=cache)
    return Decrypted(out.getvalue(), header)


def decrypt_stream(
    client: DataKeys,
    source: BinaryIO,
    destination: BinaryIO,
    encryption_context: Mapping[str, str] | None = None,
    *,
    cache: DataKeyCache | None = None,
    progress: Callable[[int], None] | None = None,
) -> EnvelopeHeader:
    """Reads an HSME message from source and writes its plaintext to destination, each frame
    once it has verified. Returns the header once the final frame has verified and nothing
    follows it; if this raises, whatever was written is not the plaintext and must be
    discarded (decrypt_file does that itself).

    Raises:
        EnvelopeError: not an HSME message, a header or frame that does not verify, a
            message cut short or with data after its end, an encryption context that does
            not hold the pairs asked for, or no encrypted data key that hsmd would decrypt
            (the reasons of each refusal are in the message).
    """
    header, head = _read_header(source)
    expected = dict(encryption_context or {})
    if any(header.encryption_context.get(k) != v for k, v in expected.items()):
        raise EnvelopeError("the message's encryption context does not hold the pairs asked for")
    data_key = _recover_data_key(client, header, cache)
    sealing, commitment = _derive(data_key, header.message_id)
    if not hmac.compare_digest(commitment, header.commitment):
        raise EnvelopeError("the data key does not match the message's key commitment")
    _open(sealing, 0, _read_exactly(source, _TAG_SIZE, "header tag"), head)
    sequence = 1
    while True:
        marker = struct.unpack(">I", _read_exactly(source, 4, "frame"))[0]
        final = marker == _FINAL
        if final:
            number, length = struct.unpack(">II", _read_exactly(source, 8, "final frame"))
            if length > header.frame_size:
                raise EnvelopeError("the final frame is longer than the frame size")
        else:
            number, length = marker, header.frame_size
        if number != sequence:
            raise EnvelopeError(f"frame {number} where frame {sequence} was due")
        sealed = _read_exactly(source, length + _TAG_SIZE, f"frame {sequence}")
        aad = _frame_aad(header.message_id, sequence, length, final)
        plaintext = _open(sealing, sequence, sealed, aad)
        destination.write(plaintext)
        if progress is not None and plaintext:
            progress(len(plaintext))
        if final:
            if source.read(1):
                raise EnvelopeError("data follows the message's final frame")
            return header
        if sequence == _MAX_SEQUENCE:
            raise EnvelopeError("the message has more frames than the format allows")
        sequence += 1


def decrypt_file(
    client: DataKeys,
    source: Path | BinaryIO,
    destination: Path | BinaryIO,
    encryption_context: Mapping[str, str] | None = None,
    *,
    cache: DataKeyCache | None = None,
    progress: Callable[[int], None] | None = None,
) -> EnvelopeHeader:
    """decrypt_stream into a temporary file beside a destination file, renamed to it only
    once the whole message has verified: the destination never holds unverified plaintext.
    A destination stream gets each frame as it verifies (see decrypt_stream)."""
    with _reading(source) as reader, _writing(destination) as writer:
        return decrypt_stream(
            client, reader, writer, encryption_context, cache=cache, progress=progress
        )


def _recover_data_key(
    client: DataKeys, header: EnvelopeHeader, cache: DataKeyCache | None
) -> bytes:
    """The data key from the first encrypted key hsmd decrypts, or from the cache."""
    name = (header.encrypted_keys, tuple(sorted(header.encryption_context.items())))
    if cache is not None:
        kept = cache._for_decryption(name)
        if kept is not None:
            return kept
    refusals = []
    for key in header.encrypted_keys:
        try:
            result = client.decrypt(key.ciphertext_blob, header.encryption_context)
        except HsmError as exc:
            refusals.append(f"{key.key_id}: {exc}")
            continue
        if len(result.plaintext) != _KEY_SIZE:
            refusals.append(f"{key.key_id}: not a {_KEY_SIZE}-byte data key")
            continue
        if cache is not None:
            cache._keep_for_decryption(name, result.plaintext)
        return result.plaintext
    raise EnvelopeError("no key of the message could decrypt its data key: " + "; ".join(refusals))


def _read_header(source: BinaryIO) -> tuple[EnvelopeHeader, bytes]:
    """The header and its bytes (up to, not with, its tag)."""
    reader = _Recording(source)
    magic, version, suite = struct.unpack(">4sBB", reader.take(6, "header"))
    if magic != MAGIC:
        raise EnvelopeError("not an HSME message (no HSME magic)")
    if version != VERSION or suite != SUITE:
        raise EnvelopeError(f"HSME version {version} suite {suite} is not supported")
    message_id = reader.take(_ID_SIZE, "header")
    (frame_size,) = struct.unpack(">I", reader.take(4, "header"))
    if not MIN_FRAME_SIZE <= frame_size <= MAX_FRAME_SIZE:
        raise EnvelopeError("the header's frame size is out of range")
    (pairs,) = struct.unpack(">H", reader.take(2, "header"))
    if pairs > MAX_CONTEXT_PAIRS:
        raise EnvelopeError("the header's encryption context has too many pairs")
    context: dict[str, str] = {}
    for _ in range(pairs):
        key, value = reader.text(), reader.text()
        if context and key <= list(context)[-1]:
            raise EnvelopeError("the header's encryption context is not in order")
        context[key] = value
    (count,) = struct.unpack(">H", reader.take(2, "header"))
    if not 1 <= count <= MAX_KEYS:
        raise EnvelopeError("the header holds no or too many encrypted data keys")
    keys = []
    for _ in range(count):
        key_id = reader.text()
        (size,) = struct.unpack(">I", reader.take(4, "header"))
        if size > MAX_KEY_BLOB:
            raise EnvelopeError("an encrypted data key in the header is too large")
        keys.append(EncryptedKey(key_id, reader.take(size, "header")))
    commitment = reader.take(_KEY_SIZE, "header")
    header = EnvelopeHeader(message_id, frame_size, context, tuple(keys), commitment)
    return header, reader.recorded()


class _Recording:
    """Reads exactly what is asked and keeps it (the header tag covers these bytes)."""

    def __init__(self, source: BinaryIO) -> None:
        self._source = source
        self._parts: list[bytes] = []

    def take(self, size: int, what: str) -> bytes:
        data = _read_exactly(self._source, size, what)
        self._parts.append(data)
        return data

    def text(self) -> str:
        (size,) = struct.unpack(">H", self.take(2, "header"))
        try:
            return self.take(size, "header").decode()
        except UnicodeDecodeError:
            raise EnvelopeError("the header holds text that is not UTF-8") from None

    def recorded(self) -> bytes:
        return b"".join(self._parts)


def _read_exactly(source: BinaryIO, size: int, what: str) -> bytes:
    data = _read_up_to(source, size)
    if len(data) != size:
        raise EnvelopeError(f"the message is cut short (in its {what})")
    return data


def _open(sealing: AESGCM, sequence: int, sealed: bytes, aad: bytes) -> bytes:
    try:
        return sealing.decrypt(_nonce(sequence), sealed, aad)
    except InvalidTag:
        what = "the header" if sequence == 0 else f"frame {sequence}"
        raise EnvelopeError(f"{what} does not verify: the message was changed") from None


# The format's parts


def _header_bytes(header: EnvelopeHeader) -> bytes:
    parts = [
        struct.pack(">4sBB", MAGIC, VERSION, SUITE),
        header.message_id,
        struct.pack(">I", header.frame_size),
        _context_bytes(header.encryption_context),
        struct.pack(">H", len(header.encrypted_keys)),
    ]
    for key in header.encrypted_keys:
        parts += [
            _text(key.key_id),
            struct.pack(">I", len(key.ciphertext_blob)),
            key.ciphertext_blob,
        ]
    parts.append(header.commitment)
    return b"".join(parts)


def _context_bytes(context: Mapping[str, str]) -> bytes:
    """The pairs in order of their keys' UTF-8 bytes, each key and value length-prefixed."""
    ordered = sorted(context.items(), key=lambda pair: pair[0].encode())
    return struct.pack(">H", len(ordered)) + b"".join(
        _text(key) + _text(value) for key, value in ordered
    )


def _text(value: str) -> bytes:
    data = value.encode()
    if len(data) > 0xFFFF:
        raise ValueError("a header string is over 65,535 bytes")
    return struct.pack(">H", len(data)) + data


def _derive(data_key: bytes, message_id: bytes) -> tuple[AESGCM, bytes]:
    """This message's frame key and its key commitment, from the data key."""
    derived = HKDF(
        algorithm=hashes.SHA512(),
        length=2 * _KEY_SIZE,
        salt=message_id,
        info=MAGIC + bytes([VERSION, SUITE]),
    ).derive(data_key)
    return AESGCM(derived[:_KEY_SIZE]), derived[_KEY_SIZE:]


def _nonce(sequence: int) -> bytes:
    return sequence.to_bytes(12, "big")


def _frame_aad(message_id: bytes, sequence: int, length: int, final: bool) -> bytes:
    return message_id + (b"final" if final else b"frame") + struct.pack(">II", sequence, length)


# Files


@contextmanager
def _reading(source: Path | BinaryIO) -> Iterator[BinaryIO]:
    if not isinstance(source, Path):
        yield source
        return
    with source.open("rb") as reader:
        yield reader


def _writing(destination: Path | BinaryIO) -> _ReplacedOnSuccess | nullcontext[BinaryIO]:
    if isinstance(destination, Path):
        return _ReplacedOnSuccess(destination)
    return nullcontext(destination)


class _ReplacedOnSuccess:
    """A temporary file beside `path` (mode 0600), synced and renamed to it when the block
    ends without an exception, removed when it raises."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._temporary: Path | None = None
        self._file: BinaryIO | None = None

    def __enter__(self) -> BinaryIO:
        descriptor, name = tempfile.mkstemp(
            prefix=f".{self._path.name}.", suffix=".part", dir=self._path.parent or "."
        )
        self._temporary = Path(name)
        self._file = os.fdopen(descriptor, "wb")
        return self._file

    def __exit__(self, kind: object, value: object, traceback: object) -> None:
        assert self._file is not None and self._temporary is not None
        try:
            if kind is None:
                self._file.flush()
                os.fsync(self._file.fileno())
        finally:
            self._file.close()
        if kind is None:
            os.replace(self._temporary, self._path)
        else:
            self._temporary.unlink(missing_ok=True)
