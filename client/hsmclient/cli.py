"""`hsm`: hsmd's command line, shaped like `aws kms` so that scripts move over with few changes.

Subcommand and option names, JSON field names, blob arguments (base64 or fileb://), --output,
--query and exit codes follow AWS CLI v2: 252 for a bad command line, 254 when the daemon refuses
the request, 255 when it cannot be reached or the connection settings are wrong.
"""

import argparse
import base64
import binascii
import json
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NoReturn

import grpc

from hsmclient.channel import ConnectionSettings
from hsmclient.client import HsmClient, KeyMetadata
from hsmclient.errors import ConfigurationError, HsmError

EXIT_USAGE = 252
EXIT_SERVICE_ERROR = 254
EXIT_CONNECTION_ERROR = 255

# Each gRPC status as the AWS KMS exception a script may look for, and the exit code. The daemon
# being unreachable, too slow or answering corrupted data is no refusal of the request: 255.
_AWS_ERRORS: dict[grpc.StatusCode, tuple[str, int]] = {
    grpc.StatusCode.INVALID_ARGUMENT: ("ValidationException", EXIT_SERVICE_ERROR),
    grpc.StatusCode.NOT_FOUND: ("NotFoundException", EXIT_SERVICE_ERROR),
    grpc.StatusCode.ALREADY_EXISTS: ("AlreadyExistsException", EXIT_SERVICE_ERROR),
    grpc.StatusCode.FAILED_PRECONDITION: ("KMSInvalidStateException", EXIT_SERVICE_ERROR),
    grpc.StatusCode.PERMISSION_DENIED: ("AccessDeniedException", EXIT_SERVICE_ERROR),
    grpc.StatusCode.UNAUTHENTICATED: ("UnrecognizedClientException", EXIT_SERVICE_ERROR),
    grpc.StatusCode.RESOURCE_EXHAUSTED: ("ThrottlingException", EXIT_SERVICE_ERROR),
    grpc.StatusCode.UNIMPLEMENTED: ("UnsupportedOperationException", EXIT_SERVICE_ERROR),
    grpc.StatusCode.UNAVAILABLE: ("ServiceUnavailableException", EXIT_CONNECTION_ERROR),
    grpc.StatusCode.DEADLINE_EXCEEDED: ("DependencyTimeoutException", EXIT_CONNECTION_ERROR),
    grpc.StatusCode.DATA_LOSS: ("ChecksumMismatchException", EXIT_CONNECTION_ERROR),
}
_AWS_INTERNAL_ERROR = ("KMSInternalException", EXIT_SERVICE_ERROR)

# Global options (option, ConnectionSettings field, metavar, help); the field's HSM_* variable
# is the default.
_CONNECTION_OPTIONS = (
    ("--endpoint", "endpoint", "HOST:PORT", "the daemon's address"),
    ("--ca-cert", "ca_cert_path", "PEM", "the CA that issued the daemon's certificate"),
    ("--cert", "client_cert_path", "PEM", "your client certificate"),
    ("--key", "client_key_path", "PEM", "the private key of your client certificate"),
    ("--server-name", "server_name", "NAME", "the name the daemon's certificate must carry"),
)
_OPTION_BY_VARIABLE = {ConnectionSettings.VARIABLES[f]: o for o, f, _, _ in _CONNECTION_OPTIONS}

_Result = dict[str, object]
_Handler = Callable[[HsmClient, argparse.Namespace], _Result]
# The handler of the one command that can print PEM (`--output pem`), as plain text.
_PemHandler = Callable[[HsmClient, argparse.Namespace], str]
_PEM_COMMAND = "get-public-key"


class _ParserExit(Exception):
    """argparse wants to exit (--help, a bad command line); main() returns the status instead."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that never calls sys.exit, and fails with AWS's usage exit code."""

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            self._print_message(message, sys.stderr)
        raise _ParserExit(status)

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _blob(value: str) -> bytes:
    """A blob argument as AWS CLI v2 reads it: fileb://PATH (raw bytes, - for stdin) or base64."""
    if value.startswith("fileb://"):
        path = value.removeprefix("fileb://")
        try:
            return sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
        except OSError as error:
            raise argparse.ArgumentTypeError(f"cannot read {path}: {error.strerror}") from error
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except binascii.Error as error:
        raise argparse.ArgumentTypeError(
            f"invalid base64 ({error}); pass raw bytes as fileb://PATH"
        ) from error


def _context_pairs(value: str) -> dict[str, str]:
    """One --encryption-context word: a JSON object, or AWS shorthand k=v[,k=v...]."""
    if value.lstrip().startswith("{"):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as error:
            raise argparse.ArgumentTypeError(f"invalid JSON: {error}") from error
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


def _context(words: list[dict[str, str]] | None) -> dict[str, str] | None:
    """All words of one *-encryption-context option merged into one map; None if not given."""
    if words is None:
        return None
    return {key: val for pairs in words for key, val in pairs.items()}


_QUERY_STEP = re.compile(r"([A-Za-z_]\w*)((?:\[-?\d+\])*)")


def _query_path(expression: str) -> list[str | int]:
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


def _select(data: object, path: list[str | int]) -> object:
    """Follow a query path; a missing field or index gives None, as JMESPath's null does."""
    for step in path:
        if isinstance(step, str) and isinstance(data, dict):
            data = data.get(step)
        elif isinstance(step, int) and isinstance(data, list) and -len(data) <= step < len(data):
            data = data[step]
        else:
            return None
    return data


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {number}")
    return number


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


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


_WORD_START = re.compile(r"(?<!^)(?=[A-Z])")


def _aws(result: object, *names: str) -> _Result:
    """The AWS output fields `names`, each the `result` attribute of the same name in snake case
    (KeyId: key_id), blobs in base64 and tuples as lists. A name ending in "?" is left out when
    empty, as AWS leaves out the *Algorithms lists of the operations a key cannot do."""
    output: _Result = {}
    for name in names:
        field = name.removesuffix("?")
        value = getattr(result, _WORD_START.sub("_", field).lower())
        if name.endswith("?") and not value:
            continue
        if isinstance(value, bytes):
            value = _b64(value)
        output[field] = list(value) if isinstance(value, tuple) else value
    return output


def _key_metadata(key: KeyMetadata) -> _Result:
    return {
        **_aws(key, "KeyId"),
        "Arn": key.name,
        "CreationDate": key.creation_time.isoformat(),
        "Enabled": key.key_state == "ENABLED",
        **_aws(
            key,
            "Description",
            "KeyUsage",
            "KeyState",
            "Origin",
            "KeySpec",
            "EncryptionAlgorithms?",
            "SigningAlgorithms?",
            "MacAlgorithms?",
            "PrimaryVersion",
        ),
    }


def _create_key(client: HsmClient, args: argparse.Namespace) -> _Result:
    key = client.create_key(args.key_spec, args.key_usage, args.description)
    return {"KeyMetadata": _key_metadata(key)}


def _describe_key(client: HsmClient, args: argparse.Namespace) -> _Result:
    return {"KeyMetadata": _key_metadata(client.describe_key(args.key_id))}


def _list_keys(client: HsmClient, args: argparse.Namespace) -> _Result:
    """Like `aws kms list-keys`: every page unless --limit asks for one."""
    if args.limit is None:
        keys, next_token = list(client.iter_keys(page_token=args.starting_token)), ""
    else:
        keys, next_token = client.list_keys(args.limit, args.starting_token)
    result: _Result = {"Keys": [{"KeyId": key.key_id, "KeyArn": key.name} for key in keys]}
    if next_token:
        result["NextMarker"] = next_token
    return result


def _encrypt(client: HsmClient, args: argparse.Namespace) -> _Result:
    context = _context(args.encryption_context)
    result = client.encrypt(args.key_id, args.plaintext, context, args.encryption_algorithm)
    return _aws(result, "CiphertextBlob", "KeyId", "EncryptionAlgorithm", "KeyVersion")


def _decrypt(client: HsmClient, args: argparse.Namespace) -> _Result:
    context = _context(args.encryption_context)
    result = client.decrypt(args.ciphertext_blob, context, args.key_id, args.encryption_algorithm)
    return _aws(result, "KeyId", "Plaintext", "EncryptionAlgorithm", "KeyVersion")


def _re_encrypt(client: HsmClient, args: argparse.Namespace) -> _Result:
    result = client.re_encrypt(
        args.ciphertext_blob,
        args.destination_key_id,
        source_encryption_context=_context(args.source_encryption_context),
        destination_encryption_context=_context(args.destination_encryption_context),
        source_key_id=args.source_key_id,
        source_encryption_algorithm=args.source_encryption_algorithm,
        destination_encryption_algorithm=args.destination_encryption_algorithm,
    )
    return _aws(
        result,
        "CiphertextBlob",
        "SourceKeyId",
        "KeyId",
        "SourceEncryptionAlgorithm",
        "DestinationEncryptionAlgorithm",
        "SourceKeyVersion",
        "KeyVersion",
    )


def _generate_data_key(client: HsmClient, args: argparse.Namespace) -> _Result:
    key = client.generate_data_key(
        args.key_id, args.key_spec, args.number_of_bytes, _context(args.encryption_context)
    )
    return _aws(key, "CiphertextBlob", "Plaintext", "KeyId", "KeyVersion")


def _generate_data_key_without_plaintext(client: HsmClient, args: argparse.Namespace) -> _Result:
    key = client.generate_data_key_without_plaintext(
        args.key_id, args.key_spec, args.number_of_bytes, _context(args.encryption_context)
    )
    return _aws(key, "CiphertextBlob", "KeyId", "KeyVersion")


def _generate_data_key_pair(client: HsmClient, args: argparse.Namespace) -> _Result:
    context = _context(args.encryption_context)
    pair = client.generate_data_key_pair(args.key_id, args.key_pair_spec, context)
    return _aws(
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
) -> _Result:
    context = _context(args.encryption_context)
    pair = client.generate_data_key_pair_without_plaintext(args.key_id, args.key_pair_spec, context)
    return _aws(pair, "PrivateKeyCiphertextBlob", "PublicKey", "KeyId", "KeyPairSpec", "KeyVersion")


def _sign(client: HsmClient, args: argparse.Namespace) -> _Result:
    result = client.sign(args.key_id, args.message, args.signing_algorithm, args.message_type)
    return _aws(result, "KeyId", "Signature", "SigningAlgorithm", "KeyVersion")


def _verify(client: HsmClient, args: argparse.Namespace) -> _Result:
    """An invalid signature is output (SignatureValid false), not an error: exit 0 either way."""
    result = client.verify(
        args.key_id, args.message, args.signature, args.signing_algorithm, args.message_type
    )
    return _aws(result, "KeyId", "SignatureValid", "SigningAlgorithm", "KeyVersion")


def _get_public_key(client: HsmClient, args: argparse.Namespace) -> _Result:
    return _aws(
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


def _generate_mac(client: HsmClient, args: argparse.Namespace) -> _Result:
    result = client.generate_mac(args.key_id, args.message, args.mac_algorithm)
    return _aws(result, "Mac", "MacAlgorithm", "KeyId", "KeyVersion")


def _verify_mac(client: HsmClient, args: argparse.Namespace) -> _Result:
    """As verify: a wrong MAC is output (MacValid false) and exits 0."""
    result = client.verify_mac(args.key_id, args.message, args.mac, args.mac_algorithm)
    return _aws(result, "KeyId", "MacValid", "MacAlgorithm", "KeyVersion")


def _get_capabilities(client: HsmClient, args: argparse.Namespace) -> _Result:
    return _aws(
        client.get_capabilities(),
        "KeySpecs",
        "EncryptionAlgorithms",
        "SigningAlgorithms",
        "MacAlgorithms",
        "Notes",
    )


def _generate_random(client: HsmClient, args: argparse.Namespace) -> _Result:
    return {"Plaintext": _b64(client.generate_random(args.number_of_bytes))}


def _build_parser() -> _Parser:
    # Global options are accepted before and after the subcommand, as aws accepts them.
    # SUPPRESS keeps an option given before the subcommand from being reset by the subparser.
    common = _Parser(add_help=False, argument_default=argparse.SUPPRESS)
    for option, field, metavar, help_text in _CONNECTION_OPTIONS:
        variable = ConnectionSettings.VARIABLES[field]
        common.add_argument(
            option, dest=field, metavar=metavar, help=f"{help_text} (default: ${variable})"
        )
    common.add_argument(
        "--output",
        choices=["json", "text", "pem"],
        help=f"output format (json); pem only for {_PEM_COMMAND}",
    )
    common.add_argument(
        "--query",
        type=_query_path,
        metavar="FIELD",
        help="print only this field of the output, e.g. KeyMetadata.KeyId or CiphertextBlob",
    )

    parser = _Parser(
        prog="hsm",
        description="hsmd's command line, shaped like `aws kms`.",
        parents=[common],
        allow_abbrev=False,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: _Handler, help_text: str) -> _Parser:
        sub: _Parser = commands.add_parser(
            name, help=help_text, description=help_text, parents=[common], allow_abbrev=False
        )
        sub.set_defaults(handler=handler)
        return sub

    def key_id(
        sub: _Parser, required: bool = True, option: str = "--key-id", help_text: str = "the key"
    ) -> None:
        sub.add_argument(option, required=required, metavar="KEY_ID", help=help_text)

    def blob(sub: _Parser, option: str) -> None:
        sub.add_argument(
            option,
            type=_blob,
            required=True,
            help="base64, or fileb://PATH for raw bytes (fileb://- reads stdin)",
        )

    def context(sub: _Parser, option: str = "--encryption-context") -> None:
        sub.add_argument(
            option,
            nargs="+",
            action="extend",
            type=_context_pairs,
            metavar="KEY=VALUE",
            help="k=v pairs (several, comma-separated or repeated) or a JSON object",
        )

    def algorithm(sub: _Parser, option: str, help_text: str, default: str | None = None) -> None:
        sub.add_argument(option, default=default, help=help_text)

    def keyed_message(
        name: str, handler: _Handler, help_text: str, algorithm_option: str, algorithm_help: str
    ) -> _Parser:
        """A command over --key-id, a --message blob and a required algorithm."""
        sub = command(name, handler, help_text)
        key_id(sub)
        blob(sub, "--message")
        sub.add_argument(algorithm_option, required=True, help=algorithm_help)
        return sub

    def signing(name: str, handler: _Handler, help_text: str) -> _Parser:
        sub = keyed_message(
            name, handler, help_text, "--signing-algorithm", "one of the key's SigningAlgorithms"
        )
        algorithm(sub, "--message-type", "RAW (the default) or DIGEST", default="RAW")
        return sub

    def data_key_size(sub: _Parser) -> None:
        size = sub.add_mutually_exclusive_group()
        size.add_argument("--key-spec", help="AES_256 (the default)")
        size.add_argument("--number-of-bytes", type=int, help="1 to 1,024")

    sub = command("create-key", _create_key, "Create a key in your tenant's token.")
    sub.add_argument(
        "--key-spec", default="AES_256", help="AES_256 (the default); see get-capabilities"
    )
    sub.add_argument(
        "--key-usage",
        help="ENCRYPT_DECRYPT, SIGN_VERIFY or GENERATE_VERIFY_MAC (default: the spec's only one,"
        " else ENCRYPT_DECRYPT)",
    )
    sub.add_argument("--description", default="")

    key_id(command("describe-key", _describe_key, "Show a key's metadata."))

    sub = command("list-keys", _list_keys, "List your keys (all pages unless --limit).")
    sub.add_argument("--limit", type=_positive_int, help="at most this many keys (1 to 1,000)")
    sub.add_argument("--starting-token", default="", help="the NextMarker of a previous call")

    sub = command("encrypt", _encrypt, "Encrypt up to 4,096 bytes under a key.")
    key_id(sub)
    blob(sub, "--plaintext")
    context(sub)
    algorithm(
        sub,
        "--encryption-algorithm",
        "SYMMETRIC_DEFAULT (the default), or RSAES_OAEP_* for an RSA key",
        default="SYMMETRIC_DEFAULT",
    )

    sub = command("decrypt", _decrypt, "Decrypt a ciphertext blob.")
    blob(sub, "--ciphertext-blob")
    context(sub)
    key_id(sub, required=False)
    algorithm(sub, "--encryption-algorithm", "as given to encrypt; RSA needs --key-id too")

    sub = command("re-encrypt", _re_encrypt, "Decrypt and encrypt again, inside the daemon.")
    blob(sub, "--ciphertext-blob")
    key_id(sub, option="--destination-key-id", help_text="the key to encrypt under")
    context(sub, "--source-encryption-context")
    context(sub, "--destination-encryption-context")
    key_id(sub, False, "--source-key-id", "the key that made the blob (needed for RSA)")
    algorithm(sub, "--source-encryption-algorithm", "as for decrypt")
    algorithm(sub, "--destination-encryption-algorithm", "as for encrypt")

    for name, handler, help_text in (
        ("generate-data-key", _generate_data_key, "A data key, in plaintext and encrypted."),
        (
            "generate-data-key-without-plaintext",
            _generate_data_key_without_plaintext,
            "A data key, encrypted only.",
        ),
    ):
        sub = command(name, handler, help_text)
        key_id(sub)
        data_key_size(sub)
        context(sub)

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
        sub = command(name, handler, help_text)
        key_id(sub)
        sub.add_argument("--key-pair-spec", required=True, help="RSA_* or EC_*")
        context(sub)

    signing("sign", _sign, "Sign a message, or its digest, with an asymmetric key.")
    verify_help = "Verify a signature; SignatureValid tells, the exit code does not."
    blob(signing("verify", _verify, verify_help), "--signature")

    sub = command(_PEM_COMMAND, _get_public_key, "The public key of an asymmetric key.")
    key_id(sub)
    sub.set_defaults(pem_handler=_public_key_pem)

    mac_help = "the key's MacAlgorithm, e.g. HMAC_SHA_256"
    keyed_message(
        "generate-mac", _generate_mac, "An HMAC of a message.", "--mac-algorithm", mac_help
    )
    verify_help = "Verify an HMAC; MacValid tells, the exit code does not."
    blob(
        keyed_message("verify-mac", _verify_mac, verify_help, "--mac-algorithm", mac_help), "--mac"
    )

    command("get-capabilities", _get_capabilities, "The key specs and algorithms on offer.")

    sub = command("generate-random", _generate_random, "Random bytes from the HSM.")
    sub.add_argument("--number-of-bytes", type=int, required=True, help="1 to 1,024")
    return parser


def _connection_settings(args: argparse.Namespace) -> ConnectionSettings:
    """The HSM_* variables, with any option given on the command line taking precedence."""
    overrides = {
        ConnectionSettings.VARIABLES[field]: getattr(args, field)
        for _, field, _, _ in _CONNECTION_OPTIONS
        if hasattr(args, field)
    }
    return ConnectionSettings.from_env({**os.environ, **overrides})


def _handler(parser: _Parser, args: argparse.Namespace) -> _Handler | _PemHandler:
    """The command's handler for the --output asked for; only get-public-key can print PEM.

    Raises:
        _ParserExit: --output pem for another command, or with --query.
    """
    if getattr(args, "output", None) != "pem":
        handler: _Handler = args.handler
        return handler
    pem_handler: _PemHandler | None = getattr(args, "pem_handler", None)
    if pem_handler is None:
        parser.error(f"argument --output: pem is only for {_PEM_COMMAND}, not {args.command}")
    if getattr(args, "query", None) is not None:
        parser.error("argument --query: not allowed with --output pem")
    return pem_handler


def _print_result(result: object, output: str) -> None:
    if output == "pem":
        print(result, end="")
    elif output == "json":
        print(json.dumps(result, indent=4, ensure_ascii=False))
    else:
        for line in _text_lines(result):
            print(line)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `hsm` command and return its exit code; never calls sys.exit."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
        handler = _handler(parser, args)
    except _ParserExit as exit_:
        return exit_.status
    operation = "".join(word.capitalize() for word in args.command.split("-"))
    try:
        with HsmClient(_connection_settings(args).open_channel()) as client:
            result = handler(client, args)
    except ConfigurationError as error:
        print(f"hsm: {error} (option {_OPTION_BY_VARIABLE[error.variable]})", file=sys.stderr)
        return EXIT_CONNECTION_ERROR
    except ValueError as error:  # the client refused an argument before calling the daemon
        print(f"hsm: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except HsmError as error:
        name, status = _AWS_ERRORS.get(error.code, _AWS_INTERNAL_ERROR)
        print(
            f"An error occurred ({name}) when calling the {operation} operation: {error.message}",
            file=sys.stderr,
        )
        return status
    query = getattr(args, "query", None)
    _print_result(
        result if query is None else _select(result, query), getattr(args, "output", "json")
    )
    return 0
