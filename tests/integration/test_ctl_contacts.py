"""`campaignctl contacts|lists|segments|suppressions` as an operator runs them.

The first tests check CSV handling and local refusals without a daemon; the rest run the command line
as a subprocess against a real daemon over its socket.
"""

from __future__ import annotations

import csv
import json
import pathlib
import re
from typing import Any

import pytest

from campaignd.cli import connection, csv_import
from campaignd.cli import main as entry
from tests.integration.conftest import DaemonProcess
from tests.integration.ctl import ctl_at, ok

TEN_MB = 10 * 1024 * 1024


def contacts_by_email(daemon: DaemonProcess, *args: str) -> dict[str, dict[str, Any]]:
    """Every contact (`contacts list --all --json`), by email address."""
    reply = json.loads(ok(daemon, "contacts", "list", "--all", "--json", *args))
    return {c["email"]: c for c in reply["contacts"]}


def summary(stdout: str) -> dict[str, str]:
    """The `Key: value` lines of the import summary."""
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in stdout.splitlines())}


# ---------------------------------------------------------------------------------------------
# Against a daemon


def test_import_counts_rejects_and_writes_them_back(plugged: DaemonProcess, tmp_path: pathlib.Path) -> None:
    """Good, bad-email, bad-phone, duplicate, extra-field and 10 MB rows: counts, rejected file, contacts."""
    path = tmp_path / "people.csv"
    path.write_text(
        "email,phone,first_name,plan\n"
        "ann@example.com,+14155550101,Ann,pro\n"  # line 2: created
        "bob@example.com,,Bob,free\n"  # line 3: created
        "not-an-email,,Bad,free\n"  # line 4: bad email
        "cat@example.com,12,Cat,pro\n"  # line 5: bad phone, so no cat at all
        "ANN@example.com,,Ann2,team\n"  # line 6: same email as line 2: updates ann
        "dan@example.com,,Dan,pro,extra\n"  # line 7: more fields than the header
        "eve@example.com,,Eve," + "x" * TEN_MB + "\n"  # line 8: 10 MB
        "fay@example.com,,Fay,free\n",  # line 9: created
        encoding="utf-8",
    )
    result = ctl_at(plugged, "contacts", "import", str(path))
    assert result.returncode == 0, result.stderr
    rejected_path = tmp_path / "people.rejected.csv"
    assert summary(result.stdout) == {
        "Created": "3",
        "Updated": "1",
        "Rejected": f"4, written to {rejected_path}",
    }
    assert "line 4: email:" in result.stderr
    assert "line 8: line too long" in result.stderr

    with rejected_path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["email", "phone", "first_name", "plan", "error_field", "error_reason"]
    assert [row[:5] for row in rows[1:]] == [
        ["not-an-email", "", "Bad", "free", "email"],
        ["cat@example.com", "12", "Cat", "pro", "phone"],
        ["dan@example.com", "", "Dan", "pro", ""],
        ["", "", "", "", ""],
    ]
    assert all(row[5] for row in rows[1:3])
    assert [row[5] for row in rows[3:]] == ["extra fields", "line too long"]

    contacts = contacts_by_email(plugged)
    assert sorted(contacts) == ["ann@example.com", "bob@example.com", "fay@example.com"]
    assert contacts["ann@example.com"]["phone"] == "+14155550101"
    assert contacts["ann@example.com"]["attributes"] == {"first_name": "Ann2", "plan": "team"}

    # The same file again: every good row now updates, and --json itemises the rejections by line.
    again = json.loads(ok(plugged, "contacts", "import", str(path), "--json"))
    assert (again["created"], again["updated"], again["rejected"]) == (0, 4, 4)
    assert [r["line"] for r in again["rejected_rows"]] == [4, 5, 7, 8]


def test_import_of_an_empty_file_creates_nothing(plugged: DaemonProcess, tmp_path: pathlib.Path) -> None:
    """An empty file exits 2 with 'empty file', and no contact exists afterwards."""
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    result = ctl_at(plugged, "contacts", "import", str(path))
    assert result.returncode == 2
    assert "empty file" in result.stderr
    assert contacts_by_email(plugged) == {}


def test_latin1_read_as_utf8_names_the_line(plugged: DaemonProcess, tmp_path: pathlib.Path) -> None:
    """A latin-1 file read as UTF-8 exits 2 naming the bad line and sends nothing; --encoding fixes it."""
    path = tmp_path / "latin.csv"
    path.write_bytes("email,first_name\nann@example.com,Ann\nzoe@example.com,Zoé\n".encode("latin-1"))
    result = ctl_at(plugged, "contacts", "import", str(path))
    assert result.returncode == 2
    assert "line 3 is not valid utf-8" in result.stderr
    assert contacts_by_email(plugged) == {}
    ok(plugged, "contacts", "import", str(path), "--encoding", "latin-1")
    contacts = contacts_by_email(plugged)
    assert contacts["zoe@example.com"]["attributes"] == {"first_name": "Zoé"}


def test_import_adds_to_a_list(plugged: DaemonProcess, tmp_path: pathlib.Path) -> None:
    """--list adds every imported contact to the list; member_count shows it."""
    ok(plugged, "lists", "create", "vip", "--display-name", "VIP")
    path = tmp_path / "vip.csv"
    path.write_text(
        "Mail,id,tier,ignored\na@example.com,ann,gold,x\nb@example.com,bob,silver,y\n", encoding="utf-8"
    )
    result = ctl_at(
        plugged,
        "contacts",
        "import",
        str(path),
        "--list",
        "lists/vip",
        "--map",
        "Mail=email",
        "--map",
        "id=contact_id",
        "--map",
        "tier=attributes.level",
        "--only-mapped",
        "--batch-size",
        "1",
    )
    assert result.returncode == 0, result.stderr
    assert summary(result.stdout)["Created"] == "2"
    lists = json.loads(ok(plugged, "lists", "list", "--json"))["lists"]
    assert [(x["name"], x["member_count"]) for x in lists] == [("lists/vip", "2")]
    members = json.loads(ok(plugged, "contacts", "list", "--list", "vip", "--json"))["contacts"]
    assert {(m["name"], json.dumps(m["attributes"])) for m in members} == {
        ("contacts/ann", '{"level": "gold"}'),
        ("contacts/bob", '{"level": "silver"}'),
    }


@pytest.mark.slow
def test_list_members_from_stdin_and_contact_commands(plugged: DaemonProcess) -> None:
    """contacts create/update/get/delete, and lists add/remove reading ids from stdin with '-'."""
    ok(plugged, "contacts", "create", "--id", "zed", "--email", "Zed@Example.com", "--attr", "age:=30")
    updated = json.loads(
        ok(plugged, "contacts", "update", "zed", "--attr", "plan=pro", "--remove-attr", "age", "--json")
    )
    assert (updated["email"], updated["attributes"]) == ("zed@example.com", {"plan": "pro"})
    ok(plugged, "contacts", "create", "--id", "amy", "--phone", "+14155550102")
    ok(plugged, "lists", "create", "team")
    assert ok(plugged, "lists", "add", "team", "-", stdin="contacts/zed\namy\n").strip() == (
        "added 2, already members 0"
    )
    assert ok(plugged, "lists", "add", "lists/team", "zed").strip() == "added 0, already members 1"
    assert ok(plugged, "lists", "remove", "team", "-", stdin="zed\n").strip() == "removed 1"
    refused = ctl_at(plugged, "lists", "add", "team", "-", stdin="amy\nNot_An_Id\n")
    assert refused.returncode == 2
    assert "Not_An_Id" in refused.stderr
    ok(plugged, "contacts", "delete", "zed")
    gone = ctl_at(plugged, "contacts", "get", "zed")
    assert gone.returncode == 1
    assert "NOT_FOUND" in gone.stderr
    table = ok(plugged, "contacts", "list", "--list", "team")
    assert re.search(r"^amy\s+-\s+\+14155550102\s", table, re.MULTILINE)


def test_segment_with_a_bad_filter_shows_the_field_violation(plugged: DaemonProcess) -> None:
    """A filter the daemon refuses exits 2 and prints its field violation; a good one is kept."""
    result = ctl_at(plugged, "segments", "create", "bad", "--display-name", "Bad", "--filter", 'foo = "x"')
    assert result.returncode == 2
    assert "INVALID_ARGUMENT" in result.stderr
    assert "field segment.filter: unknown field 'foo' at 0" in result.stderr
    ok(plugged, "segments", "create", "pro", "--display-name", "Pro", "--filter", 'attributes.plan = "pro"')
    segments = json.loads(ok(plugged, "segments", "list", "--json"))["segments"]
    assert [(s["name"], s["filter"]) for s in segments] == [("segments/pro", 'attributes.plan = "pro"')]
    assert json.loads(ok(plugged, "segments", "get", "pro", "--json"))["display_name"] == "Pro"
    ok(plugged, "segments", "delete", "segments/pro")
    assert json.loads(ok(plugged, "segments", "list", "--json"))["segments"] == []


def test_suppressions_round_trip_with_exit_status_3(plugged: DaemonProcess, tmp_path: pathlib.Path) -> None:
    """add, check (exit 3 when suppressed, 0 when not), list with filters, remove, check again."""
    assert ok(
        plugged,
        "suppressions",
        "add",
        "Ann@Example.com",
        "--reason",
        "bounced",
        "--channel-type",
        "email",
        "--source",
        "test",
    ).strip() == ("added 1, already suppressed 0")
    more = tmp_path / "unsubscribed.txt"
    more.write_text("# from the old system\nbob@example.com\n\nann@example.com\n", encoding="utf-8")
    assert ok(plugged, "suppressions", "add", "--file", str(more), "--reason", "unsubscribed").strip() == (
        "added 2, already suppressed 0"
    )

    check = ctl_at(plugged, "suppressions", "check", "ann@example.com", "--channel-type", "email")
    assert check.returncode == 3
    assert "bounced" in check.stdout
    assert "unsubscribed" in check.stdout
    free = ctl_at(plugged, "suppressions", "check", "cat@example.com", "--channel-type", "email")
    assert (free.returncode, free.stdout) == (0, "not suppressed\n")

    listed = json.loads(ok(plugged, "suppressions", "list", "--address", "ann@example.com", "--json"))
    by_reason = {s["reason"]: s for s in listed["suppressions"]}
    assert sorted(by_reason) == ["BOUNCED", "UNSUBSCRIBED"]
    assert by_reason["BOUNCED"]["source"] == "test"
    assert by_reason["UNSUBSCRIBED"]["source"] == "import:unsubscribed.txt"
    assert by_reason["UNSUBSCRIBED"]["channel_type"] == ""
    only = json.loads(ok(plugged, "suppressions", "list", "--reason", "bounced", "--json"))
    assert [s["address"] for s in only["suppressions"]] == ["ann@example.com"]

    for suppression in listed["suppressions"]:
        assert ok(plugged, "suppressions", "remove", suppression["name"]).strip() == (
            f"removed {suppression['name']}"
        )
    after = ctl_at(plugged, "suppressions", "check", "ann@example.com", "--channel-type", "email", "--json")
    assert after.returncode == 0
    assert json.loads(after.stdout) == {"suppressed": False, "suppressions": []}


def test_a_read_failure_imports_the_rows_read_and_says_so(
    plugged: DaemonProcess,
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A disk read error at line 1,202 (a double: real disks do not fail on cue) ends the stream
    after the 1,200 rows read: they are imported and counted, and the command exits 1 naming it."""
    path = tmp_path / "big.csv"
    path.write_text("email\n" + "".join(f"row{i}@example.com\n" for i in range(2000)), encoding="utf-8")
    read_line = csv_import.CsvLines.__next__

    def failing(self: csv_import.CsvLines) -> str:
        if self.line == 1201:  # the header and 1,200 rows read
            raise OSError(5, "Input/output error")
        return read_line(self)

    monkeypatch.setattr(csv_import.CsvLines, "__next__", failing)
    status = entry.main(
        ["--socket", str(plugged.socket_path), "contacts", "import", str(path), "--batch-size", "500"],
        environ={},
    )
    out, err = capsys.readouterr()
    assert status == connection.EXIT_FAILURE
    assert summary(out)["Created"] == "1200"
    assert "failed after 1200 rows were sent: [Errno 5] Input/output error" in err
    monkeypatch.undo()
    assert sorted(contacts_by_email(plugged)) == sorted(f"row{i}@example.com" for i in range(1200))


def test_duplicates_far_apart_in_a_file_update_one_contact(
    plugged: DaemonProcess, tmp_path: pathlib.Path
) -> None:
    """A row repeating the email of a row 2,000 lines earlier updates that contact (Updated 1),
    as it would next to it."""
    path = tmp_path / "dupes.csv"
    rows = [f"row{i}@example.com,free" for i in range(2500)]
    rows[2100] = "ROW5@example.com,pro"
    path.write_text("email,plan\n" + "\n".join(rows) + "\n", encoding="utf-8")
    result = ctl_at(plugged, "contacts", "import", str(path))
    assert result.returncode == 0, result.stderr
    assert summary(result.stdout) == {"Created": "2499", "Updated": "1", "Rejected": "0"}
    assert contacts_by_email(plugged)["row5@example.com"]["attributes"] == {"plan": "pro"}


def test_contacts_create_with_a_request_id_creates_once(plugged: DaemonProcess) -> None:
    """`contacts create --request-id` twice prints the same contact and creates one."""
    first = json.loads(
        ok(plugged, "contacts", "create", "--email", "once@example.com", "--request-id", "r-1", "--json")
    )
    again = json.loads(
        ok(plugged, "contacts", "create", "--email", "once@example.com", "--request-id", "r-1", "--json")
    )
    assert again == first
    assert list(contacts_by_email(plugged)) == ["once@example.com"]
