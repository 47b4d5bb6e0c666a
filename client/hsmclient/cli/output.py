"""What `hsm` prints: results in AWS's field names and enum spellings, as JSON, text (AWS
CLI's tab-separated lines) or a table, or the one field --query picks."""

import base64
import json
import re
from collections.abc import Iterator
from datetime import datetime

from hsmclient.client import KeyMetadata

Result = dict[str, object]


def select(data: object, path: list[str | int]) -> object:
    """Follow a query path; a missing field or index gives None, as JMESPath's null does."""
    for step in path:
        if isinstance(step, str) and isinstance(data, dict):
            data = data.get(step)
        elif isinstance(step, int) and isinstance(data, list) and -len(data) <= step < len(data):
            data = data[step]
        else:
            return None
    return data


def _text_lines(
    value: object, identifier: str | None = None, columns: list[str] | None = None
) -> Iterator[str]:
    """AWS CLI's text output: a dict's scalars on one tab-separated line (sorted by key, led by
    the upper-cased key of its parent), then each nested value on lines of its own."""
    if isinstance(value, dict):
        if columns is None:
            columns = sorted(key for key, item in value.items() if not _nested(item))
        scalars = [str(value.get(key, "")) for key in columns]
        if scalars:
            yield "\t".join([identifier.upper(), *scalars] if identifier else scalars)
        for key in sorted(set(value) - set(columns)):
            yield from _text_lines(value[key], key)
    elif isinstance(value, list):
        if any(isinstance(item, dict) for item in value):
            scalar_keys = {
                key
                for item in value
                if isinstance(item, dict)
                for key, field in item.items()
                if not _nested(field)
            }
            for item in value:
                yield from _text_lines(item, identifier, sorted(scalar_keys))
        elif identifier:
            yield from (f"{identifier.upper()}\t{item}" for item in value)
        elif value:
            yield "\t".join(str(item) for item in value)
    else:
        yield str(value)


def _nested(value: object) -> bool:
    return isinstance(value, dict | list)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


WORD_START = re.compile(r"(?<!^)(?=[A-Z])")


PASCAL_WORD = re.compile(r"(?:^|_)([a-z0-9])")


def upper(match: re.Match[str]) -> str:
    """key_id -> KeyId, with PASCAL_WORD."""
    return match[1].upper()


# The AWS output names whose result attribute is not the name in snake case.
_AWS_ATTRIBUTES = {
    "Arn": "name",
    "KeyArn": "name",
    "CreationDate": "creation_time",
    "LastUpdatedDate": "last_updated_time",
}


def aws_fields(result: object, *names: str) -> Result:
    """The AWS output fields `names`, each the `result` attribute of the same name in snake case
    (KeyId: key_id) unless _AWS_ATTRIBUTES says otherwise; blobs in base64, times in ISO 8601,
    tuples as lists. A name ending in "?" is left out when empty, as AWS leaves out the
    *Algorithms lists of the operations a key cannot do, or a DeletionDate not set."""
    output: Result = {}
    for name in names:
        field = name.removesuffix("?")
        attribute = _AWS_ATTRIBUTES.get(field) or WORD_START.sub("_", field).lower()
        value = getattr(result, attribute)
        if name.endswith("?") and not value:
            continue
        if isinstance(value, bytes):
            value = b64(value)
        elif isinstance(value, datetime):
            value = value.isoformat()
        output[field] = list(value) if isinstance(value, tuple) else value
    return output


def key_metadata(key: KeyMetadata) -> Result:
    return {
        **aws_fields(key, "KeyId", "Arn", "CreationDate"),
        "Enabled": key.key_state == "ENABLED",
        **aws_fields(
            key,
            "Description",
            "KeyUsage",
            "KeyState",
            "Origin",
            "Exportable",
            "KeySpec",
            "EncryptionAlgorithms?",
            "SigningAlgorithms?",
            "MacAlgorithms?",
            "PrimaryVersion",
            "DeletionDate?",
            "ValidTo?",
        ),
    }


def print_result(result: object, output: str) -> None:
    if output == "pem":
        print(result, end="")
    elif output == "json":
        print(json.dumps(result, indent=4, ensure_ascii=False))
    else:
        for line in _text_lines(result):
            print(line)


# The output fields of the cryptographic commands, single and batched.
ENCRYPT_OUTPUT = ("CiphertextBlob", "KeyId", "EncryptionAlgorithm", "KeyVersion")


DECRYPT_OUTPUT = ("KeyId", "Plaintext", "EncryptionAlgorithm", "KeyVersion")


RE_ENCRYPT_OUTPUT = (
    "CiphertextBlob",
    "SourceKeyId",
    "KeyId",
    "SourceEncryptionAlgorithm",
    "DestinationEncryptionAlgorithm",
    "SourceKeyVersion",
    "KeyVersion",
)


GENERATE_DATA_KEY_OUTPUT = ("CiphertextBlob", "Plaintext", "KeyId", "KeyVersion")


SIGN_OUTPUT = ("KeyId", "Signature", "SigningAlgorithm", "KeyVersion")


VERIFY_OUTPUT = ("KeyId", "SignatureValid", "SigningAlgorithm", "KeyVersion")


GENERATE_MAC_OUTPUT = ("Mac", "MacAlgorithm", "KeyId", "KeyVersion")


VERIFY_MAC_OUTPUT = ("KeyId", "MacValid", "MacAlgorithm", "KeyVersion")
