"""`hsm`: hsmd's command line, a drop-in for `aws kms` scripts.

Command names, options (every input of botocore's KMS service model for each command; those
hsmd cannot honour refused with the reason), JSON field names and AWS's enum spellings, blob
arguments (base64 or fileb://), paging, --output json|text|table, --query, error names and exit
codes follow AWS CLI v2: 252 for a bad command line, 254 when the daemon refuses the request,
255 when it cannot be reached or the connection settings are wrong. Commands for which aws
prints nothing (enable-key, tag-resource, create-alias, ...) print nothing. `hsm audit verify`
exits 1 when the audit log is broken or a time in it goes backwards, so that scripts can test
it. Beyond aws: `hsm import-key` does the whole import flow from a local key file, `hsm
wrap-key` and `hsm unwrap-key` move exportable keys, `hsm encrypt-file` and `hsm decrypt-file`
encrypt data of any size in the HSME envelope format (docs/envelope.md). docs/aws.md maps one
to the other.

The package: `arguments` reads option values, `output` shapes and prints results, `batch`
runs `hsm batch`, `commands` holds the handlers and the parser, and `main` here runs one.
"""

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from functools import partial
from typing import TypeVar

import grpc

from hsmclient import aws, envelope
from hsmclient.channel import PROFILE_VARIABLE, ConnectionSettings
from hsmclient.cli import arguments, commands, output
from hsmclient.cli.arguments import EXIT_USAGE
from hsmclient.cli.commands import EXIT_AUDIT_CHAIN_BROKEN, EXIT_ENVELOPE_REFUSED
from hsmclient.client import AdminClient, HsmClient
from hsmclient.errors import (
    ChecksumMismatchError,
    ConfigurationError,
    HsmError,
    ResourceExhaustedError,
)

_Client = TypeVar("_Client", HsmClient, AdminClient)
_Output = TypeVar("_Output")

__all__ = [
    "EXIT_AUDIT_CHAIN_BROKEN",
    "EXIT_CONNECTION_ERROR",
    "EXIT_ENVELOPE_REFUSED",
    "EXIT_SERVICE_ERROR",
    "EXIT_USAGE",
    "main",
]

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
    grpc.StatusCode.ABORTED: ("ConflictException", EXIT_SERVICE_ERROR),
}
_AWS_INTERNAL_ERROR = ("KMSInternalException", EXIT_SERVICE_ERROR)  # DATA_LOSS from the daemon too
# A CRC32C check of the client's own that failed: the data was corrupted on the way.
_CHECKSUM_MISMATCH = ("ChecksumMismatchException", EXIT_CONNECTION_ERROR)

_OPTION_BY_VARIABLE = {
    **{ConnectionSettings.VARIABLES[f]: o for o, f, _, _ in commands.CONNECTION_OPTIONS},
    PROFILE_VARIABLE: "--profile",
}


def _connection_settings(args: argparse.Namespace) -> ConnectionSettings:
    """The settings (channel.ConnectionSettings.from_env: HSM_* variables over the profile),
    with any option given on the command line taking precedence."""
    overrides = {
        ConnectionSettings.VARIABLES[field]: getattr(args, field)
        for _, field, _, _ in commands.CONNECTION_OPTIONS
        if hasattr(args, field)
    }
    if hasattr(args, "profile"):
        overrides[PROFILE_VARIABLE] = args.profile
    return ConnectionSettings.from_env({**os.environ, **overrides})


def _run(
    client_class: Callable[[grpc.Channel], _Client],
    handler: Callable[[_Client, argparse.Namespace], _Output],
    args: argparse.Namespace,
    channel: grpc.Channel,
) -> _Output:
    with client_class(channel) as client:
        return handler(client, args)


def _wants_admin(args: argparse.Namespace) -> bool:
    """Whether the command goes to the AdminService: it has no other handler, or --admin or
    --tenant asks for it."""
    return (
        args.handler is None or getattr(args, "admin", False) or bool(getattr(args, "tenant", ""))
    )


def _command(
    parser: arguments.Parser, args: argparse.Namespace
) -> Callable[[grpc.Channel], object]:
    """The command, bound to the client it needs and the --output asked for, to be run on a
    channel; only get-public-key can print PEM.

    Raises:
        arguments.ParserExit: --output pem for another command, or with --query.
    """
    if getattr(args, "output", None) != "pem":
        if _wants_admin(args):
            return partial(_run, AdminClient, args.admin_handler, args)
        return partial(_run, HsmClient, args.handler, args)
    pem_handler: commands.PemHandler | None = getattr(args, "pem_handler", None)
    if pem_handler is None:
        parser.error(
            f"argument --output: pem is only for {commands.PEM_COMMAND}, not {args.command}"
        )
    if getattr(args, "query", None) is not None:
        parser.error("argument --query: not allowed with --output pem")
    return partial(_run, HsmClient, pem_handler, args)


def _operation(args: argparse.Namespace) -> str:
    """The operation to name in an error: AWS's name for the command (TagResource)."""
    default = "".join(word.capitalize() for word in args.command.split("-"))
    return str(getattr(args, "operation", default))


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `hsm` command and return its exit code; never calls sys.exit."""
    parser = commands.build_parser()
    try:
        args = parser.parse_args(argv)
        if hasattr(args, "unsupported"):  # an AWS KMS operation hsmd does not have
            raise commands.AwsError("UnsupportedOperationException", args.unsupported)
        arguments.decode_blobs(parser, args)
        command = _command(parser, args)
        result = command(_connection_settings(args).open_channel())
    except arguments.ParserExit as exit_:
        return exit_.status
    except ConfigurationError as error:
        option = _OPTION_BY_VARIABLE.get(error.variable)
        print(f"hsm: {error}" + (f" (option {option})" if option else ""), file=sys.stderr)
        return EXIT_CONNECTION_ERROR
    except ValueError as error:  # the client refused an argument before calling the daemon
        print(f"hsm: error: {error}", file=sys.stderr)
        return arguments.EXIT_USAGE
    except envelope.EnvelopeError as error:
        print(f"hsm: {error}", file=sys.stderr)
        return commands.EXIT_ENVELOPE_REFUSED
    except (HsmError, commands.AwsError) as error:
        name, status = _aws_error(error)
        print(
            f"An error occurred ({name}) when calling the {_operation(args)} operation: {error}",
            file=sys.stderr,
        )
        return status
    query = getattr(args, "query", None)
    if result is not None:  # None: the command prints nothing, as aws for enable-key, ...
        selected = result if query is None else output.select(result, query)
        try:
            output.print_result(selected, getattr(args, "output", "json"), _operation(args))
            sys.stdout.flush()
        except BrokenPipeError:  # `hsm list-keys | head`: the reader had what it wanted
            # Python's advice: point stdout at /dev/null, so the flush at exit fails no more.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    exit_status: Callable[[object], int] | None = getattr(args, "exit_status", None)
    return 0 if exit_status is None else exit_status(result)


def _aws_error(error: HsmError | commands.AwsError) -> tuple[str, int]:
    """The AWS KMS exception name of an error, and the exit code: by the daemon's reason where
    it gave one (a disabled key: DisabledException), else by the status code."""
    if isinstance(error, commands.AwsError):
        return error.name, EXIT_SERVICE_ERROR
    if isinstance(error, ChecksumMismatchError):
        return _CHECKSUM_MISMATCH
    if error.reason is not None and error.reason in aws.ERROR_NAMES:
        return aws.ERROR_NAMES[error.reason], EXIT_SERVICE_ERROR
    if isinstance(error, ResourceExhaustedError) and error.retry_after is None:
        return "LimitExceededException", EXIT_SERVICE_ERROR  # waiting will not lift it
    return _AWS_ERRORS.get(error.code, _AWS_INTERNAL_ERROR)
