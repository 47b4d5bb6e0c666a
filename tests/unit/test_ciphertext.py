"""The blob format and its AAD: bounds, canonical context encoding, binding."""

from __future__ import annotations

import uuid

import pytest

from hsmd import ciphertext
from hsmd.errors import DecryptionFailed, InvalidArgument

KEY = str(uuid.uuid4())


def _blob(plaintext_size: int = 5, version: int = 1) -> bytes:
    header = ciphertext.encode_header(KEY, version)
    return ciphertext.assemble(header, b"\x07" * 12, b"\x01" * (plaintext_size + 16))


def test_parse_recovers_every_field() -> None:
    parsed = ciphertext.parse(_blob(version=7))
    assert (parsed.key_id, parsed.version, parsed.iv) == (KEY, 7, b"\x07" * 12)
    assert parsed.header == _blob(version=7)[:21]
    assert parsed.ciphertext_and_tag == b"\x01" * 21


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        _blob()[: ciphertext.MIN_BLOB - 1],
        b"\x03" + _blob()[1:],
        _blob(version=0),
        _blob(plaintext_size=ciphertext.MAX_PLAINTEXT + 1),
    ],
    ids=["empty", "too-short", "unknown-format", "version-zero", "too-long"],
)
def test_malformed_blobs_are_the_opaque_error(blob: bytes) -> None:
    with pytest.raises(DecryptionFailed):
        ciphertext.parse(blob)


def test_a_multi_region_key_id_round_trips_in_format_2() -> None:
    key_id = "mrk-" + "0123456789abcdef" * 2
    header = ciphertext.encode_header(key_id, 3)
    assert header[0] == ciphertext.FORMAT_MULTI_REGION
    blob = ciphertext.assemble(header, b"\x07" * 12, b"\x01" * 21)
    assert (ciphertext.parse(blob).key_id, ciphertext.parse(blob).version) == (key_id, 3)


def test_size_limits_match_the_documented_layout() -> None:
    assert ciphertext.MIN_BLOB == 1 + 16 + 4 + 12 + 1 + 16
    assert ciphertext.MAX_BLOB == 1 + 16 + 4 + 12 + 4096 + 16
    ciphertext.parse(_blob(plaintext_size=1))
    ciphertext.parse(_blob(plaintext_size=4096))


def test_context_encoding_is_canonical_and_unambiguous() -> None:
    assert ciphertext.encode_context({"a": "1", "b": "2"}) == ciphertext.encode_context(
        {"b": "2", "a": "1"}
    )
    assert ciphertext.encode_context({"ab": "c"}) != ciphertext.encode_context({"a": "bc"})
    assert ciphertext.encode_context({}) != ciphertext.encode_context({"": ""})


def test_aad_binds_tenant_header_and_context() -> None:
    header = ciphertext.encode_header(KEY, 1)
    base = ciphertext.aad("alpha", header, {"k": "v"})
    assert base != ciphertext.aad("beta", header, {"k": "v"})
    assert base != ciphertext.aad("alpha", ciphertext.encode_header(KEY, 2), {"k": "v"})
    assert base != ciphertext.aad("alpha", header, {"k": "w"})
    assert base != ciphertext.aad("alph", b"a" + header[:-1], {"k": "v"})


def test_context_limits() -> None:
    ciphertext.validate_context({str(i): "v" for i in range(64)})
    with pytest.raises(InvalidArgument):
        ciphertext.validate_context({str(i): "v" for i in range(65)})
    with pytest.raises(InvalidArgument):
        ciphertext.validate_context({"k": "v" * 8192})
    with pytest.raises(InvalidArgument):
        ciphertext.validate_context({"": "v"})
