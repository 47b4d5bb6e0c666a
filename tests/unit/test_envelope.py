"""The HSME envelope format (hsmclient.envelope) over data keys kept in memory (tests/fakes.py):
round trips at the frame boundaries, every kind of tampering refused with nothing written,
several keys, the encryption context, key commitment, the data-key cache, and a golden
message read by an independent reader written from docs/envelope.md alone."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hsmclient import envelope
from hsmclient.envelope import (
    MIN_FRAME_SIZE,
    DataKeyCache,
    EnvelopeError,
    decrypt,
    decrypt_file,
    encrypt,
)

from tests.fakes import FakeDataKeys

FRAME = MIN_FRAME_SIZE
GOLDEN = Path(__file__).parents[1] / "vectors" / "envelope" / "golden.hsme"
# The golden message's data key, and what it holds (see _golden_keys).
GOLDEN_DATA_KEY = bytes(range(32))
GOLDEN_PLAINTEXT = b"The HSME golden message. " * 100  # 2,500 bytes: 2 frames and a final one
GOLDEN_CONTEXT = {"purpose": "golden", "tenant": "demo"}


@pytest.fixture
def kms() -> FakeDataKeys:
    keys = FakeDataKeys()
    keys.key("k1")
    keys.key("k2")
    return keys


@pytest.mark.parametrize("size", [0, 1, FRAME - 1, FRAME, FRAME + 1, 3 * FRAME + 5])
def test_a_message_round_trips_at_every_frame_boundary(kms: FakeDataKeys, size: int) -> None:
    plaintext = bytes(i % 251 for i in range(size))
    message = encrypt(kms, "k1", plaintext, {"purpose": "test"}, frame_size=FRAME)
    opened = decrypt(kms, message)
    assert opened.plaintext == plaintext
    assert opened.header.encryption_context == {"purpose": "test"}
    assert [k.key_id for k in opened.header.encrypted_keys] == ["k1"]


def test_any_one_of_several_keys_decrypts(kms: FakeDataKeys) -> None:
    message = encrypt(kms, ["k1", "k2"], b"for either", frame_size=FRAME)
    kms.refusing.add("k1")
    assert decrypt(kms, message).plaintext == b"for either"
    kms.refusing.add("k2")
    with pytest.raises(EnvelopeError, match="no key of the message could decrypt") as refused:
        decrypt(kms, message)
    assert "k1:" in str(refused.value) and "k2:" in str(refused.value)


def test_the_encryption_context_is_bound_and_can_be_required(kms: FakeDataKeys) -> None:
    message = encrypt(kms, "k1", b"x", {"tenant": "a", "purpose": "p"})
    assert decrypt(kms, message, {"tenant": "a"}).plaintext == b"x"
    with pytest.raises(EnvelopeError, match="does not hold the pairs"):
        decrypt(kms, message, {"tenant": "b"})
    with pytest.raises(EnvelopeError, match="does not hold the pairs"):
        decrypt(kms, message, {"other": "a"})


def _frames(message: bytes) -> tuple[bytes, list[bytes]]:
    """The header with its tag, and each frame's bytes, of a message of FRAME-sized frames."""
    header_end = len(message) - _body_length(message)
    body, frames = message[header_end:], []
    while body:
        if body[:4] == b"\xff\xff\xff\xff":
            frames.append(body)
            break
        frames.append(body[: 4 + FRAME + 16])
        body = body[4 + FRAME + 16 :]
    return message[:header_end], frames


def _body_length(message: bytes) -> int:
    final = message.rindex(b"\xff\xff\xff\xff")
    (length,) = struct.unpack(">I", message[final + 8 : final + 12])
    regular = (final - _header_length(message)) // (4 + FRAME + 16)
    return regular * (4 + FRAME + 16) + 12 + length + 16


def _header_length(message: bytes) -> int:
    reader = io.BytesIO(message)
    envelope._read_header(reader)
    return reader.tell() + 16


def _tampered(message: bytes) -> dict[str, bytes]:
    header, frames = _frames(message)
    assert len(frames) == 3
    return {
        "cut in the header": message[:20],
        "cut before the final frame": header + frames[0] + frames[1],
        "cut in the final frame": message[:-1],
        "a frame dropped": header + frames[0] + frames[2],
        "two frames swapped": header + frames[1] + frames[0] + frames[2],
        "a frame repeated": header + frames[0] + frames[0] + frames[1] + frames[2],
        "data after the end": message + b"\x00",
        "a regular frame marked final": header
        + frames[0]
        + b"\xff\xff\xff\xff"
        + frames[1][:4]
        + struct.pack(">I", FRAME)
        + frames[1][4:],
    }


def test_every_tampering_is_refused(kms: FakeDataKeys) -> None:
    message = encrypt(kms, "k1", b"a" * (2 * FRAME + 10), frame_size=FRAME)
    for what, changed in _tampered(message).items():
        with pytest.raises(EnvelopeError):
            decrypt(kms, changed)
            pytest.fail(what)
    header_length = _header_length(message)
    for position in range(header_length):  # every byte of the header, its tag included
        changed = bytearray(message)
        changed[position] ^= 0x01
        with pytest.raises(EnvelopeError):
            decrypt(kms, bytes(changed))


def test_a_frame_from_another_message_under_the_same_data_key_is_refused(
    kms: FakeDataKeys,
) -> None:
    cache = DataKeyCache(max_age_seconds=60)
    first = encrypt(kms, "k1", b"a" * (2 * FRAME + 10), frame_size=FRAME, cache=cache)
    second = encrypt(kms, "k1", b"b" * (2 * FRAME + 10), frame_size=FRAME, cache=cache)
    assert kms.calls["generate_data_key"] == 1  # one data key for both
    header, frames = _frames(first)
    _, theirs = _frames(second)
    with pytest.raises(EnvelopeError, match="frame 1 does not verify"):
        decrypt(kms, header + theirs[0] + frames[1] + frames[2])


def test_a_message_cannot_decrypt_under_another_data_key(kms: FakeDataKeys) -> None:
    """Key commitment: the header commits to its data key, checked before any frame."""
    message = encrypt(kms, "k1", b"committed", frame_size=FRAME)
    other = encrypt(kms, "k1", b"other", frame_size=FRAME)
    header, _ = envelope._read_header(io.BytesIO(message))
    theirs, _ = envelope._read_header(io.BytesIO(other))
    mine, other_blob = header.encrypted_keys[0], theirs.encrypted_keys[0]
    swapped = message.replace(mine.ciphertext_blob, other_blob.ciphertext_blob)
    with pytest.raises(EnvelopeError, match="key commitment"):
        decrypt(kms, swapped)


def test_a_file_that_does_not_verify_leaves_no_plaintext(kms: FakeDataKeys, tmp_path: Path) -> None:
    message = encrypt(kms, "k1", b"secret" * 1000, frame_size=FRAME)
    source, destination = tmp_path / "cut.hsme", tmp_path / "out.txt"
    source.write_bytes(message[:-40])
    with pytest.raises(EnvelopeError, match="cut short"):
        decrypt_file(kms, source, destination)
    assert list(tmp_path.iterdir()) == [source]  # no output, no temporary file
    source.write_bytes(message)
    decrypt_file(kms, source, destination)
    assert destination.read_bytes() == b"secret" * 1000
    assert set(tmp_path.iterdir()) == {source, destination}


def test_the_cache_is_bounded_by_messages_bytes_and_age(kms: FakeDataKeys) -> None:
    now = [0.0]
    cache = DataKeyCache(max_age_seconds=10, max_messages=3, max_bytes=2500, clock=lambda: now[0])
    for _ in range(3):
        encrypt(kms, "k1", b"x" * 10, cache=cache)
    assert kms.calls["generate_data_key"] == 1
    encrypt(kms, "k1", b"x" * 10, cache=cache)  # a 4th message: a new key
    assert kms.calls["generate_data_key"] == 2
    encrypt(kms, "k1", b"x" * 3000, cache=cache)  # 3,000 bytes under it: spent
    encrypt(kms, "k1", b"x", cache=cache)
    assert kms.calls["generate_data_key"] == 3
    now[0] = 10.0  # aged out
    encrypt(kms, "k1", b"x", cache=cache)
    assert kms.calls["generate_data_key"] == 4
    encrypt(kms, "k2", b"x", cache=cache)  # another key: its own data key
    assert kms.calls["generate_data_key"] == 5
    message = encrypt(kms, "k1", b"y")
    decrypt(kms, message, cache=cache)
    decrypt(kms, message, cache=cache)
    assert kms.calls["decrypt"] == 1


def test_parameters_out_of_range_are_refused(kms: FakeDataKeys) -> None:
    with pytest.raises(ValueError, match="1 to 16 key ids"):
        encrypt(kms, [], b"x")
    with pytest.raises(ValueError, match="frame_size"):
        encrypt(kms, "k1", b"x", frame_size=100)
    with pytest.raises(ValueError, match="encryption context"):
        encrypt(kms, "k1", b"x", {f"k{i}": "v" for i in range(65)})
    with pytest.raises(EnvelopeError, match="not an HSME message"):
        decrypt(kms, b"PK\x03\x04 a zip file, say")


# The golden message (tests/vectors/envelope/golden.hsme) was made once by hsmclient.envelope
# .encrypt of GOLDEN_PLAINTEXT with GOLDEN_CONTEXT and a frame size of 1,024, by a client whose
# GenerateDataKey gave GOLDEN_DATA_KEY encrypted as FakeDataKeys does under key "golden"
# (32 zero bytes). It must never change: it is what a reader of version 1 must read.


def _golden_keys() -> FakeDataKeys:
    """A fake KMS whose key 'golden' gives back GOLDEN_DATA_KEY for the golden message."""
    kms = FakeDataKeys()
    kms.keys["golden"] = bytes(32)
    return kms


def test_the_golden_message_decrypts() -> None:
    opened = decrypt(_golden_keys(), GOLDEN.read_bytes())
    assert opened.plaintext == GOLDEN_PLAINTEXT
    assert opened.header.encryption_context == GOLDEN_CONTEXT


def test_an_independent_reader_written_from_the_spec_reads_the_golden_message() -> None:
    """Everything here comes from docs/envelope.md, not from hsmclient.envelope."""
    data = GOLDEN.read_bytes()
    at = 0

    def take(n: int) -> bytes:
        nonlocal at
        part = data[at : at + n]
        assert len(part) == n
        at += n
        return part

    def u(n: int) -> int:
        return int.from_bytes(take(n), "big")

    assert take(4) == b"HSME" and u(1) == 1 and u(1) == 1
    message_id, frame_size = take(32), u(4)
    context = {}
    for _ in range(u(2)):
        key = take(u(2)).decode()
        context[key] = take(u(2)).decode()
    assert context == GOLDEN_CONTEXT
    keys = []
    for _ in range(u(2)):
        key_id = take(u(2)).decode()
        keys.append((key_id, take(u(4))))
    assert [key_id for key_id, _ in keys] == ["golden"]
    commitment, header = take(32), data[:at]
    derived = HKDF(hashes.SHA512(), 64, salt=message_id, info=b"HSME\x01\x01").derive(
        GOLDEN_DATA_KEY
    )
    frame_key, expected_commitment = AESGCM(derived[:32]), derived[32:]
    assert commitment == expected_commitment
    frame_key.decrypt(bytes(12), take(16), header)  # the header tag
    plaintext, sequence = b"", 1
    while True:
        marker = u(4)
        final = marker == 0xFFFFFFFF
        number = u(4) if final else marker
        length = u(4) if final else frame_size
        assert number == sequence
        aad = message_id + (b"final" if final else b"frame") + struct.pack(">II", number, length)
        plaintext += frame_key.decrypt(number.to_bytes(12, "big"), take(length + 16), aad)
        if final:
            break
        sequence += 1
    assert at == len(data) and plaintext == GOLDEN_PLAINTEXT
