"""AWS KMS's service model, from botocore, as the specification `hsm` is tested against: its
commands and options (tests/unit/test_cli_aws_model.py) and the JSON it prints
(tests/integration/test_cli_aws.py)."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime

import botocore.session
from botocore import xform_name
from botocore.model import OperationModel, Shape

KMS = botocore.session.get_session().get_service_model("kms")

# The fields hsm prints beyond AWS's (allowed by the issue: "hsmd-only fields may be added").
HSMD_FIELDS = frozenset({"KeyVersion", "SourceKeyVersion", "Exportable", "PrimaryVersion"})


def command_name(operation: str) -> str:
    """GenerateDataKeyPair -> generate-data-key-pair, as AWS CLI names its commands."""
    return xform_name(operation, "-")


def option_name(member: str) -> str:
    """NumberOfBytes -> --number-of-bytes, as AWS CLI names an input member's option."""
    return "--" + xform_name(member, "-")


def operation(command: str) -> OperationModel:
    by_command = {command_name(name): name for name in KMS.operation_names}
    return KMS.operation_model(by_command[command])


def problems(value: object, shape: Shape | None, path: str = "") -> list[str]:
    """Where `value`, an output as `hsm --output json` prints it, departs from `shape`: a
    field the model lacks (unless hsmd's own, HSMD_FIELDS), a required one missing, a value of
    the wrong type, or an enum value AWS does not spell so. No output shape: nothing printed."""
    if shape is None:
        return [] if value is None else [f"{path or 'output'}: printed, where AWS prints nothing"]
    kind = shape.type_name
    if kind == "structure":
        if not isinstance(value, dict):
            return [f"{path}: {value!r} is not an object"]
        found = [f"{path}.{name}: missing" for name in shape.required_members if name not in value]
        for name, item in value.items():
            if name in shape.members:
                found += problems(item, shape.members[name], f"{path}.{name}")
            elif name not in HSMD_FIELDS:
                found.append(f"{path}.{name}: not in AWS's {shape.name}")
        return found
    if kind == "list":
        if not isinstance(value, list):
            return [f"{path}: {value!r} is not a list"]
        return [
            p for n, item in enumerate(value) for p in problems(item, shape.member, f"{path}[{n}]")
        ]
    if kind == "map":
        ok = isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
        return [] if ok else [f"{path}: {value!r} is not a map of strings"]
    return _scalar_problems(value, shape, path)


def _scalar_problems(value: object, shape: Shape, path: str) -> list[str]:
    kind = shape.type_name
    if kind == "string":
        if not isinstance(value, str):
            return [f"{path}: {value!r} is not a string"]
        enum = getattr(shape, "enum", None)
        return (
            [f"{path}: {value!r} is not one of AWS's {enum}"] if enum and value not in enum else []
        )
    if kind == "blob":
        try:
            base64.b64decode(str(value), validate=True)
        except binascii.Error:
            return [f"{path}: {value!r} is not base64"]
        return [] if isinstance(value, str) else [f"{path}: {value!r} is not base64 text"]
    if kind == "timestamp":
        try:
            parsed = datetime.fromisoformat(str(value))
        except ValueError:
            return [f"{path}: {value!r} is not an ISO 8601 time"]
        return [] if parsed.tzinfo is not None else [f"{path}: {value!r} has no offset"]
    if kind == "boolean":
        return [] if isinstance(value, bool) else [f"{path}: {value!r} is not a boolean"]
    if kind in ("integer", "long"):
        ok = isinstance(value, int) and not isinstance(value, bool)
        return [] if ok else [f"{path}: {value!r} is not an integer"]
    return [f"{path}: the model's type {kind} is not checked here"]
