"""`campaignctl`'s command table, parser and entry point."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import grpc

from campaignd import __version__
from campaignd.cli.arguments import (
    Command,
    Group,
    _Parser,
    name_argument,
    no_arguments,
    paging_arguments,
    positive_float,
)
from campaignd.cli.campaigns import (
    create_arguments,
    delete_arguments,
    duplicate_arguments,
    lifecycle_arguments,
    list_arguments,
    run_archive,
    run_create,
    run_delete,
    run_duplicate,
    run_get,
    run_launch,
    run_list,
    run_pause,
    run_restart,
    run_resume,
    run_retry_failed,
    run_schedule,
    run_stop,
    run_unarchive,
    run_unschedule,
    run_update,
    update_arguments,
)
from campaignd.cli.channels import (
    add_channel_arguments,
    estimate_arguments,
    preview_arguments,
    run_add_channel,
    run_channels,
    run_estimate,
    run_preview,
    run_test_send,
    test_send_arguments,
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
from campaignd.cli.contacts import (
    contact_argument,
    contacts_create_arguments,
    contacts_list_arguments,
    contacts_update_arguments,
    run_contacts_create,
    run_contacts_delete,
    run_contacts_get,
    run_contacts_list,
    run_contacts_update,
)
from campaignd.cli.csv_import import contacts_import_arguments, run_contacts_import
from campaignd.cli.lists import (
    list_argument,
    lists_create_arguments,
    members_arguments,
    run_lists_add,
    run_lists_create,
    run_lists_delete,
    run_lists_list,
    run_lists_remove,
)
from campaignd.cli.reports import (
    history_arguments,
    messages_arguments,
    run_history,
    run_messages,
    run_report,
    run_watch,
)
from campaignd.cli.segments import (
    run_segments_create,
    run_segments_delete,
    run_segments_get,
    run_segments_list,
    segment_argument,
    segments_create_arguments,
)
from campaignd.cli.suppressions import (
    run_suppressions_add,
    run_suppressions_check,
    run_suppressions_list,
    run_suppressions_remove,
    suppressions_add_arguments,
    suppressions_check_arguments,
    suppressions_list_arguments,
    suppressions_remove_arguments,
)

CONTACT_COMMANDS: tuple[Command | Group, ...] = (
    Group(
        "contacts",
        "contacts: create, get, update, delete, list, import",
        (
            Command("create", "create a contact", contacts_create_arguments, run_contacts_create),
            Command("get", "show a contact", contact_argument, run_contacts_get),
            Command("update", "change a contact's fields", contacts_update_arguments, run_contacts_update),
            Command(
                "delete", "delete a contact and its list memberships", contact_argument, run_contacts_delete
            ),
            Command("list", "list contacts, oldest first", contacts_list_arguments, run_contacts_list),
            Command(
                "import",
                "create or update contacts from a CSV file",
                contacts_import_arguments,
                run_contacts_import,
            ),
        ),
    ),
    Group(
        "lists",
        "static lists of contacts",
        (
            Command("create", "create a list", lists_create_arguments, run_lists_create),
            Command("list", "list the lists", paging_arguments, run_lists_list),
            Command("delete", "delete a list (not its contacts)", list_argument, run_lists_delete),
            Command("add", "add contacts to a list", members_arguments, run_lists_add),
            Command("remove", "remove contacts from a list", members_arguments, run_lists_remove),
        ),
    ),
    Group(
        "segments",
        "saved contact filters, resolved at launch",
        (
            Command("create", "create a segment", segments_create_arguments, run_segments_create),
            Command("get", "show a segment", segment_argument, run_segments_get),
            Command("list", "list the segments", paging_arguments, run_segments_list),
            Command("delete", "delete a segment", segment_argument, run_segments_delete),
        ),
    ),
    Group(
        "suppressions",
        "addresses that must never be contacted",
        (
            Command("add", "suppress addresses", suppressions_add_arguments, run_suppressions_add),
            Command(
                "remove", "remove one suppression", suppressions_remove_arguments, run_suppressions_remove
            ),
            Command(
                "list", "list suppressions, newest first", suppressions_list_arguments, run_suppressions_list
            ),
            Command(
                "check",
                "say whether an address may be contacted (exit 3 when suppressed)",
                suppressions_check_arguments,
                run_suppressions_check,
            ),
        ),
    ),
)


COMMANDS: tuple[Command | Group, ...] = (
    Command("create", "create a campaign in DRAFT", create_arguments, run_create),
    Command("get", "show a campaign", name_argument, run_get),
    Command("list", "list campaigns, newest first", list_arguments, run_list),
    Command("update", "change a campaign's fields", update_arguments, run_update),
    Command("delete", "delete a DRAFT campaign, or any idle one with --force", delete_arguments, run_delete),
    Command(
        "schedule",
        "DRAFT -> SCHEDULED: start by itself at --at",
        lifecycle_arguments(attestation=True, schedule=True),
        run_schedule,
    ),
    Command("unschedule", "SCHEDULED -> DRAFT", lifecycle_arguments(), run_unschedule),
    Command("launch", "DRAFT or SCHEDULED -> sending now", lifecycle_arguments(attestation=True), run_launch),
    Command("pause", "QUEUED or RUNNING -> PAUSED", lifecycle_arguments(reason=True), run_pause),
    Command("resume", "PAUSED -> RUNNING", lifecycle_arguments(reason=True), run_resume),
    Command("stop", "QUEUED, RUNNING or PAUSED -> STOPPED", lifecycle_arguments(reason=True), run_stop),
    Command(
        "restart",
        "STOPPED -> RUNNING, where the channel type allows it",
        lifecycle_arguments(reason=True),
        run_restart,
    ),
    Command(
        "retry-failed",
        "COMPLETED -> RUNNING: send the FAILED messages again",
        lifecycle_arguments(),
        run_retry_failed,
    ),
    Command(
        "archive", "hide a campaign that is not sending", lifecycle_arguments(channel=False), run_archive
    ),
    Command(
        "unarchive", "show an archived campaign again", lifecycle_arguments(channel=False), run_unarchive
    ),
    Command("duplicate", "copy a campaign into a new DRAFT", duplicate_arguments, run_duplicate),
    Command("add-channel", "add a DRAFT channel to a campaign", add_channel_arguments, run_add_channel),
    Command(
        "test-send", "send a DRAFT channel's content to test addresses", test_send_arguments, run_test_send
    ),
    Command("preview", "show the message one address would get", preview_arguments, run_preview),
    Command("estimate", "count the recipients a launch would queue", estimate_arguments, run_estimate),
    Command("report", "show a campaign's counters", name_argument, run_report),
    Command("messages", "list a campaign's messages", messages_arguments, run_messages),
    Command("history", "list a campaign's transitions, oldest first", history_arguments, run_history),
    Command("watch", "show live progress until the campaign ends", name_argument, run_watch),
    Command("channels", "list the channel types the daemon's plugins provide", no_arguments, run_channels),
    *CONTACT_COMMANDS,
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
    subparsers: argparse._SubParsersAction[_Parser], commands: Sequence[Command | Group], dest: str
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


def build_parser(commands: Sequence[Command | Group] = COMMANDS) -> _Parser:
    """The parser for the whole command line."""
    parser = _Parser(prog=PROG, description="A command-line client of the campaignd daemon.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    global_arguments(parser, top=True)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_commands(subparsers, commands, "command")
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Entry point of `campaignctl`; returns the exit status."""
    environ = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)
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
