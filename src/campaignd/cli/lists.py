"""`lists` commands: static lists of contacts."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import grpc

from campaignd.cli.arguments import (
    Command,
    Group,
    batched,
    contact_name,
    list_name,
    pages,
    paging_arguments,
    resource_id,
)
from campaignd.cli.connection import EXIT_OK, PROG, Client, UsageError, read_text
from campaignd.cli.render import print_json, render_list, render_lists, show, show_deleted, show_page
from campaignd.v1 import contact_service_pb2 as capi

# --- lists


def lists_create_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `lists create`."""
    parser.add_argument(
        "id", nargs="?", default="", type=resource_id, metavar="ID", help="generated when omitted"
    )
    parser.add_argument("--display-name", default="", help="human-readable name (default: the id)")


def run_lists_create(client: Client, args: argparse.Namespace) -> int:
    """lists create [ID] [--display-name N]."""
    display_name = args.display_name or args.id
    if not display_name:
        raise UsageError("lists create needs an ID or --display-name")
    request = capi.CreateListRequest(list=capi.ContactList(display_name=display_name), list_id=args.id)
    return show(client, client.call(client.contacts.CreateList, request), render_list)


def run_lists_list(client: Client, args: argparse.Namespace) -> int:
    """lists list."""

    def fetch(token: str) -> tuple[Sequence[capi.ContactList], str]:
        reply = client.call(
            client.contacts.ListLists, capi.ListListsRequest(page_size=args.page_size, page_token=token)
        )
        return reply.lists, reply.next_page_token

    lists, token = pages(fetch, args.page_token, args.all)
    reply = capi.ListListsResponse(lists=lists, next_page_token=token)
    return show_page(client, "lists", reply, lists, token, render_lists(lists))


def list_argument(parser: argparse.ArgumentParser) -> None:
    """The LIST positional."""
    parser.add_argument("name", metavar="LIST", type=list_name, help="ID or lists/ID")


def run_lists_delete(client: Client, args: argparse.Namespace) -> int:
    """lists delete LIST."""
    reply = client.call(client.contacts.DeleteList, capi.DeleteListRequest(name=args.name))
    return show_deleted(client, reply, args.name)


MEMBERS_PER_CALL = 10_000


def members_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `lists add` and `lists remove`."""
    list_argument(parser)
    parser.add_argument(
        "contacts",
        nargs="+",
        metavar="CONTACT",
        help="ID or contacts/ID; '-' reads them from standard input, one per line",
    )


def member_names(texts: Sequence[str]) -> list[str]:
    """The CONTACT arguments, with `-` replaced by the ids on standard input; all checked first."""
    names: list[str] = []
    for text in texts:
        for word in read_text("-", "standard input").split() if text == "-" else [text]:
            try:
                names.append(contact_name(word))
            except argparse.ArgumentTypeError as exc:
                raise UsageError(str(exc)) from None
    if not names:
        raise UsageError("no contacts given")
    return names


def run_lists_add(client: Client, args: argparse.Namespace) -> int:
    """lists add LIST CONTACT... | -: in calls of at most 10,000 contacts."""
    total = capi.AddListMembersResponse()
    try:
        for batch in batched(member_names(args.contacts), MEMBERS_PER_CALL):
            reply = client.call(
                client.contacts.AddListMembers, capi.AddListMembersRequest(list=args.name, contacts=batch)
            )
            total.added += reply.added
            total.already_members += reply.already_members
    except grpc.RpcError:
        if total.added or total.already_members:
            print(f"{PROG}: {total.added} contacts were added before the error", file=sys.stderr)
        raise
    if client.json:
        print_json(total)
    else:
        print(f"added {total.added}, already members {total.already_members}")
    return EXIT_OK


def run_lists_remove(client: Client, args: argparse.Namespace) -> int:
    """lists remove LIST CONTACT... | -: in calls of at most 10,000 contacts."""
    total = capi.RemoveListMembersResponse()
    try:
        for batch in batched(member_names(args.contacts), MEMBERS_PER_CALL):
            reply = client.call(
                client.contacts.RemoveListMembers,
                capi.RemoveListMembersRequest(list=args.name, contacts=batch),
            )
            total.removed += reply.removed
    except grpc.RpcError:
        if total.removed:
            print(f"{PROG}: {total.removed} contacts were removed before the error", file=sys.stderr)
        raise
    if client.json:
        print_json(total)
    else:
        print(f"removed {total.removed}")
    return EXIT_OK


GROUP = Group(
    "lists",
    "static lists of contacts",
    (
        Command("create", "create a list", lists_create_arguments, run_lists_create),
        Command("list", "list the lists", paging_arguments, run_lists_list),
        Command("delete", "delete a list (not its contacts)", list_argument, run_lists_delete),
        Command("add", "add contacts to a list", members_arguments, run_lists_add),
        Command("remove", "remove contacts from a list", members_arguments, run_lists_remove),
    ),
)
