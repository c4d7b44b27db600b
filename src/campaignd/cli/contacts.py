"""`contacts` commands: create, get, update, delete, list (import is in csv_import)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from google.protobuf import json_format

from campaignd.cli.arguments import (
    Command,
    Group,
    contact_name,
    content_entry,
    list_name,
    pages,
    paging_arguments,
    resource_id,
    write_arguments,
)
from campaignd.cli.connection import Client, UsageError
from campaignd.cli.csv_import import contacts_import_arguments, run_contacts_import
from campaignd.cli.render import render_contact, render_contacts, show, show_deleted, show_page
from campaignd.v1 import contact_service_pb2 as capi


def contact_field_arguments(parser: argparse.ArgumentParser, *, update: bool) -> None:
    """--email, --phone, --time-zone and --attr."""
    clear = "; '' clears it" if update else ""
    parser.add_argument("--email", default=None, help=f"email address{clear}")
    parser.add_argument("--phone", default=None, help=f"phone number, E.164 or national{clear}")
    parser.add_argument("--time-zone", default=None, metavar="ZONE", help=f"IANA time zone{clear}")
    parser.add_argument(
        "--attr",
        action="append",
        default=[],
        metavar="K=TEXT|K:=JSON",
        help="an attribute (repeatable)" + ("; other attributes are kept" if update else ""),
    )


def attributes_from(texts: Sequence[str]) -> dict[str, Any]:
    """The --attr options as a dict."""
    return dict(content_entry(text, "--attr") for text in texts)


def contacts_create_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `contacts create`."""
    parser.add_argument("--id", default="", type=resource_id, help="the contact id; generated when omitted")
    contact_field_arguments(parser, update=False)
    write_arguments(parser, etag=False)


def run_contacts_create(client: Client, args: argparse.Namespace) -> int:
    """contacts create [--id ID] [--email E] [--phone P] [--time-zone Z] [--attr K=V ...]."""
    contact = capi.Contact(email=args.email or "", phone=args.phone or "", time_zone=args.time_zone or "")
    contact.attributes.update(attributes_from(args.attr))
    request = capi.CreateContactRequest(contact=contact, contact_id=args.id, request_id=args.request_id)
    return show(client, client.call(client.contacts.CreateContact, request), render_contact)


def contact_argument(parser: argparse.ArgumentParser) -> None:
    """The CONTACT positional."""
    parser.add_argument("name", metavar="CONTACT", type=contact_name, help="ID or contacts/ID")


def run_contacts_get(client: Client, args: argparse.Namespace) -> int:
    """contacts get CONTACT."""
    contact = client.call(client.contacts.GetContact, capi.GetContactRequest(name=args.name))
    return show(client, contact, render_contact)


def contacts_update_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `contacts update`."""
    contact_argument(parser)
    contact_field_arguments(parser, update=True)
    parser.add_argument(
        "--remove-attr", action="append", default=[], metavar="K", help="remove an attribute (repeatable)"
    )


def run_contacts_update(client: Client, args: argparse.Namespace) -> int:
    """contacts update CONTACT [field flags]: the update mask names exactly the fields given."""
    contact = capi.Contact(name=args.name)
    paths: list[str] = []
    for flag in ("email", "phone", "time_zone"):
        if getattr(args, flag) is not None:
            setattr(contact, flag, getattr(args, flag))
            paths.append(flag)
    changes = attributes_from(args.attr)
    if changes or args.remove_attr:
        # The API replaces the attributes as a whole; the others are kept by sending them back.
        current = client.call(client.contacts.GetContact, capi.GetContactRequest(name=args.name))
        attributes = json_format.MessageToDict(current.attributes)
        attributes.update(changes)
        for key in args.remove_attr:
            attributes.pop(key, None)
        contact.attributes.update(attributes)
        paths.append("attributes")
    if not paths:
        raise UsageError("nothing to update: give --email, --phone, --time-zone, --attr or --remove-attr")
    request = capi.UpdateContactRequest(contact=contact)
    request.update_mask.paths.extend(paths)
    return show(client, client.call(client.contacts.UpdateContact, request), render_contact)


def run_contacts_delete(client: Client, args: argparse.Namespace) -> int:
    """contacts delete CONTACT."""
    reply = client.call(client.contacts.DeleteContact, capi.DeleteContactRequest(name=args.name))
    return show_deleted(client, reply, args.name)


def contacts_list_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `contacts list`."""
    parser.add_argument("--filter", default="", metavar="EXPR", help="a segment filter (docs/segments.md)")
    parser.add_argument("--list", default=None, type=list_name, metavar="LIST", help="only members of LIST")
    paging_arguments(parser)


def run_contacts_list(client: Client, args: argparse.Namespace) -> int:
    """contacts list [--filter EXPR] [--list LIST]."""

    def fetch(token: str) -> tuple[Sequence[capi.Contact], str]:
        reply = client.call(
            client.contacts.ListContacts,
            capi.ListContactsRequest(
                filter=args.filter, list=args.list or "", page_size=args.page_size, page_token=token
            ),
        )
        return reply.contacts, reply.next_page_token

    contacts, token = pages(fetch, args.page_token, args.all)
    reply = capi.ListContactsResponse(contacts=contacts, next_page_token=token)
    return show_page(client, "contacts", reply, contacts, token, render_contacts(contacts))


GROUP = Group(
    "contacts",
    "contacts: create, get, update, delete, list, import",
    (
        Command("create", "create a contact", contacts_create_arguments, run_contacts_create),
        Command("get", "show a contact", contact_argument, run_contacts_get),
        Command("update", "change a contact's fields", contacts_update_arguments, run_contacts_update),
        Command("delete", "delete a contact and its list memberships", contact_argument, run_contacts_delete),
        Command("list", "list contacts, oldest first", contacts_list_arguments, run_contacts_list),
        Command(
            "import",
            "create or update contacts from a CSV file",
            contacts_import_arguments,
            run_contacts_import,
        ),
    ),
)
