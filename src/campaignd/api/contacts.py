"""ContactService: validates requests, calls ContactManager, answers with resources."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

from google.protobuf import any_pb2, struct_pb2
from grpc import aio
from grpc_status import rpc_status

from campaignd import errors, logs
from campaignd.api import convert
from campaignd.api.convert import Violations
from campaignd.api.errors import to_status, unary
from campaignd.audience import filters
from campaignd.audience.contacts import ContactFieldError
from campaignd.audience.importing import ImportResult, ImportSession, Rejection, Row
from campaignd.audience.service import SUPPRESSION_REASONS, ContactManager, new_id
from campaignd.config import Settings
from campaignd.errors import FieldViolation
from campaignd.store.contacts import ContactRecord
from campaignd.store.segments import SegmentRow
from campaignd.store.suppressions import SuppressionRow
from campaignd.v1 import contact_service_pb2 as cs
from campaignd.v1 import contact_service_pb2_grpc as cs_grpc

Context = aio.ServicerContext[Any, Any]
log = logs.get("campaignd.api")
CONTACT_FIELDS = frozenset({"email", "phone", "time_zone", "attributes"})
MAX_BATCH = 10_000
MAX_REJECTED_ROWS = 10_000
MAX_ROWS_PER_MESSAGE = 10_000


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


def contact_message(record: ContactRecord) -> cs.Contact:
    """The Contact resource for a stored contact."""
    return cs.Contact(
        name=f"contacts/{record.contact_id}",
        email=record.email or "",
        phone=record.phone or "",
        time_zone=record.time_zone or "",
        attributes=_struct(record.attributes),
        create_time=convert.timestamp(record.create_time),
        update_time=convert.timestamp(record.update_time),
    )


def _value(value: struct_pb2.Value) -> Any:
    # What json_format.MessageToDict gives, at a fraction of its cost; a NaN or an infinity is
    # kept, for the attribute checks to name (MessageToDict raises on them).
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        return value.number_value
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "list_value":
        return [_value(item) for item in value.list_value.values]
    if kind == "struct_value":
        return {key: _value(item) for key, item in value.struct_value.fields.items()}
    return None


def _attributes(message: Any) -> dict[str, Any]:
    if not message.HasField("attributes"):
        return {}
    return {key: _value(item) for key, item in message.attributes.fields.items()}


def _row(index: int, contact_id: str, message: Any) -> Row:
    return Row(index, contact_id, message.email, message.phone, message.time_zone, _attributes(message))


def decode_import_rows(data: bytes, first: int) -> list[Row | Rejection]:
    """The rows of one serialised ImportContactsRequest, numbered from `first`; those that
    cannot be imported whatever their fields' values are rejected here (runs in a worker process)."""
    request = cs.ImportContactsRequest.FromString(data)
    found: list[Row | Rejection] = []
    for index, row in enumerate(request.rows, first):
        if row.contact_id and not convert.ID.fullmatch(row.contact_id):
            found.append(Rejection(index, "contact_id", "must be 1-63 characters of [a-z0-9-]"))
        elif not (row.email or row.phone):
            found.append(Rejection(index, "email", "a contact needs an email address or a phone"))
        else:
            found.append(_row(index, row.contact_id, row))
    return found


class ContactService(cs_grpc.ContactServiceServicer):
    """The gRPC face of the audience."""

    def __init__(
        self, manager: ContactManager, settings: Callable[[], Settings], tokens: convert.PageTokens
    ) -> None:
        self.manager = manager
        self.tokens = tokens
        self.settings = settings

    def _page(self, v: Violations, request: convert.PagedRequest, selection: Any) -> convert.Page:
        return self.tokens.page(v, request, selection, 100, self.settings().limits.max_page_size)

    # -- contacts -------------------------------------------------------------------------------

    @unary
    async def CreateContact(self, request: cs.CreateContactRequest, context: Context) -> cs.Contact:
        v = Violations()
        convert.check_id(v, "contact_id", request.contact_id)
        v.request_id("request_id", request.request_id)
        v.raise_if_any()
        data = await self.manager.create(
            _row(0, request.contact_id, request.contact),
            request.request_id,
            lambda record: contact_message(record).SerializeToString(),
        )
        return cs.Contact.FromString(data)

    @unary
    async def GetContact(self, request: cs.GetContactRequest, context: Context) -> cs.Contact:
        return contact_message(await self.manager.get(convert.id_from_name(request.name, "contacts", "name")))

    @unary
    async def UpdateContact(self, request: cs.UpdateContactRequest, context: Context) -> cs.Contact:
        contact_id = convert.id_from_name(request.contact.name, "contacts", "contact.name")
        v = Violations()
        paths = list(request.update_mask.paths)
        if not paths:
            v.add("update_mask", f"required: name the fields to change, of {sorted(CONTACT_FIELDS)}")
        for index, path in enumerate(paths):
            if path not in CONTACT_FIELDS:
                v.add(
                    f"update_mask.paths[{index}]",
                    f"cannot update {path!r}; updatable: {sorted(CONTACT_FIELDS)}",
                )
        v.raise_if_any()
        # Only the masked fields are read from the request; the others may hold anything.
        contact = request.contact
        try:
            attributes = _attributes(contact) if "attributes" in paths else {}
        except ContactFieldError as exc:
            raise errors.invalid_argument([FieldViolation(f"contact.{exc.field}", exc.reason)]) from None
        row = Row(
            0,
            contact_id,
            contact.email if "email" in paths else "",
            contact.phone if "phone" in paths else "",
            contact.time_zone if "time_zone" in paths else "",
            attributes,
        )
        record = await self.manager.update(contact_id, row, frozenset(paths))
        return contact_message(record)

    @unary
    async def DeleteContact(
        self, request: cs.DeleteContactRequest, context: Context
    ) -> cs.DeleteContactResponse:
        contact_id = convert.id_from_name(request.name, "contacts", "name")
        await self.manager.delete(contact_id)
        return cs.DeleteContactResponse(name=f"contacts/{contact_id}")

    @unary
    async def ListContacts(
        self, request: cs.ListContactsRequest, context: Context
    ) -> cs.ListContactsResponse:
        v = Violations()
        parsed = None
        try:
            parsed = filters.parse(request.filter) if request.filter.strip() else None
        except filters.FilterError as exc:
            v.add("filter", str(exc))
        list_id = convert.id_from_name(request.list, "lists", "list") if request.list else ""
        page = self._page(v, request, (request.filter, list_id))
        v.raise_if_any()
        records = await self.manager.list_contacts(
            parsed, list_id, int(page.position["a"]) if page.position else 0, page.limit
        )
        shown, next_token = page.result(records, lambda last: {"a": last.pk})
        return cs.ListContactsResponse(
            contacts=[contact_message(r) for r in shown], next_page_token=next_token
        )

    @unary
    async def ImportContacts(
        self, requests: AsyncIterator[cs.ImportContactsRequest], context: Context
    ) -> cs.ImportContactsResponse:
        session: ImportSession | None = None
        try:
            async for request in requests:
                if session is None:
                    session = await self._start_import(request.options)
                elif request.HasField("options"):
                    raise errors.invalid_argument(
                        [FieldViolation("options", "only in the first message of the stream")]
                    )
                if len(request.rows) > MAX_ROWS_PER_MESSAGE:
                    raise errors.invalid_argument(
                        [FieldViolation("rows", f"at most {MAX_ROWS_PER_MESSAGE} per message")]
                    )
                await session.add(request.SerializeToString(), len(request.rows))
            return _import_response(await session.finish()) if session is not None else _import_response()
        except errors.ApiError as exc:
            if session is None:
                await _drain(requests)
                raise
            # A bad message ends the stream where it stands: the messages before it are applied,
            # and the error says so.
            try:
                await session.finish()
            except Exception:
                log.exception("import failed", applied_rows=session.applied_rows)
                await session.stop()
            await _drain(requests)
            await _abort_import(context, exc, session)
        except asyncio.CancelledError:
            if session is not None:
                await session.stop()
                log.warning(
                    "import cancelled",
                    applied_rows=session.applied_rows,
                    created=session.result.created,
                    updated=session.result.updated,
                )
            raise
        except Exception:
            await _drain(requests)
            if session is None:
                raise
            log.exception("import failed", applied_rows=session.applied_rows)
            await session.stop()
            await _abort_import(
                context, errors.ApiError(errors.Code.INTERNAL, "INTERNAL", "internal error"), session
            )
        raise AssertionError("unreachable: abort raises")

    async def _start_import(self, options: cs.ImportOptions) -> ImportSession:
        if options.match_on not in cs.ImportOptions.MatchOn.values():
            raise errors.invalid_argument([FieldViolation("options.match_on", "unknown value")])
        match_on = "contact_id" if options.match_on == cs.ImportOptions.CONTACT_ID else "email"
        list_id = ""
        if options.list:
            list_id = convert.id_from_name(options.list, "lists", "options.list")
            await self.manager.check_list(list_id)
        return self.manager.start_import(decode_import_rows, match_on, list_id)

    # -- lists ----------------------------------------------------------------------------------

    @unary
    async def CreateList(self, request: cs.CreateListRequest, context: Context) -> cs.ContactList:
        v = Violations()
        convert.check_id(v, "list_id", request.list_id)
        v.text("list.display_name", request.list.display_name, max_length=200, required=True)
        v.raise_if_any()
        list_id, name, created, count = await self.manager.create_list(
            request.list_id or new_id("l"), request.list.display_name
        )
        return _list_message(list_id, name, created, count)

    @unary
    async def ListLists(self, request: cs.ListListsRequest, context: Context) -> cs.ListListsResponse:
        v = Violations()
        page = self._page(v, request, "lists")
        v.raise_if_any()
        rows = await self.manager.list_lists(str(page.position["a"]) if page.position else "", page.limit)
        shown, next_token = page.result(rows, lambda last: {"a": last[0]})
        return cs.ListListsResponse(lists=[_list_message(*r) for r in shown], next_page_token=next_token)

    @unary
    async def DeleteList(self, request: cs.DeleteListRequest, context: Context) -> cs.DeleteListResponse:
        list_id = convert.id_from_name(request.name, "lists", "name")
        await self.manager.delete_list(list_id)
        return cs.DeleteListResponse(name=f"lists/{list_id}")

    def _members(self, list_name: str, names: Any) -> tuple[str, list[str]]:
        list_id = convert.id_from_name(list_name, "lists", "list")
        v = Violations()
        if not names:
            v.add("contacts", "required")
        if len(names) > MAX_BATCH:
            v.add("contacts", f"at most {MAX_BATCH} per call")
        ids = []
        for index, name in enumerate(names[:MAX_BATCH]):
            contact_id = name.removeprefix("contacts/") if name.startswith("contacts/") else ""
            if not convert.ID.fullmatch(contact_id):
                v.add(f"contacts[{index}]", "must be contacts/{id}")
            ids.append(contact_id)
        v.raise_if_any()
        return list_id, ids

    @unary
    async def AddListMembers(
        self, request: cs.AddListMembersRequest, context: Context
    ) -> cs.AddListMembersResponse:
        list_id, ids = self._members(request.list, request.contacts)
        added, already = await self.manager.change_members(list_id, ids, add=True)
        return cs.AddListMembersResponse(added=added, already_members=already)

    @unary
    async def RemoveListMembers(
        self, request: cs.RemoveListMembersRequest, context: Context
    ) -> cs.RemoveListMembersResponse:
        list_id, ids = self._members(request.list, request.contacts)
        removed, _ = await self.manager.change_members(list_id, ids, add=False)
        return cs.RemoveListMembersResponse(removed=removed)

    # -- segments -------------------------------------------------------------------------------

    @unary
    async def CreateSegment(self, request: cs.CreateSegmentRequest, context: Context) -> cs.Segment:
        v = Violations()
        convert.check_id(v, "segment_id", request.segment_id)
        v.text("segment.display_name", request.segment.display_name, max_length=200, required=True)
        if not request.segment.filter.strip():
            v.add("segment.filter", "required")
        else:
            try:
                filters.parse(request.segment.filter)
            except filters.FilterError as exc:
                v.add("segment.filter", str(exc))
        v.raise_if_any()
        row = await self.manager.create_segment(
            request.segment_id or new_id("s"), request.segment.display_name, request.segment.filter
        )
        return _segment_message(row)

    @unary
    async def GetSegment(self, request: cs.GetSegmentRequest, context: Context) -> cs.Segment:
        return _segment_message(
            await self.manager.get_segment(convert.id_from_name(request.name, "segments", "name"))
        )

    @unary
    async def ListSegments(
        self, request: cs.ListSegmentsRequest, context: Context
    ) -> cs.ListSegmentsResponse:
        v = Violations()
        page = self._page(v, request, "segments")
        v.raise_if_any()
        rows = await self.manager.list_segments(str(page.position["a"]) if page.position else "", page.limit)
        shown, next_token = page.result(rows, lambda last: {"a": last.id})
        return cs.ListSegmentsResponse(
            segments=[_segment_message(r) for r in shown], next_page_token=next_token
        )

    @unary
    async def DeleteSegment(
        self, request: cs.DeleteSegmentRequest, context: Context
    ) -> cs.DeleteSegmentResponse:
        segment_id = convert.id_from_name(request.name, "segments", "name")
        await self.manager.delete_segment(segment_id)
        return cs.DeleteSegmentResponse(name=f"segments/{segment_id}")

    # -- suppressions ---------------------------------------------------------------------------

    def _address(self, v: Violations, path: str, address: str) -> str:
        if not address:
            v.add(path, "required")
            return ""
        try:
            return self.manager.normalise_address(address)
        except ContactFieldError as exc:
            v.add(path, exc.reason)
            return ""

    @unary
    async def AddSuppressions(
        self, request: cs.AddSuppressionsRequest, context: Context
    ) -> cs.AddSuppressionsResponse:
        v = Violations()
        if not request.suppressions:
            v.add("suppressions", "required")
        if len(request.suppressions) > MAX_BATCH:
            v.add("suppressions", f"at most {MAX_BATCH} per call")
        rows = []
        for index, item in enumerate(request.suppressions[:MAX_BATCH]):
            path = f"suppressions[{index}]"
            address = self._address(v, f"{path}.address", item.address)
            v.text(f"{path}.channel_type", item.channel_type, max_length=63)
            v.text(f"{path}.source", item.source, max_length=200)
            if (
                item.reason not in cs.Suppression.Reason.values()
                or item.reason == cs.Suppression.REASON_UNSPECIFIED
            ):
                v.add(f"{path}.reason", f"one of {sorted(SUPPRESSION_REASONS)}")
                continue
            rows.append(
                {
                    "address": address,
                    "channel_type": item.channel_type,
                    "reason": cs.Suppression.Reason.Name(item.reason).lower(),
                    "source": item.source or "api",
                }
            )
        v.raise_if_any()
        added, already = await self.manager.add_suppressions(rows)
        return cs.AddSuppressionsResponse(added=added, already_suppressed=already)

    @unary
    async def RemoveSuppression(
        self, request: cs.RemoveSuppressionRequest, context: Context
    ) -> cs.RemoveSuppressionResponse:
        suppression_id = request.name.removeprefix("suppressions/")
        # ASCII digits only: str.isdigit() takes "²", which int() refuses.
        if not request.name.startswith("suppressions/") or not re.fullmatch(r"[0-9]{1,18}", suppression_id):
            raise errors.invalid_argument([FieldViolation("name", "must be suppressions/{id}")])
        await self.manager.remove_suppression(int(suppression_id))
        return cs.RemoveSuppressionResponse(name=request.name)

    @unary
    async def ListSuppressions(
        self, request: cs.ListSuppressionsRequest, context: Context
    ) -> cs.ListSuppressionsResponse:
        v = Violations()
        address = self._address(v, "address", request.address) if request.address else ""
        v.text("channel_type", request.channel_type, max_length=63)
        reason = ""
        if request.reason not in cs.Suppression.Reason.values():
            v.add("reason", f"unknown reason; one of {sorted(SUPPRESSION_REASONS)}")
        elif request.reason:
            reason = cs.Suppression.Reason.Name(request.reason).lower()
        selection = (address, request.channel_type, reason)
        page = self._page(v, request, selection)
        v.raise_if_any()
        rows = await self.manager.list_suppressions(
            address,
            request.channel_type or None,
            reason,
            int(page.position["b"]) if page.position else None,
            page.limit,
        )
        shown, next_token = page.result(rows, lambda last: {"b": last.id})
        return cs.ListSuppressionsResponse(
            suppressions=[_suppression_message(r) for r in shown], next_page_token=next_token
        )

    @unary
    async def CheckSuppression(
        self, request: cs.CheckSuppressionRequest, context: Context
    ) -> cs.CheckSuppressionResponse:
        v = Violations()
        address = self._address(v, "address", request.address)
        v.text("channel_type", request.channel_type, max_length=63, required=True)
        v.raise_if_any()
        rows = await self.manager.check(address, request.channel_type)
        return cs.CheckSuppressionResponse(
            suppressed=bool(rows), suppressions=[_suppression_message(r) for r in rows]
        )


def _import_response(result: ImportResult | None = None) -> cs.ImportContactsResponse:
    result = result or ImportResult()
    rejected = sorted(result.rejected, key=lambda r: r.index)
    return cs.ImportContactsResponse(
        created=result.created,
        updated=result.updated,
        rejected=len(rejected),
        rejected_rows=[
            cs.RejectedRow(index=r.index, field=r.field, reason=r.reason)
            for r in rejected[:MAX_REJECTED_ROWS]
        ],
    )


async def _drain(requests: AsyncIterator[Any]) -> None:
    """Read and drop what is left of a refused stream, so that its status goes once the caller
    has sent it all: an asyncio client (an API front process among them) still writing when the
    call ends gets INTERNAL from its gRPC library instead of the refusal."""
    with contextlib.suppress(Exception):
        async for _ in requests:
            pass


async def _abort_import(context: Context, error: errors.ApiError, session: ImportSession) -> None:
    """End a failed import with `error`, saying how far it got: ErrorInfo's `applied_rows`, and
    the ImportContactsResponse of the rows applied, as a second detail."""
    metadata = {**error.metadata, "applied_rows": str(session.applied_rows)}
    status = to_status(dataclasses.replace(error, metadata=metadata))
    report = any_pb2.Any()
    report.Pack(_import_response(session.result))
    status.details.append(report)
    # grpc's typing lacks abort_with_status on the aio context, which has it.
    aio_context: Any = context
    await aio_context.abort_with_status(rpc_status.to_status(status))


def _list_message(list_id: str, display_name: str, created: Any, members: int) -> cs.ContactList:
    return cs.ContactList(
        name=f"lists/{list_id}",
        display_name=display_name,
        member_count=members,
        create_time=convert.timestamp(created),
    )


def _segment_message(row: SegmentRow) -> cs.Segment:
    return cs.Segment(
        name=f"segments/{row.id}",
        display_name=row.display_name,
        filter=row.filter,
        create_time=convert.timestamp(row.create_time),
    )


def _suppression_message(row: SuppressionRow) -> cs.Suppression:
    return cs.Suppression(
        name=f"suppressions/{row.id}",
        address=row.address,
        channel_type=row.channel_type,
        reason=cs.Suppression.Reason.Value(row.reason.upper()),
        source=row.source,
        create_time=convert.timestamp(row.create_time),
    )
