"""Contact operations, independent of gRPC: each one transaction, inputs already validated
for shape by the API; contact fields are normalised here."""

from __future__ import annotations

import dataclasses
import datetime as dt
import secrets
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from campaignd import errors
from campaignd.audience import contacts as fields_
from campaignd.audience import filters
from campaignd.audience.contacts import ContactFieldError
from campaignd.clock import Clock
from campaignd.errors import FieldViolation
from campaignd.store import audience as store
from campaignd.store import schema
from campaignd.store.audience import ContactRecord
from campaignd.store.db import Database

IMPORT_CHUNK = 1000
SUPPRESSION_REASONS = frozenset({"unsubscribed", "bounced", "complained", "opted_out", "manual"})


def new_id(prefix: str) -> str:
    """A generated resource id."""
    return prefix + secrets.token_hex(8)


@dataclasses.dataclass(frozen=True)
class Row:
    """One contact row as given: to create or update."""

    index: int
    contact_id: str
    email: str
    phone: str
    time_zone: str
    attributes: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Rejection:
    """A row that was not applied."""

    index: int
    field: str
    reason: str


@dataclasses.dataclass
class ImportResult:
    """What an import did."""

    created: int = 0
    updated: int = 0
    rejected: list[Rejection] = dataclasses.field(default_factory=list)


class ContactManager:
    """The operations of ContactService."""

    def __init__(
        self, database: Database, default_region: Callable[[], str], clock: Clock | None = None
    ) -> None:
        self.db = database
        self.default_region = default_region
        self.clock = clock or Clock()

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

    async def create(self, row: Row) -> ContactRecord:
        """A new contact; ALREADY_EXISTS when its id or email is taken."""
        normal = self._normal_or_invalid(row, "contact")
        _reachable(normal.email, normal.phone)
        contact_id = row.contact_id or new_id("c")

        def work(conn: Connection) -> ContactRecord:
            if store.get_contact(conn, contact_id) is not None:
                raise errors.already_exists(f"contacts/{contact_id}")
            self._email_free(conn, normal.email, None)
            now = self.clock.now()
            values = {
                **dataclasses.asdict(normal),
                "contact_id": contact_id,
                "create_time": now,
                "update_time": now,
            }
            return store.insert_contact(conn, values)

        try:
            return await self.db.write(work)
        except IntegrityError:
            raise errors.already_exists(f"contacts/{contact_id}") from None

    def _normal_or_invalid(self, row: Row, path: str) -> fields_.ContactFields:
        try:
            return self.normalise(row)
        except ContactFieldError as exc:
            raise errors.invalid_argument([FieldViolation(f"{path}.{exc.field}", exc.reason)]) from None

    def _email_free(self, conn: Connection, email: str | None, owner: int | None) -> None:
        if email is None:
            return
        holder = store.contact_by_email(conn, email)
        if holder is not None and holder.pk != owner:
            raise errors.ApiError(
                errors.Code.ALREADY_EXISTS,
                "EMAIL_IN_USE",
                f"{email} belongs to contacts/{holder.contact_id}",
                metadata={"contact": f"contacts/{holder.contact_id}"},
            )

    async def get(self, contact_id: str) -> ContactRecord:
        """The contact, or NOT_FOUND."""
        record = await self.db.read(store.get_contact, contact_id)
        if record is None:
            raise errors.not_found(f"contacts/{contact_id}")
        return record

    async def update(self, contact_id: str, row: Row, mask: frozenset[str]) -> ContactRecord:
        """Change the masked fields of a contact."""
        normal = self._normal_or_invalid(row, "contact")

        def work(conn: Connection) -> ContactRecord:
            record = store.get_contact(conn, contact_id)
            if record is None:
                raise errors.not_found(f"contacts/{contact_id}")
            values = {name: getattr(normal, name) for name in mask}
            _reachable(values.get("email", record.email), values.get("phone", record.phone))
            if "email" in mask:
                self._email_free(conn, normal.email, record.pk)
            values["update_time"] = self.clock.now()
            store.update_contact(conn, record.pk, values)
            return dataclasses.replace(record, **values)

        return await self.db.write(work)

    async def delete(self, contact_id: str) -> None:
        """Delete a contact and its memberships."""

        def work(conn: Connection) -> None:
            record = store.get_contact(conn, contact_id)
            if record is None:
                raise errors.not_found(f"contacts/{contact_id}")
            store.delete_contact(conn, record.pk)

        await self.db.write(work)

    async def list_contacts(
        self, where: filters.Filter | None, list_id: str, after: int, limit: int
    ) -> list[ContactRecord]:
        """A page of contacts."""

        def read(conn: Connection) -> list[ContactRecord]:
            if list_id and not store.list_exists(conn, list_id):
                raise errors.not_found(f"lists/{list_id}")
            clause = filters.compile(where, schema.contacts) if where is not None else None
            return store.list_contacts(conn, clause, list_id, after=after, limit=limit)

        return await self.db.read(read)

    # -- import ---------------------------------------------------------------------------------

    async def check_list(self, list_id: str) -> None:
        """NOT_FOUND unless the list exists."""
        if not await self.db.read(store.list_exists, list_id):
            raise errors.not_found(f"lists/{list_id}")

    async def import_rows(
        self, rows: Sequence[Row], match_on: str, list_id: str, result: ImportResult
    ) -> None:
        """Apply a chunk of rows in one transaction: bad rows are rejected whole, good ones applied whole."""
        good: list[tuple[Row, fields_.ContactFields]] = []
        for row in rows:
            try:
                good.append((row, self.normalise(row)))
            except ContactFieldError as exc:
                result.rejected.append(Rejection(row.index, exc.field, exc.reason))
        if good:
            created, updated, rejected = await self.db.write(self._apply_chunk, good, match_on, list_id)
            result.created += created
            result.updated += updated
            result.rejected.extend(rejected)

    def _apply_chunk(
        self, conn: Connection, good: list[tuple[Row, fields_.ContactFields]], match_on: str, list_id: str
    ) -> tuple[int, int, list[Rejection]]:
        now = self.clock.now()
        by_email = store.existing_contacts(conn, "email", (n.email for _, n in good if n.email))
        by_id = store.existing_contacts(conn, "contact_id", (r.contact_id for r, _ in good if r.contact_id))
        creates: dict[str, dict[str, Any]] = {}  # by contact id, in row order
        updates: dict[int, dict[str, Any]] = {}  # by row id
        emails_taken: dict[str, str] = {email: c.contact_id for email, c in by_email.items()}
        rejected: list[Rejection] = []
        created = updated = 0
        for row, normal in good:
            existing = (
                by_email.get(normal.email)
                if match_on == "email" and normal.email
                else by_id.get(row.contact_id)
            )
            if existing is None and match_on == "email" and normal.email and normal.email in emails_taken:
                # A contact this chunk creates has the same email: the later row updates it.
                target = creates[emails_taken[normal.email]]
                _merge(target, normal, now)
                updated += 1
                continue
            if existing is not None:
                if row.contact_id and row.contact_id != existing.contact_id:
                    rejected.append(
                        Rejection(
                            row.index, "contact_id", f"the email belongs to contacts/{existing.contact_id}"
                        )
                    )
                    continue
                if (
                    normal.email
                    and emails_taken.get(normal.email, existing.contact_id) != existing.contact_id
                ):
                    rejected.append(
                        Rejection(
                            row.index,
                            "email",
                            f"{normal.email} belongs to contacts/{emails_taken[normal.email]}",
                        )
                    )
                    continue
                values = updates.setdefault(existing.pk, _values(existing))
                _merge(values, normal, now)
                if normal.email:
                    emails_taken[normal.email] = existing.contact_id
                updated += 1
                continue
            contact_id = row.contact_id or new_id("c")
            if contact_id in by_id:
                rejected.append(
                    Rejection(row.index, "contact_id", f"contacts/{contact_id} exists with another email")
                )
                continue
            if contact_id in creates:
                rejected.append(
                    Rejection(row.index, "contact_id", f"contacts/{contact_id} appears twice in the import")
                )
                continue
            if normal.email and normal.email in emails_taken:
                rejected.append(
                    Rejection(
                        row.index, "email", f"{normal.email} belongs to contacts/{emails_taken[normal.email]}"
                    )
                )
                continue
            creates[contact_id] = {
                **dataclasses.asdict(normal),
                "contact_id": contact_id,
                "create_time": now,
                "update_time": now,
            }
            if normal.email:
                emails_taken[normal.email] = contact_id
            created += 1
        new_pks = store.insert_contacts(conn, list(creates.values()))
        store.update_contacts(conn, [{"pk": pk, **values} for pk, values in updates.items()])
        if list_id:
            store.add_new_members(conn, list_id, new_pks)
            store.add_members(conn, list_id, list(updates))
        return created, updated, rejected

    # -- lists ----------------------------------------------------------------------------------

    async def create_list(self, list_id: str, display_name: str) -> tuple[str, str, dt.datetime, int]:
        """A new, empty list."""
        now = self.clock.now()

        def work(conn: Connection) -> None:
            if store.list_exists(conn, list_id):
                raise errors.already_exists(f"lists/{list_id}")
            store.insert_list(conn, list_id, display_name, now)

        await self.db.write(work)
        return list_id, display_name, now, 0

    async def list_lists(self, after: str, limit: int) -> list[tuple[str, str, dt.datetime, int]]:
        """A page of lists with their member counts."""

        def read(conn: Connection) -> list[tuple[str, str, dt.datetime, int]]:
            return store.list_lists(conn, after=after, limit=limit)

        return await self.db.read(read)

    async def delete_list(self, list_id: str) -> None:
        """Delete a list (its contacts stay)."""

        def work(conn: Connection) -> None:
            if not store.delete_list(conn, list_id):
                raise errors.not_found(f"lists/{list_id}")

        await self.db.write(work)

    async def change_members(self, list_id: str, contact_ids: Sequence[str], *, add: bool) -> tuple[int, int]:
        """Add or remove members; returns (changed, unchanged). Unknown contacts are INVALID_ARGUMENT."""

        def work(conn: Connection) -> tuple[int, int]:
            if not store.list_exists(conn, list_id):
                raise errors.not_found(f"lists/{list_id}")
            found = store.existing_contacts(conn, "contact_id", contact_ids)
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
                store.add_members(conn, list_id, pks) if add else store.remove_members(conn, list_id, pks)
            )
            return changed, len(pks) - changed

        return await self.db.write(work)

    # -- segments -------------------------------------------------------------------------------

    async def create_segment(self, segment_id: str, display_name: str, text: str) -> sa.Row[Any]:
        """A new segment; its filter was parsed by the caller."""
        now = self.clock.now()

        def work(conn: Connection) -> sa.Row[Any]:
            if store.get_segment(conn, segment_id) is not None:
                raise errors.already_exists(f"segments/{segment_id}")
            store.insert_segment(conn, segment_id, display_name, text, now)
            row = store.get_segment(conn, segment_id)
            assert row is not None
            return row

        return await self.db.write(work)

    async def get_segment(self, segment_id: str) -> sa.Row[Any]:
        """The segment, or NOT_FOUND."""
        row = await self.db.read(store.get_segment, segment_id)
        if row is None:
            raise errors.not_found(f"segments/{segment_id}")
        return row

    async def list_segments(self, after: str, limit: int) -> list[sa.Row[Any]]:
        """A page of segments."""

        def read(conn: Connection) -> list[sa.Row[Any]]:
            return store.list_segments(conn, after=after, limit=limit)

        return await self.db.read(read)

    async def delete_segment(self, segment_id: str) -> None:
        """Delete a segment."""

        def work(conn: Connection) -> None:
            if not store.delete_segment(conn, segment_id):
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
            return store.add_suppressions(conn, list(unique.values()))

        added = await self.db.write(work)
        return added, len(given) - added

    async def remove_suppression(self, suppression_id: int) -> None:
        """Remove one suppression."""

        def work(conn: Connection) -> None:
            if not store.remove_suppression(conn, suppression_id):
                raise errors.not_found(f"suppressions/{suppression_id}")

        await self.db.write(work)

    async def list_suppressions(
        self, address: str, channel_type: str | None, reason: str, before: int | None, limit: int
    ) -> list[sa.Row[Any]]:
        """A page of suppressions, newest first."""

        def read(conn: Connection) -> list[sa.Row[Any]]:
            return store.list_suppressions(
                conn, address=address, channel_type=channel_type, reason=reason, before=before, limit=limit
            )

        return await self.db.read(read)

    async def check(self, address: str, channel_type: str) -> list[sa.Row[Any]]:
        """The suppressions that apply to `address` on `channel_type`."""
        return await self.db.read(store.suppressions_for, address, channel_type)


def _values(record: ContactRecord) -> dict[str, Any]:
    return {
        "email": record.email,
        "phone": record.phone,
        "time_zone": record.time_zone,
        "attributes": dict(record.attributes),
        "update_time": record.update_time,
    }


def _merge(values: dict[str, Any], normal: fields_.ContactFields, now: dt.datetime) -> None:
    # An import row updates the fields it has; its attributes are merged into the existing ones.
    for name in ("email", "phone", "time_zone"):
        if getattr(normal, name) is not None:
            values[name] = getattr(normal, name)
    values["attributes"] = {**values.get("attributes", {}), **normal.attributes}
    values["update_time"] = now


def _reachable(email: str | None, phone: str | None) -> None:
    if not (email or phone):
        raise errors.invalid_argument(
            [FieldViolation("contact.email", "a contact needs an email address or a phone number")]
        )
