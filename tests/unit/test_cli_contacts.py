"""campaignctl's contact commands without a daemon: CSV reading, local refusals, the progress bar."""

from __future__ import annotations

import argparse
import csv
import io
import pathlib

import pytest
from rich.console import Console

from campaignd.cli import connection, csv_import
from campaignd.cli import main as entry


def test_map_takes_contact_fields_and_attribute_names() -> None:
    """--map COL=FIELD accepts the four contact fields and attributes.NAME, nothing else."""
    assert csv_import.column_mapping("E-mail=email") == ("E-mail", "email")
    assert csv_import.column_mapping("a=b=attributes.plan") == ("a=b", "attributes.plan")
    for bad in ("email", "=email", "x=name", "x=attributes.", "x=attributes.9a", "x=attributes.a-b"):
        with pytest.raises(argparse.ArgumentTypeError):
            csv_import.column_mapping(bad)


def test_records_skip_long_lines_and_keep_line_numbers() -> None:
    """A line over 1 MiB becomes one 'line too long' record; the records after it keep their lines."""
    data = (
        b"email,note\n"
        b"a@example.com,one\n"
        b"\n"
        b'b@example.com,"two\nlines"\n' + b"c@example.com," + b"x" * (2 * csv_import.CSV_LINE_LIMIT) + b"\n"
        b"d@example.com,caf\xc3\xa9\n"
    )
    previous = csv.field_size_limit(csv_import.CSV_LINE_LIMIT)
    try:
        records = list(csv_import.csv_records(io.BytesIO(data), "utf-8"))
    finally:
        csv.field_size_limit(previous)
    assert [(r.line, r.fields, r.error) for r in records] == [
        (1, ["email", "note"], ""),
        (2, ["a@example.com", "one"], ""),
        (4, ["b@example.com", "two\nlines"], ""),
        (6, None, csv_import.LINE_TOO_LONG),
        (7, ["d@example.com", "café"], ""),
    ]


LOCAL_REFUSALS = [
    pytest.param(b"", [], "empty file", id="empty"),
    pytest.param(b"\n \n", [], "empty file", id="blank"),
    pytest.param(b",,\n,\n", [], "empty file", id="empty-cells"),
    pytest.param(b"email\n", [], "no rows after the header", id="header-only"),
    pytest.param(b"email,email\na@example.com,b\n", [], "same header 'email'", id="duplicate-header"),
    pytest.param(b"email\na@example.com\n", ["--map", "mail=email"], "no column 'mail'", id="unknown-column"),
    pytest.param(
        b"email,First Name\na@example.com,A\n", [], "not a valid attribute name", id="attribute-name"
    ),
    pytest.param(
        b"email\na@example.com\n", ["--match-on", "contact_id"], "mapped to contact_id", id="match-on"
    ),
    pytest.param(
        b"email\na@example.com\nz@example.com,Zo\xe9\n", [], "line 3 is not valid utf-8", id="latin-1"
    ),
    pytest.param(b"email\na@example.com\n", ["--batch-size", "10001"], "invalid batch size", id="batch-size"),
    pytest.param(b"email\na@example.com\n", ["--encoding", "utf-16"], "ASCII", id="utf-16"),
    pytest.param(
        b"email\na@example.com\n", ["--rejected", "/nonexistent/r.csv"], "no directory", id="rejected"
    ),
]


@pytest.mark.parametrize(("content", "options", "message"), LOCAL_REFUSALS)
def test_import_refuses_bad_files_before_any_call(
    tmp_path: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
    content: bytes,
    options: list[str],
    message: str,
) -> None:
    """Bad files and options exit 2 with a message; no call is made (it would fail with exit 1)."""
    path = tmp_path / "in.csv"
    path.write_bytes(content)
    socket = str(tmp_path / "no-daemon.sock")
    try:
        status = entry.main(["--socket", socket, "contacts", "import", str(path), *options], environ={})
    except SystemExit as exc:  # argparse refuses an option value this way
        status = int(str(exc.code))
    assert status == connection.EXIT_USAGE
    assert message in capsys.readouterr().err


def test_progress_bar_estimates_the_total_from_bytes_read(capsys: pytest.CaptureFixture[str]) -> None:
    """The bar shows the share of the file read and estimates the row total from it."""
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120, color_system=None)
    progress = csv_import.ImportProgress(1000, enabled=True, console=console)
    progress.update(100, 250, force=True)
    shown = screen.getvalue()
    assert "importing" in shown
    assert " 25.0%" in shown
    assert "100/~400 rows sent" in shown
    progress.finish()
    silent = csv_import.ImportProgress(1000, enabled=False)
    silent.update(1, 1, force=True)
    assert capsys.readouterr().err == ""


def test_rejected_file_defaults_next_to_the_input() -> None:
    """The rejected rows of `x.csv` go to `x.rejected.csv` in the same directory."""
    assert csv_import.default_rejected_path(pathlib.Path("/d/x.csv")) == pathlib.Path("/d/x.rejected.csv")
    assert csv_import.default_rejected_path(pathlib.Path("/d/x.txt")) == pathlib.Path("/d/x.txt.rejected.csv")


def test_suppressions_list_address_is_a_filter_not_the_daemon() -> None:
    """After `suppressions list`, --address filters; before the command it is still the daemon's."""
    args = entry.build_parser().parse_args(
        ["--address", "db:7443", "suppressions", "list", "--address", "a@example.com"]
    )
    assert args.address == "db:7443"
    assert args.filter_address == "a@example.com"
    args = entry.build_parser().parse_args(
        ["suppressions", "check", "a@example.com", "--channel-type", "sms"]
    )
    assert args.address is None
    assert args.check_address == "a@example.com"
