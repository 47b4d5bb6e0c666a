"""The values of `hsm`'s options, read as AWS CLI v2 reads them (blobs as base64 or
fileb://, maps as shorthand or JSON, ...), and its parser, which exits with AWS's codes."""

import argparse
import base64
import binascii
import json
import os
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from hsmclient.client import KeyPolicy

EXIT_USAGE = 252


class ParserExit(Exception):
    """argparse wants to exit (--help, a bad command line); main() returns the status instead."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class Parser(argparse.ArgumentParser):
    """An ArgumentParser that never calls sys.exit, and fails with AWS's usage exit code."""

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            self._print_message(message, sys.stderr)
        raise ParserExit(status)

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def file_bytes(path: str) -> bytes:
    """The bytes of the file of a file:// or fileb:// argument; - reads stdin."""
    try:
        return sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as error:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {error.strerror}") from error


class BlobText(str):
    """A blob option given as text, which decode_blobs reads once --cli-binary-format (which
    may come after it) is known."""


def blob(value: str) -> bytes | BlobText:
    """A blob argument as AWS CLI v2 reads it: fileb://PATH (raw bytes, - for stdin), or text
    (given, or read from file://PATH): base64, or the bytes themselves with
    --cli-binary-format raw-in-base64-out."""
    if value.startswith("fileb://"):
        return file_bytes(value.removeprefix("fileb://"))
    if value.startswith("file://"):
        return BlobText(os.fsdecode(file_bytes(value.removeprefix("file://"))))
    return BlobText(value)


# --cli-binary-format: AWS CLI v2's default, and AWS CLI v1's way (text blobs as they are).
BINARY_FORMATS = ("base64", "raw-in-base64-out")


def decode_blobs(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Replace every blob given as text by its bytes, as --cli-binary-format says.

    Raises:
        ParserExit: a blob is not base64 (in the default format).
    """
    raw = getattr(args, "cli_binary_format", "base64") == "raw-in-base64-out"
    for dest, value in vars(args).items():
        if not isinstance(value, BlobText):
            continue
        if raw:
            setattr(args, dest, os.fsencode(value))  # the bytes given, whatever their encoding
            continue
        try:
            setattr(args, dest, base64.b64decode("".join(value.split()), validate=True))
        except binascii.Error as error:
            option = "--" + dest.replace("_", "-")
            parser.error(
                f"argument {option}: invalid base64 ({error}); pass raw bytes as fileb://PATH,"
                " or text as it is with --cli-binary-format raw-in-base64-out"
            )


class Refused(argparse.Action):
    """An option of AWS KMS that hsmd cannot honour. It is accepted only with a value that
    asks for what hsmd does anyway (`accepted`), and otherwise refused with `reason`, so that
    a script written for AWS learns why rather than reading "unrecognized arguments"."""

    def __init__(
        self,
        option_strings: Sequence[str],
        dest: str,
        reason: str,
        accepted: Sequence[str] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.reason = reason
        self.accepted = accepted

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        given = values if isinstance(values, list) else [values]
        if self.nargs == 0 or not set(given) <= set(self.accepted):
            parser.error(f"argument {option_string}: hsmd cannot honour it: {self.reason}")


def endpoint_url(value: str) -> str:
    """AWS CLI's --endpoint-url (https://HOST:PORT) as hsm's --endpoint (HOST:PORT)."""
    host_port = value.removeprefix("https://").rstrip("/")
    if "://" in host_port or "/" in host_port or ":" not in host_port:
        raise argparse.ArgumentTypeError(f"expected https://HOST:PORT, not {value!r}")
    return host_port


def json_value(value: str) -> object:
    try:
        return json.loads(value)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"invalid JSON: {error}") from error


def _strings(value: object) -> bool:
    """Whether `value` is a JSON list of strings."""
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def context_pairs(value: str) -> dict[str, str]:
    """One --encryption-context (or --tag-filter) word: a JSON object, or AWS shorthand
    k=v[,k=v...]."""
    if value.lstrip().startswith("{"):
        parsed = json_value(value)
        if not isinstance(parsed, dict) or not all(isinstance(v, str) for v in parsed.values()):
            raise argparse.ArgumentTypeError("the JSON must map strings to strings")
        return {key: str(val) for key, val in parsed.items()}
    pairs = {}
    for pair in value.split(","):
        key, equals, val = pair.partition("=")
        if not key or not equals:
            raise argparse.ArgumentTypeError(f"expected key=value, not {pair!r}")
        pairs[key] = val
    return pairs


class MergeMaps(argparse.Action):
    """A map option (*-encryption-context, --tags, --tag-filter) whose words, each parsed into a
    dict, and repetitions merge into one dict; None if the option is not given."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        merged: dict[str, str] = dict(getattr(namespace, self.dest) or {})
        for pairs in values if isinstance(values, list) else []:  # nargs="+": always a list
            merged.update(pairs)
        setattr(namespace, self.dest, merged)


_TAG_SHORTHAND = re.compile(r"TagKey=(.+?),TagValue=(.*)", re.DOTALL)


def tags(value: str) -> dict[str, str]:
    """One --tags word: AWS shorthand TagKey=KEY,TagValue=VALUE (the value may hold commas), or
    a JSON list of {"TagKey": KEY, "TagValue": VALUE}."""
    if not value.lstrip().startswith("["):
        match = _TAG_SHORTHAND.fullmatch(value)
        if match is None:
            raise argparse.ArgumentTypeError(f"expected TagKey=KEY,TagValue=VALUE, not {value!r}")
        return {match[1]: match[2]}
    tags = json_value(value)
    if not isinstance(tags, list) or not all(
        isinstance(tag, dict)
        and set(tag) == {"TagKey", "TagValue"}
        and _strings(list(tag.values()))
        for tag in tags
    ):
        raise argparse.ArgumentTypeError('expected [{"TagKey": "KEY", "TagValue": "VALUE"}, ...]')
    return {tag["TagKey"]: tag["TagValue"] for tag in tags}


POLICY_FIELDS = ("Administrators", "Users")


def policy(value: str) -> KeyPolicy:
    """--policy: the JSON document {"Administrators": [...], "Users": [...]} (Users optional),
    inline or as file://PATH, as get-key-policy prints it."""
    if value.startswith("file://"):
        try:
            value = file_bytes(value.removeprefix("file://")).decode("utf-8")
        except UnicodeDecodeError as error:
            raise argparse.ArgumentTypeError(f"the policy is not UTF-8: {error}") from error
    document = json_value(value)
    if (
        not isinstance(document, dict)
        or "Administrators" not in document
        or not set(document) <= set(POLICY_FIELDS)
        or not all(_strings(names) for names in document.values())
    ):
        raise argparse.ArgumentTypeError(
            'expected {"Administrators": ["NAME", ...], "Users": ["NAME", ...]}'
        )
    return KeyPolicy(tuple(document["Administrators"]), tuple(document.get("Users", [])))


_QUERY_STEP = re.compile(r"([A-Za-z_]\w*)((?:\[-?\d+\])*)")


def query_path(expression: str) -> list[str | int]:
    """--query: a dotted path with optional list indexes, such as Keys[0].KeyId."""
    path: list[str | int] = []
    for part in expression.split("."):
        match = _QUERY_STEP.fullmatch(part)
        if match is None:
            raise argparse.ArgumentTypeError(
                f"unsupported query {expression!r}: use a path such as KeyMetadata.KeyId"
            )
        path.append(match[1])
        path.extend(int(index) for index in re.findall(r"-?\d+", match[2]))
    return path


def timestamp(value: str) -> datetime:
    """An ISO 8601 time such as 2030-01-31T12:00:00Z; one without an offset is UTC."""
    try:
        time = datetime.fromisoformat(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"expected an ISO 8601 time such as 2030-01-31T12:00:00Z, not {value!r}"
        ) from error
    return time if time.tzinfo is not None else time.replace(tzinfo=UTC)


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {number}")
    return number
