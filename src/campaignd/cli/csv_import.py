"""`contacts import`: a CSV file streamed to ImportContacts, with local checks and a rejected-rows file."""

from __future__ import annotations

import argparse
import codecs
import csv
import json
import pathlib
import re
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from campaignd.cli.arguments import list_name
from campaignd.cli.connection import EXIT_FAILURE, EXIT_OK, PROG, Client, UsageError
from campaignd.cli.render import key_values
from campaignd.v1 import contact_service_pb2 as capi

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

MAX_BATCH_SIZE = 10_000  # rows per ImportContacts message the daemon accepts


def batch_size(text: str) -> int:
    """--batch-size: 1 to MAX_BATCH_SIZE rows."""
    if not re.fullmatch(r"[0-9]+", text) or not 1 <= int(text) <= MAX_BATCH_SIZE:
        raise argparse.ArgumentTypeError(f"invalid batch size {text!r}: expected 1-{MAX_BATCH_SIZE}")
    return int(text)


# --- contacts import


CSV_LINE_LIMIT = 1 << 20  # bytes in one line of a CSV file, and characters in one field
CSV_MESSAGE_BYTES = 2 << 20  # rows per stream message are also capped by size (gRPC allows 4 MiB)
CONTACT_FIELDS = ("contact_id", "email", "phone", "time_zone")
ATTRIBUTE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
MATCH_ON = {"email": capi.ImportOptions.EMAIL, "contact_id": capi.ImportOptions.CONTACT_ID}
REJECTED_COLUMNS = ("error_field", "error_reason")
LINE_TOO_LONG = "line too long"
EXTRA_FIELDS = "extra fields"


def column_mapping(text: str) -> tuple[str, str]:
    """`--map csvcol=field`: field is contact_id, email, phone, time_zone or attributes.NAME."""
    column, sep, target = text.rpartition("=")
    column, target = column.strip(), target.strip()
    if not sep or not column:
        raise argparse.ArgumentTypeError(f"invalid --map {text!r}: expected CSVCOLUMN=FIELD")
    attribute = target.removeprefix("attributes.")
    if target not in CONTACT_FIELDS and not (
        target.startswith("attributes.") and ATTRIBUTE_NAME.fullmatch(attribute)
    ):
        raise argparse.ArgumentTypeError(
            f"invalid --map {text!r}: the field is one of {', '.join(CONTACT_FIELDS)} or attributes.NAME "
            "(NAME: 1-63 characters of A-Z, a-z, 0-9 and _ not starting with a digit)"
        )
    return column, target


class LineTooLongError(Exception):
    """A physical line of the CSV file is longer than CSV_LINE_LIMIT bytes; it was skipped."""


class CsvLines:
    """The text lines of a CSV file, read in bytes and decoded line by line, so that a line longer
    than CSV_LINE_LIMIT is skipped (raising LineTooLongError once) without being held in memory.

    An iterator class rather than a generator: csv.reader goes on reading after the exception."""

    def __init__(self, raw: IO[bytes], encoding: str) -> None:
        self.raw = raw
        self.decoder = codecs.getincrementaldecoder(encoding)()
        self.line = 0  # physical lines read
        self.bytes_read = 0

    def __iter__(self) -> CsvLines:
        return self

    def __next__(self) -> str:
        chunk = self.raw.readline(CSV_LINE_LIMIT + 1)
        if not chunk:
            raise StopIteration
        self.line += 1
        self.bytes_read += len(chunk)
        if len(chunk) > CSV_LINE_LIMIT and not chunk.endswith(b"\n"):
            while chunk and not chunk.endswith(b"\n"):  # skip the rest of the line
                chunk = self.raw.readline(CSV_LINE_LIMIT)
                self.bytes_read += len(chunk)
            raise LineTooLongError
        return self.decoder.decode(chunk)


@dataclass(frozen=True)
class CsvRecord:
    """One record of a CSV file: its fields, or why it could not be read."""

    line: int  # the physical line it starts on, from 1
    fields: list[str] | None
    error: str = ""


def csv_records(raw: IO[bytes], encoding: str, lines: CsvLines | None = None) -> Iterator[CsvRecord]:
    """The non-blank records of a CSV file, each a row of fields or a record with an error."""
    lines = lines or CsvLines(raw, encoding)
    reader = csv.reader(lines)
    while True:
        start = lines.line + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except LineTooLongError:
            yield CsvRecord(start, None, LINE_TOO_LONG)
            continue
        except csv.Error as exc:
            # With field_size_limit set, a quoted field running over many lines ends up here too.
            too_long = "field limit" in str(exc)
            yield CsvRecord(start, None, LINE_TOO_LONG if too_long else f"not valid CSV: {exc}")
            continue
        if fields and any(fields):
            yield CsvRecord(start, fields)


def check_encoding(path: pathlib.Path, encoding: str) -> bool:
    """Refuse a file that is not valid in `encoding`, naming the line; False when it is empty
    (nothing but white space)."""
    try:
        codec = codecs.lookup(encoding)
    except LookupError:
        raise UsageError(f"unknown --encoding {encoding!r}") from None
    if "\n,a".encode(codec.name, errors="replace") != b"\n,a":
        raise UsageError(
            f"--encoding {encoding}: only encodings in which ASCII is one byte per character are "
            "supported (convert the file, e.g. with iconv -t utf-8)"
        )
    decoder = codec.incrementaldecoder()
    line, content = 1, False
    try:
        with path.open("rb") as raw:
            while chunk := raw.read(1 << 16):
                for piece in chunk.splitlines(keepends=True):
                    try:
                        text = decoder.decode(piece)
                    except UnicodeDecodeError as exc:
                        byte = exc.object[exc.start : exc.start + 1].hex()
                        raise UsageError(
                            f"{path}: line {line} is not valid {encoding} (byte 0x{byte}: {exc.reason}); "
                            "pass the file's --encoding, e.g. --encoding latin-1"
                        ) from None
                    content = content or bool(text.replace("\ufeff", "").strip())
                    line += piece.endswith(b"\n")
            try:
                decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                raise UsageError(
                    f"{path}: line {line} is not valid {encoding} (cut off at the end)"
                ) from None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    return content


@dataclass(frozen=True)
class ImportPlan:
    """What `contacts import` does with each column of the file."""

    path: pathlib.Path
    encoding: str
    header: list[str]
    targets: list[str | None]  # per column: a ContactRow field, attributes.NAME, or None (ignored)

    def row(self, fields: Sequence[str]) -> capi.ContactRow | str:
        """A ContactRow from a record's fields, or why the record is rejected locally."""
        if len(fields) > len(self.header):
            return EXTRA_FIELDS
        row = capi.ContactRow()
        attributes: dict[str, Any] = {}
        for target, value in zip(self.targets, fields, strict=False):
            if target is None or value == "":
                continue  # an empty cell sets nothing
            if target.startswith("attributes."):
                attributes[target.removeprefix("attributes.")] = value
            else:
                setattr(row, target, value.strip())
        if attributes:
            row.attributes.update(attributes)
        return row

    def original(self, record: CsvRecord) -> list[str]:
        """The record's cells as in the file, one per header column (empty for an unreadable one)."""
        fields = list(record.fields or [])[: len(self.header)]
        return fields + [""] * (len(self.header) - len(fields))


def plan_import(args: argparse.Namespace) -> ImportPlan:
    """Every check that needs no daemon: the encoding, the header and the mapping."""
    path = pathlib.Path(args.file)
    if not path.is_file():
        raise UsageError(f"cannot read {path}: no such file" if not path.exists() else f"{path}: not a file")
    if not check_encoding(path, args.encoding):
        raise UsageError(f"{path}: empty file")
    with path.open("rb") as raw:
        records = csv_records(raw, args.encoding)
        head = next(records, None)
        if head is None:  # only empty cells, e.g. lines of commas
            raise UsageError(f"{path}: empty file")
        if head.fields is None:
            raise UsageError(f"{path}: line {head.line}: cannot read the header: {head.error}")
        if next(records, None) is None:
            raise UsageError(f"{path}: no rows after the header")
    header = [name.strip().lstrip("\ufeff") for name in head.fields]
    seen: dict[str, int] = {}
    for number, name in enumerate(header, 1):
        if name in seen:
            raise UsageError(f"{path}: columns {seen[name]} and {number} have the same header {name!r}")
        seen[name] = number
    targets: list[str | None] = [None] * len(header)
    mapped: dict[str, str] = {}  # target -> column
    for column, target in args.map:
        if column not in seen:
            raise UsageError(f"--map {column}={target}: {path} has no column {column!r}")
        if targets[seen[column] - 1] is not None:
            raise UsageError(f"--map: column {column!r} is mapped twice")
        if target in mapped:
            raise UsageError(f"--map: columns {mapped[target]!r} and {column!r} both map to {target}")
        targets[seen[column] - 1] = target
        mapped[target] = column
    for index, name in enumerate(header):
        if targets[index] is not None:
            continue
        field_name = name.lower()
        if field_name in CONTACT_FIELDS and field_name not in mapped:
            target = field_name  # a column named like a field fills that field
        elif args.only_mapped:
            continue
        elif not ATTRIBUTE_NAME.fullmatch(name):
            raise UsageError(
                f"{path}: column {index + 1} ({name!r}) is not a valid attribute name (1-63 characters of "
                f"A-Z, a-z, 0-9 and _ not starting with a digit): pass --map '{name}=attributes.NAME', "
                "or --only-mapped to skip the columns not mapped"
            )
        else:
            target = f"attributes.{name}"
        if target in mapped:
            raise UsageError(f"{path}: columns {mapped[target]!r} and {name!r} both map to {target}")
        targets[index] = target
        mapped[target] = name
    if args.match_on == "contact_id" and "contact_id" not in mapped:
        raise UsageError("--match-on contact_id needs a column mapped to contact_id")
    if not mapped:
        raise UsageError("no column is imported: map at least one with --map")
    plan = ImportPlan(path, args.encoding, header, targets)
    destination = rejected_path(args, plan)
    if destination.resolve() == path.resolve():
        raise UsageError(f"--rejected {destination} would overwrite the input")
    if not destination.parent.is_dir():
        raise UsageError(f"--rejected {destination}: no directory {destination.parent}")
    return plan


class ImportProgress:
    """A one-line progress bar on stderr: rows sent, and an estimate of the total from the share of
    the file's bytes read so far."""

    def __init__(self, total_bytes: int, *, enabled: bool, console: Console | None = None) -> None:
        self.total_bytes = total_bytes
        self.enabled = enabled
        self.last = 0.0
        self.bar: Progress | None = None
        self.drawn = False
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn

        self.bar = Progress(
            TextColumn("importing"),
            BarColumn(bar_width=20),
            TextColumn("{task.description}"),
            console=console or Console(stderr=True, highlight=False),
            auto_refresh=False,
            transient=True,  # erased when done: the summary follows
        )
        self.task = self.bar.add_task("", total=1.0)
        self.drawn = False

    def update(self, rows: int, bytes_read: int, *, force: bool = False, note: str = "") -> None:
        """Redraw, at most ten times a second."""
        now = time.monotonic()
        if self.bar is None or (not force and now - self.last < 0.1):
            return
        self.last = now
        share = min(bytes_read / self.total_bytes, 1.0) if self.total_bytes else 1.0
        estimate = f"/~{round(rows / share):,}" if 0 < share < 1 else ""
        note = f", {note}" if note else ""
        if not self.drawn:
            self.bar.start()
            self.drawn = True
        self.bar.update(
            self.task, completed=share, description=f"{share * 100:5.1f}%  {rows:,}{estimate} rows sent{note}"
        )
        self.bar.refresh()

    def finish(self) -> None:
        """Erase the bar; the summary follows."""
        if self.bar is not None and self.drawn:
            self.bar.stop()
            self.drawn = False


class ImportStream:
    """The request messages of ImportContacts: the options, then the file's rows in order. Rows
    rejected locally are counted here and not sent. gRPC reads this in a thread of its own."""

    def __init__(
        self, plan: ImportPlan, options: capi.ImportOptions, batch_size: int, progress: ImportProgress
    ) -> None:
        self.plan = plan
        self.options = options
        self.batch_size = batch_size
        self.progress = progress
        self.sent = 0
        self.local_rejected = 0
        self.failure: BaseException | None = None

    def __iter__(self) -> Iterator[capi.ImportContactsRequest]:
        try:
            yield from self._messages()
        except Exception as exc:
            # The stream ends here rather than being cancelled, so that the daemon applies the
            # rows sent and answers with what it wrote; the main thread reports the failure.
            self.failure = exc

    def _messages(self) -> Iterator[capi.ImportContactsRequest]:
        first = True
        batch: list[capi.ContactRow] = []
        size = 0
        with self.plan.path.open("rb") as raw:
            lines = CsvLines(raw, self.plan.encoding)
            records = csv_records(raw, self.plan.encoding, lines)
            next(records)  # the header
            try:
                for record in records:
                    row = self.plan.row(record.fields) if record.fields is not None else record.error
                    if isinstance(row, str):
                        self.local_rejected += 1
                        continue
                    if batch and (len(batch) >= self.batch_size or size + row.ByteSize() > CSV_MESSAGE_BYTES):
                        yield self._message(batch, first)
                        first, batch, size = False, [], 0
                    batch.append(row)
                    size += row.ByteSize() + 8
                    self.sent += 1
                    self.progress.update(self.sent, lines.bytes_read)
            except (OSError, ValueError) as exc:
                # The rows read so far are sent all the same, and the stream ends after them.
                self.failure = exc
            if batch or first:
                yield self._message(batch, first)
            self.progress.update(self.sent, lines.bytes_read, force=True, note="waiting for the daemon")

    def _message(self, rows: list[capi.ContactRow], first: bool) -> capi.ImportContactsRequest:
        request = capi.ImportContactsRequest(rows=rows)
        if first:
            request.options.CopyFrom(self.options)
        return request


@dataclass(frozen=True)
class Rejection:
    """A row that was not imported: its line in the file, the field at fault, and why."""

    line: int
    field: str
    reason: str


def write_rejected(
    plan: ImportPlan, server: Mapping[int, capi.RejectedRow], destination: pathlib.Path
) -> list[Rejection]:
    """Read the file again, in the same order as it was sent, and pick out the rejected records:
    those rejected locally and those whose stream index the daemon rejected. They are written to
    `destination`: original columns plus error_field and error_reason. OSError when that fails."""
    rejections: list[Rejection] = []
    with destination.open("w", encoding=plan.encoding, errors="replace", newline="") as out:
        writer = csv.writer(out)
        writer.writerow([*plan.header, *REJECTED_COLUMNS])
        index = 0
        with plan.path.open("rb") as raw:
            records = csv_records(raw, plan.encoding)
            next(records)  # the header
            for record in records:
                row = plan.row(record.fields) if record.fields is not None else record.error
                if isinstance(row, str):
                    rejection = Rejection(record.line, "", row)
                else:
                    found = server.get(index)
                    index += 1
                    if found is None:
                        continue
                    rejection = Rejection(record.line, found.field, found.reason)
                rejections.append(rejection)
                writer.writerow([*plan.original(record), rejection.field, rejection.reason])
    return rejections


def rejected_path(args: argparse.Namespace, plan: ImportPlan) -> pathlib.Path:
    """--rejected, or the default next to the input."""
    return pathlib.Path(args.rejected) if args.rejected else default_rejected_path(plan.path)


def default_rejected_path(path: pathlib.Path) -> pathlib.Path:
    """`contacts.csv` -> `contacts.rejected.csv`, next to it."""
    stem = path.name.removesuffix(".csv").removesuffix(".CSV")
    return path.with_name(f"{stem}.rejected.csv")


def contacts_import_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `contacts import`."""
    parser.add_argument("file", metavar="FILE.csv", help="a CSV file with a header line")
    parser.add_argument(
        "--map",
        action="append",
        type=column_mapping,
        default=[],
        metavar="CSVCOL=FIELD",
        help="import a column into contact_id, email, phone, time_zone or attributes.NAME (repeatable)",
    )
    parser.add_argument(
        "--only-mapped",
        action="store_true",
        help="skip the columns not mapped (by default they become attributes named by their header)",
    )
    parser.add_argument(
        "--match-on",
        choices=sorted(MATCH_ON),
        default="email",
        help="which field finds an existing contact to update (email)",
    )
    parser.add_argument(
        "--list", default=None, type=list_name, metavar="LIST", help="also add the contacts to LIST"
    )
    parser.add_argument("--encoding", default="utf-8", help="the file's encoding (utf-8)")
    parser.add_argument(
        "--rejected",
        default=None,
        metavar="FILE",
        help="where to write rejected rows as CSV (default: FILE.rejected.csv next to the input)",
    )
    parser.add_argument(
        "--batch-size",
        type=batch_size,
        default=1000,
        metavar="N",
        help=f"rows per stream message, 1-{MAX_BATCH_SIZE:,} (1000)",
    )


def run_contacts_import(client: Client, args: argparse.Namespace) -> int:
    """contacts import FILE.csv: stream the rows, report created/updated/rejected, write rejects."""
    previous_limit = csv.field_size_limit(CSV_LINE_LIMIT)
    try:
        return import_contacts(client, args, plan_import(args))
    finally:
        csv.field_size_limit(previous_limit)


def import_contacts(client: Client, args: argparse.Namespace, plan: ImportPlan) -> int:
    """The import itself, after the local checks passed."""
    options = capi.ImportOptions(match_on=MATCH_ON[args.match_on], list=args.list or "")
    progress = ImportProgress(plan.path.stat().st_size, enabled=sys.stderr.isatty() and not client.json)
    stream = ImportStream(plan, options, args.batch_size, progress)
    try:
        # No deadline: a large file takes as long as it takes (Ctrl-C cancels it).
        reply = client.contacts.ImportContacts(iter(stream))
    finally:
        progress.finish()
    server = {r.index: r for r in reply.rejected_rows}
    rejected = reply.rejected + stream.local_rejected
    destination: pathlib.Path | None = None
    rejections: list[Rejection] = []
    write_error = ""
    if rejected:
        destination = rejected_path(args, plan)
        try:
            rejections = write_rejected(plan, server, destination)
        except OSError as exc:
            write_error = f"{PROG}: cannot write the rejected rows to {destination}: {exc.strerror or exc}"
            destination = None
    total = stream.sent + stream.local_rejected
    if client.json:
        print(
            json.dumps(
                {
                    "created": reply.created,
                    "updated": reply.updated,
                    "rejected": rejected,
                    "rejected_file": str(destination) if destination else "",
                    "rejected_rows": [
                        {"line": r.line, "field": r.field, "reason": r.reason} for r in rejections
                    ],
                },
                indent=2,
            )
        )
    else:
        where = f", written to {destination}" if destination else ""
        print(
            key_values(
                [
                    ("Created", str(reply.created)),
                    ("Updated", str(reply.updated)),
                    ("Rejected", f"{rejected}{where}"),
                ]
            )
        )
        for r in rejections[:10]:
            print(f"  line {r.line}: {r.field + ': ' if r.field else ''}{r.reason}", file=sys.stderr)
        if len(rejections) > 10:
            print(f"  ... and {len(rejections) - 10} more in {destination}", file=sys.stderr)
        if rejected > len(rejections) and not write_error:
            print(
                f"  {rejected - len(rejections)} rejected rows were not itemised by the daemon",
                file=sys.stderr,
            )
    if write_error:
        print(write_error, file=sys.stderr)
        return EXIT_FAILURE
    if stream.failure is not None:
        print(
            f"{PROG}: reading {plan.path} failed after {stream.sent} rows were sent: {stream.failure}; "
            "the rows sent were imported (counted above), the rest of the file was not",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    return EXIT_FAILURE if total and rejected >= total else EXIT_OK
