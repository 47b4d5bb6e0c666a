"""`hsm batch COMMAND`: items as JSON Lines in, one JSON line out per item, in calls of at
most MAX_BATCH_ITEMS items."""

import argparse
import base64
import binascii
import dataclasses
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO, TypeVar

from hsmclient.cli import output
from hsmclient.client import (
    MAX_BATCH_ITEMS,
    DecryptItem,
    EncryptItem,
    GenerateDataKeyItem,
    GenerateMacItem,
    HsmClient,
    ReEncryptItem,
    SignItem,
    VerifyItem,
    VerifyMacItem,
)
from hsmclient.errors import HsmError, ResourceExhaustedError

_T = TypeVar("_T")

# `hsm batch COMMAND`: the client's batch method, the item class, and the output fields of the
# unary command, for each batched operation.
BATCHES: dict[str, tuple[str, type[Any], tuple[str, ...]]] = {
    "encrypt": ("batch_encrypt", EncryptItem, output.ENCRYPT_OUTPUT),
    "decrypt": ("batch_decrypt", DecryptItem, output.DECRYPT_OUTPUT),
    "re-encrypt": ("batch_re_encrypt", ReEncryptItem, output.RE_ENCRYPT_OUTPUT),
    "generate-data-key": (
        "batch_generate_data_key",
        GenerateDataKeyItem,
        output.GENERATE_DATA_KEY_OUTPUT,
    ),
    "sign": ("batch_sign", SignItem, output.SIGN_OUTPUT),
    "verify": ("batch_verify", VerifyItem, output.VERIFY_OUTPUT),
    "generate-mac": ("batch_generate_mac", GenerateMacItem, output.GENERATE_MAC_OUTPUT),
    "verify-mac": ("batch_verify_mac", VerifyMacItem, output.VERIFY_MAC_OUTPUT),
}


# What one call carries at most: the daemon's item limit, and input lines of at most this many
# characters in all (an item's JSON line, with base64 blobs, is longer than its protobuf
# encoding, so the call stays under the daemon's 4 MiB).
_BATCH_CHARACTERS = 4 * 1024 * 1024


def _batch_item(item_class: type[_T], number: int, line: str) -> _T:
    """One input line: a JSON object of the unary command's fields in AWS's names (KeyId,
    Plaintext, EncryptionContext, ...), blobs in base64.

    Raises:
        ValueError: the line is not such an object (the message names the line).
    """
    try:
        document = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"input line {number}: invalid JSON: {error}") from error
    if not isinstance(document, dict):
        raise ValueError(f"input line {number}: expected a JSON object")
    fields = {field.name: field for field in dataclasses.fields(item_class)}  # type: ignore[arg-type]
    values: dict[str, object] = {}
    for name, value in document.items():
        attribute = output.WORD_START.sub("_", name).lower()
        if attribute not in fields:
            raise ValueError(f"input line {number}: unknown field {name!r}")
        if fields[attribute].type is bytes:
            try:
                value = base64.b64decode(value, validate=True)
            except (binascii.Error, TypeError, ValueError) as error:
                raise ValueError(f"input line {number}: {name} is not base64") from error
        values[attribute] = value
    try:
        return item_class(**values)
    except TypeError as error:  # a required field missing
        raise ValueError(f"input line {number}: {error}") from error


def batches(source: TextIO, item_class: type[_T]) -> Iterator[list[_T]]:
    """The items of the input's non-blank lines, a call's worth at a time."""
    batch: list[_T] = []
    characters = 0
    for number, line in enumerate(source, 1):
        if not line.strip():
            continue
        if batch and (len(batch) == MAX_BATCH_ITEMS or characters + len(line) > _BATCH_CHARACTERS):
            yield batch
            batch, characters = [], 0
        batch.append(_batch_item(item_class, number, line))
        characters += len(line)
    if batch:
        yield batch


def _batch_line(answer: object, fields: tuple[str, ...]) -> output.Result:
    """One output line: the unary command's output, or {"error": {"code", "message"}} (and the
    daemon's "reason" when it gave one, "retry_after" in seconds when it named a delay)."""
    if not isinstance(answer, HsmError):
        return output.aws_fields(answer, *fields)
    error: output.Result = {"code": answer.code.name, "message": answer.message}
    if answer.reason is not None:
        error["reason"] = answer.reason
    if isinstance(answer, ResourceExhaustedError) and answer.retry_after is not None:
        error["retry_after"] = answer.retry_after
    return {"error": error}


def handler(
    method: str, item_class: type[Any], fields: tuple[str, ...]
) -> Callable[[HsmClient, argparse.Namespace], None]:
    """A `hsm batch` command: items as JSON Lines from --input, one JSON line out per item, in
    order. The input is sent in calls of at most MAX_BATCH_ITEMS items, one after the other;
    an item's error is output, not a failure of the command (exit 0), and so is an invalid
    signature or MAC (SignatureValid or MacValid false)."""

    def run(client: HsmClient, args: argparse.Namespace) -> None:
        with _input(args.input) as source:
            for items in batches(source, item_class):
                for answer in getattr(client, method)(items):
                    print(json.dumps(_batch_line(answer, fields), ensure_ascii=False))

    return run


@contextmanager
def _input(path: str) -> Iterator[TextIO]:
    """The --input file as text; - is stdin.

    Raises:
        ValueError: the file cannot be read.
    """
    if path == "-":
        yield sys.stdin
        return
    try:
        source = Path(path).open(encoding="utf-8")
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror}") from error
    with source:
        yield source
