"""`hsm`'s commands: one handler per command, over the client, and the parser that names
them and their options as `aws kms` does."""

import argparse
import dataclasses
import json
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from hsmclient import envelope, keyimport
from hsmclient.channel import PROFILE_VARIABLE, ConnectionSettings
from hsmclient.cli import arguments, batch, output
from hsmclient.client import MAX_BATCH_ITEMS, AdminClient, HsmClient

EXIT_AUDIT_CHAIN_BROKEN = 1
# decrypt-file: the message is malformed, changed, cut short, or no key of it decrypts.
EXIT_ENVELOPE_REFUSED = 1


# Global options (option, ConnectionSettings field, metavar, help); the field's HSM_* variable
# is the default.
CONNECTION_OPTIONS = (
    ("--endpoint", "endpoint", "HOST:PORT", "the daemon's address"),
    ("--ca-cert", "ca_cert_path", "PEM", "the CA that issued the daemon's certificate"),
    ("--cert", "client_cert_path", "PEM", "your client certificate"),
    ("--key", "client_key_path", "PEM", "the private key of your client certificate"),
    ("--server-name", "server_name", "NAME", "the name the daemon's certificate must carry"),
)

# A command's handler over the KeyManagementService; None: print nothing, as aws does.
Handler = Callable[[HsmClient, argparse.Namespace], output.Result | None]
# A command's handler over the AdminService (operator certificates).
AdminHandler = Callable[[AdminClient, argparse.Namespace], output.Result]
# The handler of the one command that can print PEM (`--output pem`), as plain text.
PemHandler = Callable[[HsmClient, argparse.Namespace], str]
PEM_COMMAND = "get-public-key"


class AwsError(Exception):
    """An error that AWS KMS answers where the daemon answers otherwise (an invalid signature
    is a KMSInvalidSignatureException there, SignatureValid false here), or an operation of
    AWS KMS that hsmd does not have; `name` is AWS's exception."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


# --max-items: a NextToken that resumes in the middle of a page is its marker, "~", and how
# many of its items were output (the daemon's markers are URL-safe base64: never a "~").
_TOKEN_SKIP = "~"  # noqa: S105 (a separator, not a secret)


def _listing(
    args: argparse.Namespace,
    field: str,
    item_fields: Sequence[str],
    list_page: Callable[..., tuple[list[Any], str]],
    *arguments: object,
    **filters: object,
) -> output.Result:
    """An `aws kms list-*` command over a client's list_* method (called with `arguments`,
    `filters`, page_size and page_token), the items with the AWS fields `item_fields`.

    As AWS CLI v2: every page, --page-size items a call, unless --max-items stops earlier
    (then a NextToken for --starting-token); or, with --limit, --marker or --no-paginate, one
    call, answered as the API answers it (Truncated, and the NextMarker for --marker)."""
    marker, skip = _resume_at(args.marker if args.marker is not None else args.starting_token)
    if args.limit is not None or args.marker is not None or getattr(args, "no_paginate", False):
        items, next_marker = list_page(
            *arguments, page_size=args.limit or 0, page_token=marker, **filters
        )
        page: output.Result = {field: [output.aws_fields(i, *item_fields) for i in items[skip:]]}
        return {
            **page,
            **({"NextMarker": next_marker} if next_marker else {}),
            "Truncated": bool(next_marker),
        }
    wanted: int | None = args.max_items
    collected: list[Any] = []
    while True:
        items, next_marker = list_page(
            *arguments, page_size=args.page_size or 0, page_token=marker, **filters
        )
        if skip >= len(items) and next_marker:  # resumed beyond this page (a smaller page size)
            marker, skip = next_marker, skip - len(items)
            continue
        room = len(items) - skip if wanted is None else wanted - len(collected)
        collected += items[skip : skip + room]
        if skip + room < len(items):  # --max-items ends inside this page
            next_token = f"{marker}{_TOKEN_SKIP}{skip + room}"
            break
        if not next_marker or (wanted is not None and len(collected) == wanted):
            next_token = next_marker
            break
        marker, skip = next_marker, 0
    result: output.Result = {field: [output.aws_fields(i, *item_fields) for i in collected]}
    return {**result, **({"NextToken": next_token} if next_token else {})}


def _resume_at(token: str) -> tuple[str, int]:
    """The daemon's marker in a NextToken (or NextMarker), and how many of that page's items
    were output already.

    Raises:
        AwsError: InvalidMarkerException, as AWS answers a token it did not issue.
    """
    marker, separator, skip = token.partition(_TOKEN_SKIP)
    if separator and not skip.isdigit():
        raise AwsError("InvalidMarkerException", f"{token!r} is not a token of a list command")
    return marker, int(skip or 0)


def _silent(method: str, *options: str) -> Handler:
    """A handler that calls the client method `method` with the values of `options` (argparse
    dests) and, as aws for these commands, prints nothing."""

    def handler(client: HsmClient, args: argparse.Namespace) -> None:
        getattr(client, method)(*(getattr(args, option) for option in options))

    return handler


def _new_key(args: argparse.Namespace) -> dict[str, Any]:
    """The options that create-key and unwrap-key share: what the new key starts with."""
    return {
        "description": args.description,
        "policy": args.policy,
        "tags": args.tags,
        "exportable": args.exportable,
    }


def _create_key(client: HsmClient, args: argparse.Namespace) -> output.Result:
    key = client.create_key(
        args.key_spec,
        args.key_usage,
        origin=args.origin,
        multi_region=args.multi_region,
        **_new_key(args),
    )
    return {"KeyMetadata": output.key_metadata(key)}


def _replicate_key(client: HsmClient, args: argparse.Namespace) -> output.Result:
    replica = client.replicate_key(
        args.key_id, args.replica_region, args.description, args.policy, args.tags
    )
    result: dict[str, Any] = {"ReplicaKeyMetadata": output.key_metadata(replica)}
    if args.tags:
        result["ReplicaTags"] = [{"TagKey": k, "TagValue": v} for k, v in args.tags.items()]
    return result


def _describe_key(client: HsmClient, args: argparse.Namespace) -> output.Result:
    return {"KeyMetadata": output.key_metadata(client.describe_key(args.key_id))}


def _list_keys(client: HsmClient, args: argparse.Namespace) -> output.Result:
    fields = ("KeyId", "KeyArn")
    return _listing(args, "Keys", fields, client.list_keys, tag_filter=args.tag_filter)


# ScheduleKeyDeletionRequest: "0 means 30"; AWS prints the window in force.
_DEFAULT_PENDING_WINDOW_IN_DAYS = 30


def _schedule_key_deletion(client: HsmClient, args: argparse.Namespace) -> output.Result:
    key = client.schedule_key_deletion(args.key_id, args.pending_window_in_days)
    return {
        **output.aws_fields(key, "KeyId", "DeletionDate", "KeyState"),
        "PendingWindowInDays": args.pending_window_in_days or _DEFAULT_PENDING_WINDOW_IN_DAYS,
    }


def _cancel_key_deletion(client: HsmClient, args: argparse.Namespace) -> output.Result:
    return output.aws_fields(client.cancel_key_deletion(args.key_id), "KeyId")


@dataclasses.dataclass(frozen=True)
class _Tag:
    tag_key: str
    tag_value: str


def _list_resource_tags(client: HsmClient, args: argparse.Namespace) -> output.Result:
    """AWS's ListResourceTags, from the tags in the key's metadata, sorted by key; a marker is
    the position of the next tag."""
    tags = [_Tag(*tag) for tag in sorted(client.describe_key(args.key_id).tags.items())]

    def tag_page(page_size: int, page_token: str) -> tuple[list[_Tag], str]:
        if not re.fullmatch(r"\d*", page_token):
            raise AwsError("InvalidMarkerException", f"{page_token!r} is not a tags marker")
        start = int(page_token or 0)
        end = start + page_size if page_size else len(tags)
        return tags[start:end], str(end) if end < len(tags) else ""

    return _listing(args, "Tags", ("TagKey", "TagValue"), tag_page)


# The one policy of a key (AWS: PolicyName "default"), which --policy-name may name.
_POLICY_NAME = "default"


def _get_key_policy(client: HsmClient, args: argparse.Namespace) -> output.Result:
    """As aws: the policy document as a JSON string, which put-key-policy --policy takes back."""
    document = output.aws_fields(client.get_key_policy(args.key_id), *arguments.POLICY_FIELDS)
    return {"Policy": json.dumps(document), "PolicyName": _POLICY_NAME}


def _list_key_policies(client: HsmClient, args: argparse.Namespace) -> output.Result:
    """The names of a key's policies: hsmd's keys have one, as AWS's do."""
    client.describe_key(args.key_id)  # a key that is not the caller's is NotFound
    return {"PolicyNames": [_POLICY_NAME], "Truncated": False}


def _get_key_rotation_status(client: HsmClient, args: argparse.Namespace) -> output.Result:
    return output.aws_fields(
        client.get_key_rotation_status(args.key_id),
        "KeyId",
        "KeyRotationEnabled",
        "RotationPeriodInDays?",
        "NextRotationDate?",
        "OnDemandRotationStartDate?",
    )


def _rotate_key_on_demand(client: HsmClient, args: argparse.Namespace) -> output.Result:
    return output.aws_fields(client.rotate_key_on_demand(args.key_id), "KeyId", "KeyVersion")


def _list_key_rotations(client: HsmClient, args: argparse.Namespace) -> output.Result:
    fields = ("KeyId", "RotationDate", "RotationType", "KeyVersion")
    return _listing(args, "Rotations", fields, client.list_key_rotations, args.key_id)


def _list_aliases(client: HsmClient, args: argparse.Namespace) -> output.Result:
    fields = ("AliasName", "TargetKeyId", "CreationDate", "LastUpdatedDate")
    return _listing(args, "Aliases", fields, client.list_aliases, args.key_id)


_AUDIT_EVENT_FIELDS = (
    "Sequence",
    "Time",
    "RequestId",
    "Tenant",
    "Principal",
    "Operation",
    "KeyId",
    "KeyVersion",
    "EncryptionContextKeys",
    "Outcome",
    "Peer",
    "PreviousHash",
    "Hash",
    "Regions?",
)


def _list_audit_events(client: HsmClient | AdminClient, args: argparse.Namespace) -> output.Result:
    """Either service's ListAuditEvents; only the AdminService's takes --tenant (which selects
    it, see _wants_admin)."""
    filters = {"key_id": args.key_id, **({"tenant": args.tenant} if args.tenant else {})}
    return _listing(args, "Events", _AUDIT_EVENT_FIELDS, client.list_audit_events, **filters)


def _verify_audit_log(client: AdminClient, args: argparse.Namespace) -> output.Result:
    result = client.verify_audit_log()
    return {
        **output.aws_fields(
            result,
            "Valid",
            "EventsChecked",
            "FirstBrokenPosition",
            "Problem",
            "CheckpointsVerified",
            "LastCheckpointPosition",
            "LastCheckpointTime?",
            "LastCheckpointHead",
            "CheckpointFilePosition",
        ),
        "TimeReversals": [
            output.aws_fields(reversal, "Position", "Time", "PreviousPosition", "PreviousTime")
            for reversal in result.time_reversals
        ],
        **output.aws_fields(
            result, "TimeReversalCount", "PreviousLog?", "PreviousLogPosition?", "PreviousLogHash?"
        ),
    }


def _verification_status(result: output.Result) -> int:
    """1 if the log is broken, or if any of its times goes backwards (a finding to look at)."""
    return 0 if result["Valid"] and not result["TimeReversalCount"] else EXIT_AUDIT_CHAIN_BROKEN


def _wrap_key(client: HsmClient, args: argparse.Namespace) -> output.Result:
    wrapped = client.wrap_key(args.key_id, args.wrapping_key_id)
    return output.aws_fields(wrapped, "WrappedKey", "KeyId", "KeyVersion", "WrappingKeyId")


def _unwrap_key(client: HsmClient, args: argparse.Namespace) -> output.Result:
    key = client.unwrap_key(args.wrapped_key, args.wrapping_key_id, **_new_key(args))
    return {"KeyMetadata": output.key_metadata(key)}


def _get_parameters_for_import(client: HsmClient, args: argparse.Namespace) -> output.Result:
    parameters = client.get_parameters_for_import(
        args.key_id, args.wrapping_algorithm, args.wrapping_key_spec
    )
    return output.aws_fields(parameters, "KeyId", "ImportToken", "PublicKey", "ParametersValidTo")


def _valid_to(args: argparse.Namespace) -> datetime | None:
    """--valid-to, checked against --expiration-model as aws checks them: KEY_MATERIAL_EXPIRES
    needs a --valid-to, KEY_MATERIAL_DOES_NOT_EXPIRE refuses one. Without a model (aws's
    default is KEY_MATERIAL_EXPIRES) the material expires if --valid-to is given.

    Raises:
        ValueError: the two disagree.
    """
    valid_to: datetime | None = args.valid_to
    if args.expiration_model == "KEY_MATERIAL_EXPIRES" and valid_to is None:
        raise ValueError("--expiration-model KEY_MATERIAL_EXPIRES needs --valid-to")
    if args.expiration_model == "KEY_MATERIAL_DOES_NOT_EXPIRE" and valid_to is not None:
        raise ValueError("--expiration-model KEY_MATERIAL_DOES_NOT_EXPIRE refuses --valid-to")
    return valid_to


def _import_key_material(client: HsmClient, args: argparse.Namespace) -> output.Result:
    """As aws today, the key's id (hsmd has no KeyMaterialId)."""
    key = client.import_key_material(
        args.key_id,
        args.import_token,
        args.encrypted_key_material,
        _valid_to(args),
        args.public_key,
    )
    return output.aws_fields(key, "KeyId")


def _delete_imported_key_material(client: HsmClient, args: argparse.Namespace) -> output.Result:
    return output.aws_fields(client.delete_imported_key_material(args.key_id), "KeyId")


def _import_key(client: HsmClient, args: argparse.Namespace) -> output.Result:
    """The whole import flow; the key's spec, which the key file must fit, from describe-key."""
    key = client.describe_key(args.key_id)
    imported = client.import_key(
        key.key_id, args.key_file, key.key_spec, args.wrapping_algorithm, args.valid_to
    )
    return {"KeyMetadata": output.key_metadata(imported)}


def _encrypt(client: HsmClient, args: argparse.Namespace) -> output.Result:
    result = client.encrypt(
        args.key_id, args.plaintext, args.encryption_context, args.encryption_algorithm
    )
    return output.aws_fields(result, *output.ENCRYPT_OUTPUT)


def _decrypt(client: HsmClient, args: argparse.Namespace) -> output.Result:
    result = client.decrypt(
        args.ciphertext_blob, args.encryption_context, args.key_id, args.encryption_algorithm
    )
    return output.aws_fields(result, *output.DECRYPT_OUTPUT)


def _re_encrypt(client: HsmClient, args: argparse.Namespace) -> output.Result:
    result = client.re_encrypt(
        args.ciphertext_blob,
        args.destination_key_id,
        source_encryption_context=args.source_encryption_context,
        destination_encryption_context=args.destination_encryption_context,
        source_key_id=args.source_key_id,
        source_encryption_algorithm=args.source_encryption_algorithm,
        destination_encryption_algorithm=args.destination_encryption_algorithm,
    )
    return output.aws_fields(result, *output.RE_ENCRYPT_OUTPUT)


def _generate_data_key(client: HsmClient, args: argparse.Namespace) -> output.Result:
    key = client.generate_data_key(
        args.key_id, args.key_spec, args.number_of_bytes, args.encryption_context
    )
    return output.aws_fields(key, *output.GENERATE_DATA_KEY_OUTPUT)


def _generate_data_key_without_plaintext(
    client: HsmClient, args: argparse.Namespace
) -> output.Result:
    key = client.generate_data_key_without_plaintext(
        args.key_id, args.key_spec, args.number_of_bytes, args.encryption_context
    )
    return output.aws_fields(key, "CiphertextBlob", "KeyId", "KeyVersion")


def _generate_data_key_pair(client: HsmClient, args: argparse.Namespace) -> output.Result:
    pair = client.generate_data_key_pair(args.key_id, args.key_pair_spec, args.encryption_context)
    return output.aws_fields(
        pair,
        "PrivateKeyCiphertextBlob",
        "PrivateKeyPlaintext",
        "PublicKey",
        "KeyId",
        "KeyPairSpec",
        "KeyVersion",
    )


def _generate_data_key_pair_without_plaintext(
    client: HsmClient, args: argparse.Namespace
) -> output.Result:
    pair = client.generate_data_key_pair_without_plaintext(
        args.key_id, args.key_pair_spec, args.encryption_context
    )
    return output.aws_fields(
        pair, "PrivateKeyCiphertextBlob", "PublicKey", "KeyId", "KeyPairSpec", "KeyVersion"
    )


def _sign(client: HsmClient, args: argparse.Namespace) -> output.Result:
    result = client.sign(args.key_id, args.message, args.signing_algorithm, args.message_type)
    return output.aws_fields(result, *output.SIGN_OUTPUT)


def _verify(client: HsmClient, args: argparse.Namespace) -> output.Result:
    """As aws: an invalid signature is a KMSInvalidSignatureException (exit 254)."""
    result = client.verify(
        args.key_id, args.message, args.signature, args.signing_algorithm, args.message_type
    )
    if not result.signature_valid:
        raise AwsError("KMSInvalidSignatureException", "the signature is not valid")
    return output.aws_fields(result, *output.VERIFY_OUTPUT)


def _get_public_key(client: HsmClient, args: argparse.Namespace) -> output.Result:
    return output.aws_fields(
        client.get_public_key(args.key_id),
        "KeyId",
        "PublicKey",
        "KeySpec",
        "KeyUsage",
        "EncryptionAlgorithms?",
        "SigningAlgorithms?",
        "KeyVersion",
    )


def _public_key_pem(client: HsmClient, args: argparse.Namespace) -> str:
    return client.get_public_key(args.key_id).pem().decode("ascii")


def _generate_mac(client: HsmClient, args: argparse.Namespace) -> output.Result:
    result = client.generate_mac(args.key_id, args.message, args.mac_algorithm)
    return output.aws_fields(result, *output.GENERATE_MAC_OUTPUT)


def _verify_mac(client: HsmClient, args: argparse.Namespace) -> output.Result:
    """As aws: a wrong MAC is a KMSInvalidMacException (exit 254)."""
    result = client.verify_mac(args.key_id, args.message, args.mac, args.mac_algorithm)
    if not result.mac_valid:
        raise AwsError("KMSInvalidMacException", "the MAC is not valid")
    return output.aws_fields(result, *output.VERIFY_MAC_OUTPUT)


def _encrypt_file(client: HsmClient, args: argparse.Namespace) -> output.Result | None:
    with _envelope_files(args) as (source, destination, progress):
        header = envelope.encrypt_file(
            client,
            args.key_id,
            source,
            destination,
            args.encryption_context,
            frame_size=args.frame_size,
            progress=progress,
        )
    return _envelope_summary(header, args)


def _decrypt_file(client: HsmClient, args: argparse.Namespace) -> output.Result | None:
    with _envelope_files(args) as (source, destination, progress):
        header = envelope.decrypt_file(
            client, source, destination, args.encryption_context, progress=progress
        )
    return _envelope_summary(header, args)


@contextmanager
def _envelope_files(
    args: argparse.Namespace,
) -> Iterator[tuple[Path | BinaryIO, Path | BinaryIO, Callable[[int], None] | None]]:
    """The source and destination (`-`: standard input and output), and a progress bar on
    standard error if it is a terminal."""
    source = sys.stdin.buffer if args.source == "-" else Path(args.source)
    destination = sys.stdout.buffer if args.destination == "-" else Path(args.destination)
    total = source.stat().st_size if isinstance(source, Path) and source.is_file() else None
    bar = _ProgressBar(total) if sys.stderr.isatty() else None
    try:
        yield source, destination, bar.advance if bar else None
    finally:
        if bar:
            bar.close()


def _envelope_summary(
    header: envelope.EnvelopeHeader, args: argparse.Namespace
) -> output.Result | None:
    """What the message says of itself; nothing when the data went to standard output."""
    if args.destination == "-":
        return None
    return {
        "MessageId": header.message_id.hex(),
        "KeyIds": [key.key_id for key in header.encrypted_keys],
        "EncryptionContext": header.encryption_context,
        "FrameSize": header.frame_size,
    }


class _ProgressBar:
    """Bytes done (and the percentage, when the size is known), redrawn on standard error at
    most ten times a second."""

    def __init__(self, total: int | None) -> None:
        self._total = total
        self._done = 0
        self._drawn = 0.0

    def advance(self, size: int) -> None:
        self._done += size
        now = time.monotonic()
        if now - self._drawn >= 0.1:
            self._drawn = now
            self._draw()

    def close(self) -> None:
        self._draw()
        sys.stderr.write("\n")

    def _draw(self) -> None:
        done = f"{self._done / 2**20:,.1f} MiB"
        if self._total:
            done += f" of {self._total / 2**20:,.1f} MiB ({100 * self._done // self._total}%)"
        sys.stderr.write(f"\r{done}")
        sys.stderr.flush()


def _get_capabilities(client: HsmClient, args: argparse.Namespace) -> output.Result:
    return output.aws_fields(
        client.get_capabilities(),
        "KeySpecs",
        "EncryptionAlgorithms",
        "SigningAlgorithms",
        "MacAlgorithms",
        "Notes",
    )


def _generate_random(client: HsmClient, args: argparse.Namespace) -> output.Result:
    return {"Plaintext": output.b64(client.generate_random(args.number_of_bytes))}


_GRANTS = "hsmd has no grants: a key's policy names who uses it (put-key-policy)"
_DRY_RUN = "hsmd has no dry runs"
_ENCLAVES = "hsmd has no Nitro Enclaves attestation"
_KEY_STORES = "hsmd has no custom key stores: each tenant's keys are in a token of its own"
_ONE_MATERIAL = "hsmd keeps one key material per key, and it has no id"
# The options of AWS KMS that hsmd cannot honour (arguments.Refused), with why, and the values
# that ask for what hsmd does anyway. A boolean's false form (--no-dry-run) is accepted.
_REFUSED: dict[str, tuple[str, tuple[str, ...]]] = {
    "--grant-tokens": (_GRANTS, ()),
    "--dry-run": (_DRY_RUN, ()),
    "--dry-run-modifiers": (_DRY_RUN, ()),
    "--recipient": (_ENCLAVES, ()),
    "--custom-key-store-id": (_KEY_STORES, ()),
    "--xks-key-id": (_KEY_STORES, ()),
    "--bypass-policy-lockout-safety-check": (
        "hsmd always refuses a policy that would lock its author out",
        (),
    ),
    "--key-material-id": (_ONE_MATERIAL, ()),
    "--key-material-description": (_ONE_MATERIAL, ()),
    "--import-type": (_ONE_MATERIAL, ("NEW_KEY_MATERIAL",)),
    "--include-key-material": ("hsmd lists rotations only", ("ROTATIONS_ONLY",)),
    "--resource-owners": ("hsmd lists the tenant's own keys only", ("SELF",)),
    "--no-verify-ssl": ("hsm always verifies the daemon's certificate", ()),
}
# Those of them that are switches; all but --no-verify-ssl have a false form.
_REFUSED_SWITCHES = ("--dry-run", "--bypass-policy-lockout-safety-check")
# The AWS KMS operations hsmd does not have, and why: each answers UnsupportedOperationException.
_NOT_IN_HSMD = {
    **dict.fromkeys(
        ("create-grant", "list-grants", "list-retirable-grants", "retire-grant", "revoke-grant"),
        _GRANTS,
    ),
    **dict.fromkeys(
        (
            "connect-custom-key-store",
            "create-custom-key-store",
            "delete-custom-key-store",
            "describe-custom-key-stores",
            "disconnect-custom-key-store",
            "update-custom-key-store",
        ),
        _KEY_STORES,
    ),
    "derive-shared-secret": "hsmd has no key agreement keys",
    **dict.fromkeys(("encapsulate", "decapsulate"), "hsmd has no ML-KEM keys"),
    "get-key-last-usage": "hsmd does not keep a key's last use apart: `hsm audit list --key-id`"
    " lists every use",
}


def _refuse(sub: argparse.ArgumentParser, *options: str) -> None:
    """Add the AWS options hsmd cannot honour (_REFUSED) to a command, out of its help."""
    for option in options:
        reason, accepted = _REFUSED[option]
        hidden: dict[str, Any] = {"default": argparse.SUPPRESS, "help": argparse.SUPPRESS}
        if option in _REFUSED_SWITCHES:
            sub.add_argument("--no-" + option.removeprefix("--"), action="store_true", **hidden)
        switch = option in _REFUSED_SWITCHES or option == "--no-verify-ssl"
        sub.add_argument(
            option,
            action=arguments.Refused,
            nargs=0 if switch else "+",
            reason=reason,
            accepted=accepted,
            **hidden,
        )


def build_parser() -> arguments.Parser:
    # Global options are accepted before and after the subcommand, as aws accepts them.
    # SUPPRESS keeps an option given before the subcommand from being reset by the subparser.
    common = arguments.Parser(add_help=False, argument_default=argparse.SUPPRESS)
    for option, field, metavar, help_text in CONNECTION_OPTIONS:
        variable = ConnectionSettings.VARIABLES[field]
        common.add_argument(
            option, dest=field, metavar=metavar, help=f"{help_text} (default: ${variable})"
        )
    common.add_argument(
        "--profile",
        metavar="NAME",
        help=f"the profile of ~/.config/hsm/config.toml to use (default: ${PROFILE_VARIABLE},"
        " else default)",
    )
    common.add_argument(
        "--output",
        choices=["json", "text", "table", "pem"],
        help=f"output format (json); pem only for {PEM_COMMAND}",
    )
    # AWS CLI's global options that scripts pass.
    common.add_argument(
        "--endpoint-url",
        dest="endpoint",
        type=arguments.endpoint_url,
        metavar="https://HOST:PORT",
        help="as --endpoint",
    )
    common.add_argument("--ca-bundle", dest="ca_cert_path", metavar="PEM", help="as --ca-cert")
    common.add_argument(
        "--region", metavar="REGION", help="accepted and unused: one endpoint is one region"
    )
    common.add_argument(
        "--cli-binary-format",
        choices=arguments.BINARY_FORMATS,
        help="base64 (the default): blobs given as text are base64; raw-in-base64-out: as they are",
    )
    common.add_argument(
        "--no-paginate", action="store_true", help="list commands: one call, as the API answers"
    )
    common.add_argument("--no-cli-pager", action="store_true", help="accepted: hsm has no pager")
    common.add_argument(
        "--color", choices=["on", "off", "auto"], help="accepted: hsm prints no colours"
    )
    _refuse(common, "--no-verify-ssl")
    common.add_argument(
        "--query",
        type=arguments.query_path,
        metavar="FIELD",
        help="print only this field of the output, e.g. KeyMetadata.KeyId or CiphertextBlob",
    )

    parser = arguments.Parser(
        prog="hsm",
        description="hsmd's command line, shaped like `aws kms`.",
        parents=[common],
        allow_abbrev=False,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str,
        handler: Handler | None,
        help_text: str,
        group: "argparse._SubParsersAction[arguments.Parser] | None" = None,
    ) -> arguments.Parser:
        """A subcommand (of `group`, by default the top level) that `handler` serves; without a
        handler, set an admin_handler."""
        sub: arguments.Parser = (group or commands).add_parser(
            name, help=help_text, description=help_text, parents=[common], allow_abbrev=False
        )
        sub.set_defaults(handler=handler)
        return sub

    def key_id(
        sub: arguments.Parser,
        required: bool = True,
        option: str = "--key-id",
        help_text: str = "the key: its id, or alias/NAME",
    ) -> None:
        sub.add_argument(option, required=required, metavar="KEY_ID", help=help_text)

    def keyed(name: str, handler: Handler, help_text: str) -> arguments.Parser:
        """A command on one key, named by --key-id."""
        sub = command(name, handler, help_text)
        key_id(sub)
        return sub

    def blob(sub: arguments.Parser, option: str, required: bool = True, what: str = "") -> None:
        sub.add_argument(
            option,
            type=arguments.blob,
            required=required,
            help=f"{what}base64, or fileb://PATH for raw bytes (fileb://- reads stdin)",
        )

    def context(sub: arguments.Parser, option: str = "--encryption-context") -> None:
        sub.add_argument(
            option,
            nargs="+",
            action=arguments.MergeMaps,
            type=arguments.context_pairs,
            metavar="KEY=VALUE",
            help="k=v pairs (several, comma-separated or repeated) or a JSON object",
        )

    def algorithm(
        sub: arguments.Parser, option: str, help_text: str, default: str | None = None
    ) -> None:
        sub.add_argument(option, default=default, help=help_text)

    def keyed_message(
        name: str, handler: Handler, help_text: str, algorithm_option: str, algorithm_help: str
    ) -> arguments.Parser:
        """A command over --key-id, a --message blob and a required algorithm."""
        sub = keyed(name, handler, help_text)
        blob(sub, "--message")
        sub.add_argument(algorithm_option, required=True, help=algorithm_help)
        if algorithm_option == "--mac-algorithm":
            _refuse(sub, "--grant-tokens", "--dry-run")
        return sub

    def signing(name: str, handler: Handler, help_text: str) -> arguments.Parser:
        sub = keyed_message(
            name, handler, help_text, "--signing-algorithm", "one of the key's SigningAlgorithms"
        )
        algorithm(sub, "--message-type", "RAW (the default) or DIGEST", default="RAW")
        _refuse(sub, "--grant-tokens", "--dry-run")
        return sub

    def data_key_size(sub: arguments.Parser) -> None:
        size = sub.add_mutually_exclusive_group()
        size.add_argument("--key-spec", help="AES_256 (the default) or AES_128")
        size.add_argument("--number-of-bytes", type=int, help="1 to 1,024")

    def paging(sub: arguments.Parser, items: str) -> None:
        """AWS CLI v2's paging options (see _listing)."""
        sub.add_argument(
            "--max-items",
            type=arguments.positive_int,
            help=f"output at most this many {items}, and a NextToken for the rest",
        )
        sub.add_argument("--starting-token", default="", help="the NextToken of a previous call")
        sub.add_argument(
            "--page-size",
            type=arguments.positive_int,
            help=f"{items} per call to the daemon (1-1,000)",
        )
        sub.add_argument(
            "--limit",
            type=arguments.positive_int,
            help=f"one call for at most this many {items} (1-1,000), answered with its NextMarker",
        )
        sub.add_argument("--marker", help="one call from the NextMarker of a previous one")

    def tags(sub: arguments.Parser, required: bool = False) -> None:
        sub.add_argument(
            "--tags",
            nargs="+",
            action=arguments.MergeMaps,
            type=arguments.tags,
            required=required,
            metavar="TagKey=KEY,TagValue=VALUE",
            help='tags, several or repeated, or a JSON list [{"TagKey": ..., "TagValue": ...}]',
        )

    def policy(sub: arguments.Parser, required: bool = False) -> None:
        sub.add_argument(
            "--policy",
            type=arguments.policy,
            required=required,
            metavar="JSON",
            help='{"Administrators": [...], "Users": [...]}: principal names or globs of them,'
            " inline or as file://PATH",
        )

    def new_key(sub: arguments.Parser) -> None:
        """The options of what a new key starts with (see _new_key)."""
        sub.add_argument("--description", default="")
        tags(sub)
        policy(sub)
        sub.add_argument(
            "--exportable",
            action="store_true",
            help="let wrap-key export the key, wrapped; this cannot change later",
        )

    def valid_to(sub: arguments.Parser) -> None:
        sub.add_argument(
            "--valid-to",
            type=arguments.timestamp,
            metavar="TIME",
            help="when the imported material expires, ISO 8601 (UTC without an offset);"
            " default: never",
        )

    def wrapping_algorithm(sub: arguments.Parser, required: bool = False) -> None:
        sub.add_argument(
            "--wrapping-algorithm",
            required=required,
            help=f"one of {', '.join(keyimport.WRAPPING_ALGORITHMS)}",
        )

    def policy_name(sub: arguments.Parser) -> None:
        sub.add_argument("--policy-name", choices=["default"], default="default")

    def alias(name: str, handler: Handler, help_text: str, target: bool = True) -> None:
        sub = command(name, handler, help_text)
        sub.add_argument("--alias-name", required=True, help="alias/NAME")
        if target:
            key_id(sub, option="--target-key-id", help_text="a key id (not an alias)")

    sub = command("create-key", _create_key, "Create a key in your tenant's token.")
    sub.add_argument(
        "--key-spec", default="AES_256", help="AES_256 (the default); see get-capabilities"
    )
    sub.add_argument(
        "--key-usage",
        help="ENCRYPT_DECRYPT, SIGN_VERIFY or GENERATE_VERIFY_MAC (default: the spec's only one,"
        " else ENCRYPT_DECRYPT)",
    )
    new_key(sub)
    sub.add_argument(
        "--origin",
        default="GENERATED",
        help="GENERATED (the default), or EXTERNAL for a key whose material you import: it"
        " starts PendingImport (see import-key)",
    )
    sub.add_argument("--customer-master-key-spec", dest="key_spec", help="as --key-spec")
    sub.add_argument(
        "--multi-region",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="the primary of a multi-region key in the daemon's region (id mrk-...; see"
        " replicate-key)",
    )
    _refuse(
        sub,
        "--custom-key-store-id",
        "--xks-key-id",
        "--bypass-policy-lockout-safety-check",
    )

    sub = keyed(
        "replicate-key",
        _replicate_key,
        "Make a replica of a multi-region primary key in a peer region (docs/regions.md).",
    )
    sub.add_argument("--replica-region", required=True, help="a peer region's name")
    sub.add_argument("--description", default="", help="default: the primary's")
    tags(sub)
    policy(sub)
    _refuse(sub, "--bypass-policy-lockout-safety-check")

    sub = keyed(
        "update-primary-region",
        _silent("update_primary_region", "key_id", "primary_region"),
        "Make a multi-region key's replica in another region its primary.",
    )
    sub.add_argument("--primary-region", required=True, help="the replica's region")

    _refuse(keyed("describe-key", _describe_key, "Show a key's metadata."), "--grant-tokens")

    sub = command("list-keys", _list_keys, "List your keys.")
    paging(sub, "keys")
    context(sub, "--tag-filter")
    _refuse(sub, "--resource-owners")

    sub = keyed("encrypt", _encrypt, "Encrypt up to 4,096 bytes under a key.")
    blob(sub, "--plaintext")
    context(sub)
    algorithm(
        sub,
        "--encryption-algorithm",
        "SYMMETRIC_DEFAULT (the default), or RSAES_OAEP_* for an RSA key",
        default="SYMMETRIC_DEFAULT",
    )
    _refuse(sub, "--grant-tokens", "--dry-run")

    sub = command("decrypt", _decrypt, "Decrypt a ciphertext blob.")
    blob(sub, "--ciphertext-blob")
    context(sub)
    key_id(sub, required=False)
    algorithm(sub, "--encryption-algorithm", "as given to encrypt; RSA needs --key-id too")
    _refuse(sub, "--grant-tokens", "--recipient", "--dry-run", "--dry-run-modifiers")

    sub = command("re-encrypt", _re_encrypt, "Decrypt and encrypt again, inside the daemon.")
    blob(sub, "--ciphertext-blob")
    key_id(sub, option="--destination-key-id", help_text="the key to encrypt under")
    context(sub, "--source-encryption-context")
    context(sub, "--destination-encryption-context")
    key_id(sub, False, "--source-key-id", "the key that made the blob (needed for RSA)")
    algorithm(sub, "--source-encryption-algorithm", "as for decrypt")
    algorithm(sub, "--destination-encryption-algorithm", "as for encrypt")
    _refuse(sub, "--grant-tokens", "--dry-run", "--dry-run-modifiers")

    for name, handler, help_text in (
        ("generate-data-key", _generate_data_key, "A data key, in plaintext and encrypted."),
        (
            "generate-data-key-without-plaintext",
            _generate_data_key_without_plaintext,
            "A data key, encrypted only.",
        ),
    ):
        sub = keyed(name, handler, help_text)
        data_key_size(sub)
        context(sub)
        _refuse(sub, "--grant-tokens", "--dry-run")
    _refuse(commands.choices["generate-data-key"], "--recipient")

    for name, handler, help_text in (
        (
            "generate-data-key-pair",
            _generate_data_key_pair,
            "A key pair: the public key, and the private key in plaintext and encrypted.",
        ),
        (
            "generate-data-key-pair-without-plaintext",
            _generate_data_key_pair_without_plaintext,
            "A key pair: the public key, and the private key encrypted only.",
        ),
    ):
        sub = keyed(name, handler, help_text)
        sub.add_argument("--key-pair-spec", required=True, help="RSA_*, ECC_NIST_* or EC_*")
        context(sub)
        _refuse(sub, "--grant-tokens", "--dry-run")
    _refuse(commands.choices["generate-data-key-pair"], "--recipient")

    signing("sign", _sign, "Sign a message, or its digest, with an asymmetric key.")
    verify_help = "Verify a signature; an invalid one is a KMSInvalidSignatureException."
    blob(signing("verify", _verify, verify_help), "--signature")

    sub = keyed(PEM_COMMAND, _get_public_key, "The public key of an asymmetric key.")
    sub.set_defaults(pem_handler=_public_key_pem)
    _refuse(sub, "--grant-tokens")

    mac_help = "the key's MacAlgorithm, e.g. HMAC_SHA_256"
    keyed_message(
        "generate-mac", _generate_mac, "An HMAC of a message.", "--mac-algorithm", mac_help
    )
    verify_help = "Verify an HMAC; a wrong one is a KMSInvalidMacException."
    blob(
        keyed_message("verify-mac", _verify_mac, verify_help, "--mac-algorithm", mac_help), "--mac"
    )

    command("get-capabilities", _get_capabilities, "The key specs and algorithms on offer.")

    def envelope_files(name: str, handler: Handler, help_text: str) -> arguments.Parser:
        sub = command(name, handler, help_text)
        sub.add_argument("source", metavar="SOURCE", help="a file, or - for standard input")
        sub.add_argument(
            "destination", metavar="DESTINATION", help="a file, or - for standard output"
        )
        context(sub)
        return sub

    sub = envelope_files(
        "encrypt-file",
        _encrypt_file,
        "Encrypt a file or stream of any size under a fresh data key (HSME format).",
    )
    sub.add_argument(
        "--key-id",
        action="append",
        required=True,
        metavar="KEY_ID",
        help="a key that can decrypt the message (repeat it: any one of them will do)",
    )
    sub.add_argument(
        "--frame-size",
        type=arguments.positive_int,
        default=envelope.DEFAULT_FRAME_SIZE,
        help=f"plaintext bytes per frame (default {envelope.DEFAULT_FRAME_SIZE})",
    )
    envelope_files(
        "decrypt-file",
        _decrypt_file,
        "Decrypt an HSME message (--encryption-context: pairs it must hold); a file"
        " destination appears only once the whole message has verified.",
    )

    sub = command("generate-random", _generate_random, "Random bytes from the HSM.")
    sub.add_argument("--number-of-bytes", type=int, required=True, help="1 to 1,024")
    _refuse(sub, "--custom-key-store-id", "--recipient")

    for name, method, help_text in (
        ("enable-key", "enable_key", "Make a disabled key usable again."),
        ("disable-key", "disable_key", "Make a key unusable until enable-key."),
        ("disable-key-rotation", "disable_key_rotation", "Stop rotating a key automatically."),
    ):
        keyed(name, _silent(method, "key_id"), help_text)

    sub = keyed(
        "schedule-key-deletion",
        _schedule_key_deletion,
        "Destroy a key after a waiting period; cancel-key-deletion stops it.",
    )
    sub.add_argument(
        "--pending-window-in-days", type=arguments.positive_int, help="7 to 30 (default: 30)"
    )

    keyed("cancel-key-deletion", _cancel_key_deletion, "Keep a key; it becomes DISABLED.")

    sub = keyed(
        "update-key-description",
        _silent("update_key_description", "key_id", "description"),
        "Replace a key's description.",
    )
    sub.add_argument("--description", required=True, help='the new description ("" clears it)')

    sub = keyed("tag-resource", _silent("tag_key", "key_id", "tags"), "Add or replace tags.")
    tags(sub, required=True)

    sub = keyed(
        "untag-resource", _silent("untag_key", "key_id", "tag_keys"), "Remove tags from a key."
    )
    sub.add_argument("--tag-keys", nargs="+", action="extend", required=True, metavar="KEY")

    paging(keyed("list-resource-tags", _list_resource_tags, "A key's tags."), "tags")

    sub = keyed("get-key-policy", _get_key_policy, "A key's policy, as a JSON string.")
    policy_name(sub)

    sub = keyed(
        "put-key-policy",
        _silent("put_key_policy", "key_id", "policy"),
        "Replace a key's policy (who administers it, who uses it).",
    )
    policy(sub, required=True)
    policy_name(sub)
    _refuse(sub, "--bypass-policy-lockout-safety-check")

    sub = keyed("list-key-policies", _list_key_policies, "The names of a key's policies.")
    paging(sub, "names")

    sub = keyed(
        "enable-key-rotation",
        _silent("enable_key_rotation", "key_id", "rotation_period_in_days"),
        "Rotate an AES_256 key automatically.",
    )
    sub.add_argument(
        "--rotation-period-in-days", type=arguments.positive_int, help="90 to 2,560 (default: 365)"
    )

    keyed(
        "get-key-rotation-status",
        _get_key_rotation_status,
        "Whether a key rotates automatically, and when next.",
    )
    keyed(
        "rotate-key-on-demand",
        _rotate_key_on_demand,
        "Rotate a key now: a new version becomes primary; older ones still decrypt.",
    )

    sub = keyed("list-key-rotations", _list_key_rotations, "A key's rotations, oldest first.")
    paging(sub, "rotations")
    _refuse(sub, "--include-key-material")

    alias(
        "create-alias",
        _silent("create_alias", "alias_name", "target_key_id"),
        "Give a key a friendly name, usable wherever a key id is.",
    )
    alias(
        "update-alias",
        _silent("update_alias", "alias_name", "target_key_id"),
        "Point an alias at another key of the same spec and usage.",
    )
    alias(
        "delete-alias",
        _silent("delete_alias", "alias_name"),
        "Delete an alias; its key is untouched.",
        target=False,
    )

    sub = command("list-aliases", _list_aliases, "Your aliases.")
    key_id(sub, required=False, help_text="only this key's aliases")
    paging(sub, "aliases")

    sub = keyed(
        "get-parameters-for-import",
        _get_parameters_for_import,
        "A public key to wrap key material under, and an import token (valid 24 hours).",
    )
    wrapping_algorithm(sub, required=True)
    sub.add_argument(
        "--wrapping-key-spec", default="RSA_2048", help="RSA_2048 (the default), RSA_3072, RSA_4096"
    )

    sub = keyed(
        "import-key-material",
        _import_key_material,
        "Import key material wrapped under get-parameters-for-import's public key.",
    )
    blob(sub, "--import-token")
    blob(sub, "--encrypted-key-material")
    valid_to(sub)
    sub.add_argument(
        "--expiration-model",
        choices=["KEY_MATERIAL_EXPIRES", "KEY_MATERIAL_DOES_NOT_EXPIRE"],
        help="as aws: KEY_MATERIAL_EXPIRES needs --valid-to; default: as --valid-to says",
    )
    blob(
        sub,
        "--public-key",
        required=False,
        what="an imported private key's DER SubjectPublicKeyInfo, required for EC keys: ",
    )
    _refuse(sub, "--import-type", "--key-material-description", "--key-material-id")

    sub = keyed(
        "delete-imported-key-material",
        _delete_imported_key_material,
        "Delete a key's imported material; the key returns to PENDING_IMPORT.",
    )
    _refuse(sub, "--key-material-id")

    sub = keyed(
        "import-key",
        _import_key,
        "Import a local key file into a key of origin EXTERNAL: get parameters, wrap the"
        " material here, import it.",
    )
    sub.add_argument(
        "--key-file",
        type=arguments.file_bytes,
        required=True,
        metavar="PATH",
        help="AES/HMAC: the raw key bytes; RSA/EC: an unencrypted PEM or DER private key"
        " (- reads stdin)",
    )
    wrapping_algorithm(sub)
    valid_to(sub)

    sub = keyed("wrap-key", _wrap_key, "Export an exportable key, wrapped under a WRAP_UNWRAP key.")
    key_id(sub, option="--wrapping-key-id", help_text="a WRAP_UNWRAP key")

    sub = command("unwrap-key", _unwrap_key, "Make a new key from a blob of wrap-key.")
    blob(sub, "--wrapped-key")
    key_id(sub, option="--wrapping-key-id", help_text="the WRAP_UNWRAP key that wrapped it")
    new_key(sub)

    batch_parser = commands.add_parser(
        "batch",
        help="Many encrypt, decrypt, sign, ... items in one call each, as JSON Lines.",
        description="Read items as JSON Lines (one JSON object per line with the command's"
        " fields in AWS's names, blobs in base64) and write one JSON line per item, in order:"
        ' the command\'s output, or {"error": {"code": ..., "message": ...}}. The input is sent'
        f" in calls of at most {MAX_BATCH_ITEMS} items.",
        parents=[common],
        allow_abbrev=False,
    )
    batch_commands = batch_parser.add_subparsers(
        dest="batch_command", required=True, metavar="COMMAND"
    )
    for name, (method, item_class, fields) in batch.BATCHES.items():
        sub = command(
            name,
            batch.handler(method, item_class, fields),
            f"{name} each line's item; fields: "
            + ", ".join(
                output.PASCAL_WORD.sub(output.upper, f.name) for f in dataclasses.fields(item_class)
            ),
            batch_commands,
        )
        sub.set_defaults(operation="Batch" + "".join(w.capitalize() for w in name.split("-")))
        sub.add_argument(
            "--input", default="-", metavar="PATH", help="the JSON Lines file (default: stdin)"
        )

    audit_help = (
        "The audit trail. `audit list` calls the KeyManagementService with your tenant"
        " certificate and lists your tenant's events; with --admin, or --tenant, it calls the"
        " AdminService, which needs an operator certificate (--cert/--key), and lists every"
        " tenant's. `audit verify` (AdminService) checks the hash chain and exits 1 if it is"
        " broken."
    )
    audit = commands.add_parser(
        "audit",
        help="The audit trail: list its events, verify its hash chain.",
        description=audit_help,
        parents=[common],
        allow_abbrev=False,
    )
    audit_commands = audit.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")

    sub = command(
        "list",
        _list_audit_events,
        "Audit events, oldest first (all pages unless --limit).",
        audit_commands,
    )
    sub.set_defaults(admin_handler=_list_audit_events, operation="ListAuditEvents")
    key_id(sub, required=False, help_text="only the events about this key")
    sub.add_argument(
        "--admin",
        action="store_true",
        help="call the AdminService (operator certificate): every tenant's events",
    )
    sub.add_argument("--tenant", help="only this tenant's events; implies --admin")
    paging(sub, "events")

    sub = command(
        "verify",
        None,
        "Check the audit log's hash chain and signed checkpoints (operator certificate); exit 1"
        " if it is broken or a time in it goes backwards.",
        audit_commands,
    )
    sub.set_defaults(
        admin_handler=_verify_audit_log,
        operation="VerifyAuditLog",
        exit_status=_verification_status,
    )
    for name, reason in _NOT_IN_HSMD.items():
        # Out of the help (no help=); takes any words, since the command is refused whole.
        sub = commands.add_parser(name, prefix_chars="\0", add_help=False)
        sub.add_argument("words", nargs="*")
        sub.set_defaults(unsupported=f"{reason} (docs/aws.md)")
    return parser
