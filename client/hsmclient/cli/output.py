"""What `hsm` prints: results in AWS's field names and enum spellings, as JSON, text (AWS
CLI's tab-separated lines) or a table, or the one field --query picks."""

import base64
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from hsmclient import aws
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
    "CustomerMasterKeySpec": "key_spec",
    "AWSAccountId": "tenant",
}
# The AWS output fields whose values hsmd spells its own way: the hsmclient.aws enum of each.
_AWS_ENUMS = {
    "KeySpec": "KeySpec",
    "KeyPairSpec": "KeySpec",
    "CustomerMasterKeySpec": "KeySpec",
    "KeyState": "KeyState",
    "Origin": "KeyOrigin",
}


def aws_fields(result: object, *names: str) -> Result:
    """The AWS output fields `names`, each the `result` attribute of the same name in snake case
    (KeyId: key_id) unless _AWS_ATTRIBUTES says otherwise; blobs in base64, times in ISO 8601,
    tuples as lists, enum values in AWS's spelling (KeyState Enabled, not ENABLED). A name
    ending in "?" is left out when empty, as AWS leaves out the *Algorithms lists of the
    operations a key cannot do, or a DeletionDate not set."""
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
        elif field in _AWS_ENUMS:
            value = aws.aws_name(_AWS_ENUMS[field], value)
        output[field] = list(value) if isinstance(value, tuple) else value
    return output


def key_metadata(key: KeyMetadata) -> Result:
    """AWS's KeyMetadata, with hsmd's Exportable and PrimaryVersion besides: the tenant is the
    account, and hsmd's keys are customer managed, in one region."""
    metadata: Result = {
        **aws_fields(key, "AWSAccountId", "KeyId", "Arn", "CreationDate"),
        "Enabled": key.key_state == "ENABLED",
        **aws_fields(
            key,
            "Description",
            "KeyUsage",
            "KeyState",
            "DeletionDate?",
            "ValidTo?",
            "Origin",
        ),
        "KeyManager": "CUSTOMER",
        **aws_fields(
            key,
            "CustomerMasterKeySpec",
            "KeySpec",
            "EncryptionAlgorithms?",
            "SigningAlgorithms?",
            "MacAlgorithms?",
        ),
        "MultiRegion": key.multi_region,
        **aws_fields(key, "Exportable", "PrimaryVersion"),
    }
    regions = key.multi_region_configuration
    if regions is not None:  # AWS's shape; a region's key is named by the same Arn
        metadata["MultiRegionConfiguration"] = {
            "MultiRegionKeyType": regions.multi_region_key_type,
            "PrimaryKey": {"Arn": key.name, "Region": regions.primary_region},
            "ReplicaKeys": [{"Arn": key.name, "Region": r} for r in regions.replica_regions],
        }
    if key.origin == "EXTERNAL":
        metadata["ExpirationModel"] = (
            "KEY_MATERIAL_EXPIRES" if key.valid_to else "KEY_MATERIAL_DOES_NOT_EXPIRE"
        )
    return metadata


def print_result(result: object, output: str, title: str) -> None:
    """Print a command's result as --output asks; `title` (the operation's name) heads a
    table."""
    if output == "pem":
        print(result, end="")
    elif output == "json":
        print(json.dumps(result, indent=4, ensure_ascii=False))
    elif output == "table":
        section = _section(title, result)
        width = max(_width(section), len(title) + 4)
        print("-" * width)
        for line in _table_lines(section, width):
            print(line)
    else:
        for line in _text_lines(result):
            print(line)


@dataclass
class _Section:
    """A part of AWS CLI's table output: a titled box of rows (key and value for an object,
    one line per item with a header of column names for a list of objects) and the boxes of
    its nested values."""

    title: str
    header: list[str] | None
    rows: list[list[str]]
    children: list["_Section"]


def _section(title: str, value: object) -> _Section:
    if isinstance(value, dict):
        rows = [[key, _cell(item)] for key, item in value.items() if not _nested(item)]
        children = [_section(key, item) for key, item in value.items() if _nested(item)]
        return _Section(title, None, rows, children)
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        objects: list[dict[str, object]] = value
        columns = sorted({key for item in objects for key, f in item.items() if not _nested(f)})
        rows = [[_cell(item.get(column, "")) for column in columns] for item in objects]
        children = [
            _section(key, field)
            for item in objects
            for key, field in item.items()
            if _nested(field)
        ]
        return _Section(title, columns, rows, children)
    items = value if isinstance(value, list) else [value]
    return _Section(title, None, [[_cell(item)] for item in items], [])


def _cell(value: object) -> str:
    return str(value)  # as text output prints it (True, None), as AWS CLI's table does


def _column_widths(section: _Section) -> list[int]:
    rows = [section.header, *section.rows] if section.header else section.rows
    return [max(len(row[column]) for row in rows) for column in range(len(rows[0]))] if rows else []


def _width(section: _Section) -> int:
    """The narrowest box that holds the section's title, rows and nested boxes."""
    widths = _column_widths(section)
    rows = sum(widths) + 5 * len(widths) + 1 if widths else 0  # "|  cell  |  cell  |"
    return max(len(section.title) + 4, rows, *(_width(child) + 2 for child in section.children))


def _table_lines(section: _Section, width: int) -> Iterator[str]:
    """The section as lines of exactly `width` characters: its title, its rows, then each
    nested box inside borders of its own."""
    yield "|" + section.title.center(width - 2) + "|"
    yield "+" + "-" * (width - 2) + "+"
    widths = _column_widths(section)
    for row in [section.header, *section.rows] if section.header else section.rows:
        cells = "|".join(f"  {cell.ljust(size)}  " for cell, size in zip(row, widths, strict=True))
        yield "|" + cells.ljust(width - 2) + "|"
    if widths:
        yield "+" + "-" * (width - 2) + "+"
    for child in section.children:
        yield from ("|" + line + "|" for line in _table_lines(child, width - 2))


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
