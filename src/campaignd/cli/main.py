"""`campaignctl`'s command table, parser and entry point."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import grpc

from campaignd import __version__
from campaignd.cli import (
    campaigns,
    channels,
    cluster,
    contacts,
    events,
    lists,
    render,
    reports,
    segments,
    suppressions,
)
from campaignd.cli.arguments import (
    Command,
    Group,
    Parser,
    positive_float,
)
from campaignd.cli.connection import (
    ADDRESS_ENV,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    PROG,
    SOCKET_ENV,
    TOKEN_ENV,
    Client,
    UsageError,
    exit_status,
    resolve_target,
    rpc_error_lines,
)

COMMANDS: tuple[Command | Group, ...] = (
    *campaigns.COMMANDS,
    *channels.COMMANDS,
    *reports.COMMANDS,
    channels.CHANNEL_TYPES,
    contacts.GROUP,
    lists.GROUP,
    segments.GROUP,
    suppressions.GROUP,
    events.GROUP,
    cluster.CLUSTER,
)


def global_arguments(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """Connection and output options. They are accepted before and after the command; after it,
    they default to SUPPRESS so that they do not overwrite what was given before it."""

    def default(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    group = parser.add_argument_group("connection and output")

    def add(*flags: str, **options: Any) -> None:
        # A command's own option of the same name wins (`suppressions list --address`); the
        # connection option is then accepted before the command name only.
        if top or flags[0] not in parser._option_string_actions:
            group.add_argument(*flags, **options)

    add("--socket", default=default(None), metavar="PATH", help=f"the daemon's Unix socket (${SOCKET_ENV})")
    add(
        "--config",
        default=default(None),
        metavar="FILE",
        help="read the socket path from the daemon's config",
    )
    add(
        "--address",
        default=default(None),
        metavar="HOST:PORT",
        help=f"the daemon's TLS listener (${ADDRESS_ENV})",
    )
    add(
        "--ca-file",
        default=default(None),
        metavar="FILE",
        help="CA certificates for --address (default: system)",
    )
    add("--cert-file", default=default(None), metavar="FILE", help="client certificate for mTLS")
    add("--key-file", default=default(None), metavar="FILE", help="client key for mTLS")
    add("--token", default=default(""), help=f"bearer token for --address (${TOKEN_ENV})")
    add("--token-file", default=default(None), metavar="FILE", help="read the bearer token from FILE")
    add(
        "--timeout",
        type=positive_float,
        default=default(30.0),
        metavar="SECONDS",
        help="deadline of each call (30)",
    )
    add("--json", action="store_true", default=default(False), help="print proto3 JSON")


def add_commands(
    subparsers: argparse._SubParsersAction[Parser], commands: Sequence[Command | Group], dest: str
) -> None:
    """One subparser per command; a Group gets subparsers of its own."""
    for entry in commands:
        sub = subparsers.add_parser(entry.name, help=entry.help, description=entry.help)
        if isinstance(entry, Group):
            nested = sub.add_subparsers(dest=f"{dest}_{entry.name}", required=True, metavar="COMMAND")
            add_commands(nested, entry.commands, f"{dest}_{entry.name}")
            continue
        entry.arguments(sub)
        global_arguments(sub, top=False)
        sub.set_defaults(run=entry.run)


def build_parser(commands: Sequence[Command | Group] = COMMANDS) -> Parser:
    """The parser for the whole command line."""
    parser = Parser(prog=PROG, description="A command-line client of the campaignd daemon.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    global_arguments(parser, top=True)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_commands(subparsers, commands, "command")
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Entry point of `campaignctl`; returns the exit status."""
    environ = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)
    # Drawing is for a reader at a terminal; pipes, files and --json get plain, stable text.
    render.OUTPUT.terminal = sys.stdout.isatty() and not args.json
    client: Client | None = None
    try:
        target = resolve_target(args, environ)
        client = Client(target, timeout=args.timeout, json_output=args.json)
        status: int = args.run(client, args)
        return status
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except grpc.RpcError as err:
        if not isinstance(err, grpc.Call):
            raise
        where = client.target.description if client else "?"
        for line in rpc_error_lines(err, where):
            print(line, file=sys.stderr)
        return exit_status(err.code())
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader (e.g. `head`) went away; stop quietly and keep the interpreter from complaining.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE
    finally:
        if client is not None:
            client.close()


if __name__ == "__main__":
    sys.exit(main())
