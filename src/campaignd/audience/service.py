"""Contact operations, independent of gRPC: each one transaction, inputs already validated
for shape by the API; contact fields are normalised here."""

from __future__ import annotations

import dataclasses
import datetime as dt
import secrets
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from campaignd import errors
from campaignd.audience import contacts as fields_
from campaignd.audience import filters
from campaignd.audience.contacts import ContactFieldError
from campaignd.audience.importing import (
    Decode,
    ImportSession,
    NormalRow,
    Rejection,
    Row,
    WorkerPool,
)
from campaignd.clock import Clock
from campaignd.errors import FieldViolation
from campaignd.store import campaigns as requests_store
from campaignd.store import contacts as contact_store
from campaignd.store import lists as list_store
from campaignd.store import segments as segment_store
from campaignd.store import suppressions as suppression_store
from campaignd.store.contacts import ContactRecord
from campaignd.store.db import Database
from campaignd.store.lists import ListRow
from campaignd.store.segments import SegmentRow
from campaignd.store.suppressions import SuppressionRow

SUPPRESSION_REASONS = frozenset({"unsubscribed", "bounced", "complained", "opted_out", "manual"})
# The method under which CreateContact's answers are stored by request_id.
CREATE_CONTACT = "ContactService.CreateContact"
# Tries of an import chunk that collides with a concurrent write (PostgreSQL's READ COMMITTED
# lets another call take an email between the chunk's read and its insert).
CHUNK_TRIES = 3


def new_id(prefix: str) -> str:
    """A generated resource id."""
    return prefix + secrets.token_hex(8)


class ContactManager:
    """The operations of ContactService."""

    def __init__(
        self, database: Database, default_region: Callable[[], str], clock: Clock | None = None
    ) -> None:
        self.db = database
        self.default_region = default_region
        self.clock = clock or Clock()
        self.import_pool = WorkerPool()

    def close(self) -> None:
        """Stop the import workers."""
        self.import_pool.close()

    def normalise(self, row: Row) -> fields_.ContactFields:
        """The row's fields normalised; raises ContactFieldError."""
        return fields_.normalise(
            email=row.email,
            phone=row.phone,
            time_zone=row.time_zone,
            attributes=row.attributes,
            default_region=self.default_region(),
        )

    # -- single contacts ------------------------------------------------------------------------

    async def create(self, row: Row, request_id: str, encode: Callable[[ContactRecord], bytes]) -> bytes:
        """A new contact, encoded; ALREADY_EXISTS when its id or email is taken. With a
        `request_id`, the encoded answer is stored with the contact, and a repeat returns it."""
        normal = self._normal_or_invalid(row, "contact")
        _reachable(normal.email, normal.phone)
        contact_id = row.contact_id or new_id("c")

        def work(conn: Connection) -> bytes:
            if request_id:
                stored = requests_store.stored_response(conn, CREATE_CONTACT, request_id)
                if stored is not None:
                    return stored
            if contact_store.get_contact(conn, contact_id) is not None:
                raise errors.already_exists(f"contacts/{contact_id}")
            self._email_free(conn, normal.email, None)
            now = self.clock.now()
            values = {
                **dataclasses.asdict(normal),
                "contact_id": contact_id,
                "create_time": now,
                "update_time": now,
            }
            data = encode(contact_store.insert_contact(conn, values))
            if request_id:
                requests_store.store_response(conn, CREATE_CONTACT, request_id, data, now)
            return data

        try:
            return await self.db.write(work)
        except IntegrityError:
            # Two calls with one request_id raced; the loser returns the winner's answer.
            if request_id:
                stored = await self.db.read(requests_store.stored_response, CREATE_CONTACT, request_id)
                if stored is not None:
                    return stored
            raise errors.already_exists(f"contacts/{contact_id}") from None

    def _normal_or_invalid(self, row: Row, path: str) -> fields_.ContactFields:
        try:
            return self.normalise(row)
        except ContactFieldError as exc:
            raise errors.invalid_argument([FieldViolation(f"{path}.{exc.field}", exc.reason)]) from None

    def _email_free(self, conn: Connection, email: str | None, owner: int | None) -> None:
        if email is None:
            return
        holder = contact_store.contact_by_email(conn, email)
        if holder is not None and holder.pk != owner:
            raise errors.ApiError(
                errors.Code.ALREADY_EXISTS,
                "EMAIL_IN_USE",
                f"{email} belongs to contacts/{holder.contact_id}",
                metadata={"contact": f"contacts/{holder.contact_id}"},
            )

    async def get(self, contact_id: str) -> ContactRecord:
        """The contact, or NOT_FOUND."""
        record = await self.db.read(contact_store.get_contact, contact_id)
        if record is None:
            raise errors.not_found(f"contacts/{contact_id}")
        return record

    async def update(self, contact_id: str, row: Row, mask: frozenset[str]) -> ContactRecord:
        """Change the masked fields of a contact."""
        normal = self._normal_or_invalid(row, "contact")

        def work(conn: Connection) -> ContactRecord:
            record = contact_store.get_contact(conn, contact_id)
            if record is None:
                raise errors.not_found(f"contacts/{contact_id}")
            values = {name: getattr(normal, name) for name in mask}
            _reachable(values.get("email", record.email), values.get("phone", record.phone))
            if "email" in mask:
                self._email_free(conn, normal.email, record.pk)
            values["update_time"] = self.clock.now()
            contact_store.update_contact(conn, record.pk, values)
            return dataclasses.replace(record, **values)

        return await self.db.write(work)

    async def delete(self, contact_id: str) -> None:
        """Delete a contact and its memberships."""

        def work(conn: Connection) -> None:
            record = contact_store.get_contact(conn, contact_id)
            if record is None:
                raise errors.not_found(f"contacts/{contact_id}")
            contact_store.delete_contact(conn, record.pk)

        await self.db.write(work)

    async def list_contacts(
        self, where: filters.Filter | None, list_id: str, after: int, limit: int
    ) -> list[ContactRecord]:
        """A page of contacts."""

        def read(conn: Connection) -> list[ContactRecord]:
            if list_id and not list_store.list_exists(conn, list_id):
                raise errors.not_found(f"lists/{list_id}")
            return contact_store.list_contacts(conn, where, list_id, after=after, limit=limit)

        return await self.db.read(read)

    # -- import ---------------------------------------------------------------------------------

    async def check_list(self, list_id: str) -> None:
        """NOT_FOUND unless the list exists."""
        if not await self.db.read(list_store.list_exists, list_id):
            raise errors.not_found(f"lists/{list_id}")

    def start_import(self, decode: Decode, match_on: str, list_id: str) -> ImportSession:
        """A session that applies an ImportContacts stream chunk by chunk."""

        async def apply(rows: list[NormalRow]) -> tuple[int, int, list[Rejection]]:
            for attempt in range(CHUNK_TRIES):
                try:
                    return await self.db.write(self._apply_chunk, rows, match_on, list_id)
                except IntegrityError:
                    if attempt == CHUNK_TRIES - 1:
                        raise
            raise AssertionError("unreachable")

        return ImportSession(self.import_pool, decode, self.default_region(), apply)

    def _apply_chunk(
        self, conn: Connection, rows: list[NormalRow], match_on: str, list_id: str
    ) -> tuple[int, int, list[Rejection]]:
        """Apply rows in order, each against the contacts as the rows before it left them.

        The contacts the chunk needs are read once; the chunk then works on copies, and writes
        the final state of each contact it changed. Because every chunk reads what the chunks
        before it committed, the outcome does not depend on where the chunks begin and end.
        """
        now = self.clock.now()
        loaded = contact_store.existing_contacts(conn, "email", {r[2] for r in rows if r[2]})
        loaded.update(contact_store.existing_contacts(conn, "contact_id", {r[1] for r in rows if r[1]}))
        working: dict[str, _Working] = {}
        for record in loaded.values():
            working[record.contact_id] = _Working.of(record)
        owner = {w.email: w.contact_id for w in working.values() if w.email}
        originals = {w.contact_id: w.email for w in working.values()}
        fresh = iter(_new_contact_ids(len(rows)))
        created_ids: list[str] = []
        rejected: list[Rejection] = []
        created = updated = 0
        for index, row_id, email, phone, time_zone, attributes in rows:
            target: _Working | None
            if match_on == "email" and email:
                holder = owner.get(email)
                target = working[holder] if holder is not None else None
                if target is not None and row_id and row_id != target.contact_id:
                    reason = f"the email belongs to contacts/{target.contact_id}"
                    rejected.append(Rejection(index, "contact_id", reason))
                    continue
                if target is None and row_id in working:
                    has = "another email" if working[row_id].email else "no email"
                    rejected.append(Rejection(index, "contact_id", f"contacts/{row_id} exists with {has}"))
                    continue
            else:
                target = working.get(row_id) if row_id else None
                holder = owner.get(email) if email else None
                if holder is not None and (target is None or holder != target.contact_id):
                    rejected.append(Rejection(index, "email", f"{email} belongs to contacts/{holder}"))
                    continue
            if target is None:
                contact_id = row_id or next(fresh)
                target = working[contact_id] = _Working(
                    None, contact_id, None, None, None, {}, create_time=now, update_time=now
                )
                created_ids.append(contact_id)
                created += 1
            else:
                updated += 1
            if email and email != target.email:
                if target.email is not None and owner.get(target.email) == target.contact_id:
                    del owner[target.email]
                owner[email] = target.contact_id
            target.merge(email, phone, time_zone, attributes, now)
        changed = [w for w in working.values() if w.pk is not None and w.changed]
        # A contact can give up its email to a later row's contact in the same chunk: clear the
        # emails that change first, so that no intermediate state breaks their uniqueness.
        moved = [
            w.pk
            for w in changed
            if w.pk is not None and originals[w.contact_id] and w.email != originals[w.contact_id]
        ]
        if moved:
            contact_store.clear_emails(conn, moved)
        contact_store.update_contacts(conn, [w.changes() for w in changed])
        contact_store.insert_contacts(conn, [working[c].new_row() for c in created_ids], now)
        if list_id:
            list_store.add_created_to_list(conn, list_id, created_ids)
            list_store.add_members(conn, list_id, sorted(w.pk for w in changed if w.pk is not None))
        return created, updated, rejected

    # -- lists ----------------------------------------------------------------------------------

    async def create_list(self, list_id: str, display_name: str) -> ListRow:
        """A new, empty list."""
        now = self.clock.now()

        def work(conn: Connection) -> None:
            if list_store.list_exists(conn, list_id):
                raise errors.already_exists(f"lists/{list_id}")
            list_store.insert_list(conn, list_id, display_name, now)

        await self.db.write(work)
        return ListRow(list_id, display_name, now, 0)

    async def list_lists(self, after: str, limit: int) -> list[ListRow]:
        """A page of lists with their member counts."""

        def read(conn: Connection) -> list[ListRow]:
            return list_store.list_lists(conn, after=after, limit=limit)

        return await self.db.read(read)

    async def delete_list(self, list_id: str) -> None:
        """Delete a list (its contacts stay)."""

        def work(conn: Connection) -> None:
            if not list_store.delete_list(conn, list_id):
                raise errors.not_found(f"lists/{list_id}")

        await self.db.write(work)

    async def change_members(self, list_id: str, contact_ids: Sequence[str], *, add: bool) -> tuple[int, int]:
        """Add or remove members; returns (changed, unchanged). Unknown contacts are INVALID_ARGUMENT."""

        def work(conn: Connection) -> tuple[int, int]:
            if not list_store.list_exists(conn, list_id):
                raise errors.not_found(f"lists/{list_id}")
            found = contact_store.existing_contacts(conn, "contact_id", contact_ids)
            missing = [i for i, c in enumerate(contact_ids) if c not in found]
            if missing:
                raise errors.invalid_argument(
                    [
                        FieldViolation(f"contacts[{i}]", f"contacts/{contact_ids[i]} does not exist")
                        for i in missing[:100]
                    ]
                )
            pks = sorted({c.pk for c in found.values()})
            changed = (
                list_store.add_members(conn, list_id, pks)
                if add
                else list_store.remove_members(conn, list_id, pks)
            )
            return changed, len(pks) - changed

        return await self.db.write(work)

    # -- segments -------------------------------------------------------------------------------

    async def create_segment(self, segment_id: str, display_name: str, text: str) -> SegmentRow:
        """A new segment; its filter was parsed by the caller."""
        now = self.clock.now()

        def work(conn: Connection) -> SegmentRow:
            if segment_store.get_segment(conn, segment_id) is not None:
                raise errors.already_exists(f"segments/{segment_id}")
            segment_store.insert_segment(conn, segment_id, display_name, text, now)
            row = segment_store.get_segment(conn, segment_id)
            assert row is not None
            return row

        return await self.db.write(work)

    async def get_segment(self, segment_id: str) -> SegmentRow:
        """The segment, or NOT_FOUND."""
        row = await self.db.read(segment_store.get_segment, segment_id)
        if row is None:
            raise errors.not_found(f"segments/{segment_id}")
        return row

    async def list_segments(self, after: str, limit: int) -> list[SegmentRow]:
        """A page of segments."""

        def read(conn: Connection) -> list[SegmentRow]:
            return segment_store.list_segments(conn, after=after, limit=limit)

        return await self.db.read(read)

    async def delete_segment(self, segment_id: str) -> None:
        """Delete a segment."""

        def work(conn: Connection) -> None:
            if not segment_store.delete_segment(conn, segment_id):
                raise errors.not_found(f"segments/{segment_id}")

        await self.db.write(work)

    # -- suppressions ---------------------------------------------------------------------------

    def normalise_address(self, address: str) -> str:
        """An email address lower-cased, or a phone number in E.164; raises ContactFieldError."""
        if "@" in address:
            return fields_.normalise_email(address)
        return fields_.normalise_phone(address, self.default_region())

    async def add_suppressions(self, rows: Iterable[dict[str, Any]]) -> tuple[int, int]:
        """Add suppressions; returns (added, already suppressed)."""
        now = self.clock.now()
        given = list(rows)
        # The first of several rows for one (address, channel type) wins; the others count as already there.
        unique: dict[tuple[str, str], dict[str, Any]] = {}
        for row in given:
            unique.setdefault((row["address"], row["channel_type"]), {**row, "create_time": now})

        def work(conn: Connection) -> int:
            return suppression_store.add_suppressions(conn, list(unique.values()))

        added = await self.db.write(work)
        return added, len(given) - added

    async def remove_suppression(self, suppression_id: int) -> None:
        """Remove one suppression."""

        def work(conn: Connection) -> None:
            if not suppression_store.remove_suppression(conn, suppression_id):
                raise errors.not_found(f"suppressions/{suppression_id}")

        await self.db.write(work)

    async def list_suppressions(
        self, address: str, channel_type: str | None, reason: str, before: int | None, limit: int
    ) -> list[SuppressionRow]:
        """A page of suppressions, newest first."""

        def read(conn: Connection) -> list[SuppressionRow]:
            return suppression_store.list_suppressions(
                conn, address=address, channel_type=channel_type, reason=reason, before=before, limit=limit
            )

        return await self.db.read(read)

    async def check(self, address: str, channel_type: str) -> list[SuppressionRow]:
        """The suppressions that apply to `address` on `channel_type`."""
        return await self.db.read(suppression_store.suppressions_for, address, channel_type)


@dataclasses.dataclass
class _Working:
    """A contact as an import chunk leaves it; `pk` None for one the chunk creates."""

    pk: int | None
    contact_id: str
    email: str | None
    phone: str | None
    time_zone: str | None
    attributes: dict[str, Any]
    create_time: dt.datetime
    update_time: dt.datetime
    changed: bool = False

    @classmethod
    def of(cls, record: ContactRecord) -> _Working:
        return cls(
            record.pk,
            record.contact_id,
            record.email,
            record.phone,
            record.time_zone,
            record.attributes,
            record.create_time,
            record.update_time,
        )

    def merge(
        self,
        email: str | None,
        phone: str | None,
        time_zone: str | None,
        attributes: dict[str, Any],
        now: dt.datetime,
    ) -> None:
        # An import row sets the fields it has; its attributes are merged into the stored ones.
        if email is not None:
            self.email = email
        if phone is not None:
            self.phone = phone
        if time_zone is not None:
            self.time_zone = time_zone
        if attributes:
            self.attributes = {**self.attributes, **attributes}
        self.update_time = now
        self.changed = True

    def new_row(self) -> dict[str, Any]:
        """The values of a contact to insert (its timestamps are the chunk's)."""
        return {
            "contact_id": self.contact_id,
            "email": self.email,
            "phone": self.phone,
            "time_zone": self.time_zone,
            "attributes": self.attributes,
        }

    def changes(self) -> dict[str, Any]:
        """The values of a stored contact to update."""
        return {
            "pk": self.pk,
            "email": self.email,
            "phone": self.phone,
            "time_zone": self.time_zone,
            "attributes": self.attributes,
            "update_time": self.update_time,
        }


def _new_contact_ids(n: int) -> list[str]:
    """n generated contact ids, from one read of the system's random source."""
    data = secrets.token_bytes(8 * n).hex()
    return ["c" + data[i : i + 16] for i in range(0, len(data), 16)]


def _reachable(email: str | None, phone: str | None) -> None:
    if not (email or phone):
        raise errors.invalid_argument(
            [FieldViolation("contact.email", "a contact needs an email address or a phone number")]
        )
