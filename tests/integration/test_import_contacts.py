"""ImportContacts and CreateContact's request_id over the real daemon, on SQLite and PostgreSQL:
the same outcome whatever the chunking, failed streams that say what they wrote, rows with
values JSON cannot hold, and stored answers for repeated requests."""

from __future__ import annotations

import contextlib
import math
import pathlib
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf import field_mask_pb2
from grpc_status import rpc_status

from campaignd.v1 import contact_service_pb2 as cs
from campaignd.v1 import contact_service_pb2_grpc as cs_grpc
from tests.integration.campaign_client import content, failure
from tests.integration.conftest import DaemonProcess, DatabaseDaemon

CONFIG = '[audience]\ndefault_region = "US"\n[engine]\nenabled = false\n'
# More rows than the daemon applies in one transaction, so that rows around them fall in
# different chunks.
FILLER = 1500


@pytest.fixture(scope="module")
def daemon(module_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """One daemon per database for the module."""
    with DatabaseDaemon(tmp_path_factory.mktemp("import"), CONFIG, module_database_url).running() as process:
        yield process


@pytest.fixture(scope="module")
def stub(daemon: DaemonProcess) -> Iterator[cs_grpc.ContactServiceStub]:
    """A ContactService client."""
    with daemon.channel() as channel:
        yield cs_grpc.ContactServiceStub(channel)


def _stream(
    rows: list[cs.ContactRow], per_message: int = 500, **options: Any
) -> Iterator[cs.ImportContactsRequest]:
    yield cs.ImportContactsRequest(options=cs.ImportOptions(**options))
    for start in range(0, len(rows), per_message):
        yield cs.ImportContactsRequest(rows=rows[start : start + per_message])


def _fillers(tag: str, n: int) -> list[cs.ContactRow]:
    return [cs.ContactRow(email=f"{tag}-fill{i}@example.org") for i in range(n)]


def _get(stub: cs_grpc.ContactServiceStub, contact_id: str) -> cs.Contact | None:
    try:
        return stub.GetContact(cs.GetContactRequest(name=f"contacts/{contact_id}"))
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return None


def _emails_like(stub: cs_grpc.ContactServiceStub, tag: str) -> set[str]:
    found: set[str] = set()
    token = ""
    while True:
        page = stub.ListContacts(
            cs.ListContactsRequest(filter=f'email = "{tag}-*"', page_size=1000, page_token=token)
        )
        found |= {c.email for c in page.contacts}
        token = page.next_page_token
        if not token:
            return found


def _report(error: grpc.RpcError) -> cs.ImportContactsResponse:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        if detail.Is(cs.ImportContactsResponse.DESCRIPTOR):
            report = cs.ImportContactsResponse()
            detail.Unpack(report)
            return report
    raise AssertionError("no ImportContactsResponse in the error's details")


def _outcome(
    stub: cs_grpc.ContactServiceStub, scenario: list[cs.ContactRow], gap: int, tag: str, match_on: int
) -> tuple[int, int, list[tuple[int, str, str]]]:
    """Import the scenario's rows with `gap` filler rows before each; (created, updated,
    rejections by scenario position) without the fillers, and with `tag` taken out of reasons."""
    rows: list[cs.ContactRow] = []
    positions: dict[int, int] = {}
    for position, row in enumerate(scenario):
        rows += _fillers(f"{tag}-{position}", gap)
        positions[len(rows)] = position
        rows.append(row)
    reply = stub.ImportContacts(_stream(rows, match_on=match_on))
    rejected = sorted(
        (positions[r.index], r.field, r.reason.replace(tag, "TAG")) for r in reply.rejected_rows
    )
    return reply.created - gap * len(scenario), reply.updated, rejected


def _by_email_scenario(tag: str) -> list[cs.ContactRow]:
    return [
        cs.ContactRow(
            contact_id=f"{tag}-a", email=f"{tag}-a@example.org", attributes=content(plan="free", n=1)
        ),
        # The same address in capitals: updates contact a, merging the attributes.
        cs.ContactRow(email=f"{tag}-A@EXAMPLE.org", attributes=content(plan="pro")),
        # Contact a's address with another id: rejected.
        cs.ContactRow(contact_id=f"{tag}-other", email=f"{tag}-a@example.org"),
        # A new address with contact a's id: rejected.
        cs.ContactRow(contact_id=f"{tag}-a", email=f"{tag}-b@example.org"),
        # No address: found by id, given a phone.
        cs.ContactRow(contact_id=f"{tag}-a", phone="+12025550111"),
    ]


def _by_id_scenario(tag: str) -> list[cs.ContactRow]:
    return [
        cs.ContactRow(contact_id=f"{tag}-x", email=f"{tag}-x@example.org"),
        cs.ContactRow(contact_id=f"{tag}-x", phone="+12025550112"),
        # x's address for another contact: rejected.
        cs.ContactRow(contact_id=f"{tag}-y", email=f"{tag}-x@example.org"),
        # x moves to a new address, which frees the old one ...
        cs.ContactRow(contact_id=f"{tag}-x", email=f"{tag}-x2@example.org"),
        # ... for y.
        cs.ContactRow(contact_id=f"{tag}-y", email=f"{tag}-x@example.org"),
    ]


@pytest.mark.parametrize(
    ("match_on", "scenario"),
    [(cs.ImportOptions.EMAIL, _by_email_scenario), (cs.ImportOptions.CONTACT_ID, _by_id_scenario)],
)
def test_duplicates_across_chunks_are_treated_as_within_one(
    stub: cs_grpc.ContactServiceStub, match_on: int, scenario: Any
) -> None:
    """Rows that meet the same contact give the same counts, rejections and contacts whether they
    are adjacent or 1,500 rows apart (in different transactions)."""
    near, far = f"n{uuid.uuid4().hex[:8]}", f"f{uuid.uuid4().hex[:8]}"
    adjacent = _outcome(stub, scenario(near), 0, near, match_on)
    apart = _outcome(stub, scenario(far), FILLER, far, match_on)
    assert adjacent == apart
    if match_on == cs.ImportOptions.EMAIL:
        assert adjacent == (
            1,
            2,
            [
                (2, "contact_id", "the email belongs to contacts/TAG-a"),
                (3, "contact_id", "contacts/TAG-a exists with another email"),
            ],
        )
        for tag in (near, far):
            contact = _get(stub, f"{tag}-a")
            assert contact is not None
            assert (contact.email, contact.phone) == (f"{tag}-a@example.org", "+12025550111")
            assert dict(contact.attributes) == {"plan": "pro", "n": 1}
            assert _get(stub, f"{tag}-other") is None
    else:
        assert adjacent == (2, 2, [(2, "email", "TAG-x@example.org belongs to contacts/TAG-x")])
        for tag in (near, far):
            x, y = _get(stub, f"{tag}-x"), _get(stub, f"{tag}-y")
            assert x is not None
            assert y is not None
            assert (x.email, x.phone) == (f"{tag}-x2@example.org", "+12025550112")
            assert y.email == f"{tag}-x@example.org"


def test_a_bad_message_applies_the_messages_before_it_and_reports_them(
    stub: cs_grpc.ContactServiceStub,
) -> None:
    """A message breaking the stream's rules ends it with INVALID_ARGUMENT, whose details give
    applied_rows and the counts of exactly the rows written: those of the messages before it."""
    tag = f"b{uuid.uuid4().hex[:8]}"
    rows = _fillers(tag, 2500)
    rows[1700].email = "not-an-email"

    def requests() -> Iterator[cs.ImportContactsRequest]:
        yield from _stream(rows, per_message=500)
        yield cs.ImportContactsRequest(
            options=cs.ImportOptions(), rows=[cs.ContactRow(email=f"{tag}-late@example.org")]
        )

    with pytest.raises(grpc.RpcError) as caught:
        stub.ImportContacts(requests())
    found = failure(caught.value)
    assert found.code == grpc.StatusCode.INVALID_ARGUMENT
    assert found.fields == ["options"]
    assert found.metadata["applied_rows"] == "2500"
    report = _report(caught.value)
    assert (report.created, report.updated, report.rejected) == (2499, 0, 1)
    assert [(r.index, r.field) for r in report.rejected_rows] == [(1700, "email")]
    written = _emails_like(stub, tag)
    assert len(written) == 2499
    assert f"{tag}-late@example.org" not in written


@contextlib.contextmanager
def _failing_insert(database: str, email: str) -> Iterator[None]:
    """A trigger that makes the database refuse to insert a contact with `email` (a fault
    injected into the real database, as a full disk or a lost connection would fail a write)."""
    engine = sa.create_engine(database.replace("postgresql://", "postgresql+psycopg://", 1))
    if engine.dialect.name == "sqlite":
        create = [
            f"CREATE TRIGGER import_fault BEFORE INSERT ON contacts WHEN NEW.email = '{email}' "
            "BEGIN SELECT RAISE(ABORT, 'injected fault'); END"
        ]
        drop = ["DROP TRIGGER import_fault"]
    else:
        create = [
            "CREATE FUNCTION import_fault() RETURNS trigger AS $$ BEGIN "
            f"IF NEW.email = '{email}' THEN RAISE EXCEPTION 'injected fault'; END IF; "
            "RETURN NEW; END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER import_fault BEFORE INSERT ON contacts "
            "FOR EACH ROW EXECUTE FUNCTION import_fault()",
        ]
        drop = ["DROP TRIGGER import_fault ON contacts", "DROP FUNCTION import_fault()"]
    with engine.begin() as conn:
        for statement in create:
            conn.exec_driver_sql(statement)
    try:
        yield
    finally:
        with engine.begin() as conn:
            for statement in drop:
                conn.exec_driver_sql(statement)
        engine.dispose()


def test_a_database_failure_mid_import_reports_the_rows_written(
    stub: cs_grpc.ContactServiceStub, module_database_url: str
) -> None:
    """When the database refuses a write halfway, the call fails with INTERNAL carrying
    applied_rows and the counts of the rows written, and those are exactly the rows before the
    failed transaction."""
    tag = f"d{uuid.uuid4().hex[:8]}"
    rows = _fillers(tag, 2500)
    with _failing_insert(module_database_url, rows[1700].email), pytest.raises(grpc.RpcError) as caught:
        stub.ImportContacts(_stream(rows, per_message=500))
    found = failure(caught.value)
    assert found.code == grpc.StatusCode.INTERNAL
    # Messages of 500 rows make transactions of 1,000: the one with row 1,700 began at 1,000.
    assert found.metadata["applied_rows"] == "1000"
    report = _report(caught.value)
    assert (report.created, report.updated, report.rejected) == (1000, 0, 0)
    assert _emails_like(stub, tag) == {f"{tag}-fill{i}@example.org" for i in range(1000)}
    assert "injected fault" not in (caught.value.details() or "")


def test_a_cancelled_import_leaves_a_prefix_of_the_stream(
    stub: cs_grpc.ContactServiceStub, daemon: DaemonProcess
) -> None:
    """A client that cancels mid-stream finds rows 0..k-1 written and none after, for the k the
    daemon logs as applied_rows."""
    tag = f"c{uuid.uuid4().hex[:8]}"
    rows = _fillers(tag, 4000)
    sent_enough = threading.Event()
    never = threading.Event()

    def requests() -> Iterator[cs.ImportContactsRequest]:
        for number, request in enumerate(_stream(rows, per_message=500)):
            yield request
            if number == 6:  # 3,000 rows sent
                sent_enough.set()
                never.wait(30)  # the stream stays open until the client cancels

    call = stub.ImportContacts.future(requests())
    assert sent_enough.wait(30)
    time.sleep(1.0)
    call.cancel()  # type: ignore[no-untyped-call]
    never.set()
    deadline = time.monotonic() + 30
    applied = None
    while applied is None and time.monotonic() < deadline:
        events = [e for e in daemon.log_events() if e.get("event") == "import cancelled"]
        applied = events[-1]["applied_rows"] if events else None
        time.sleep(0.1)
    assert applied is not None, "no 'import cancelled' in the log"
    written = _emails_like(stub, tag)
    assert written == {f"{tag}-fill{i}@example.org" for i in range(applied)}
    assert applied <= 3000


def test_rows_with_nan_or_infinity_are_rejected_and_the_rest_applied(
    stub: cs_grpc.ContactServiceStub,
) -> None:
    """NaN and ±Infinity attributes (also inside a list) reject their rows, in a later chunk too;
    the stream completes and every other row is written."""
    tag = f"x{uuid.uuid4().hex[:8]}"
    bad: list[tuple[str, Any]] = [
        ("score", math.nan),
        ("score", math.inf),
        ("scores", [1, -math.inf]),
    ]
    rows = _fillers(tag, FILLER)
    for number, (name, value) in enumerate(bad):
        rows.append(
            cs.ContactRow(email=f"{tag}-bad{number}@example.org", attributes=content(**{name: value}))
        )
    rows.append(cs.ContactRow(email=f"{tag}-good@example.org", attributes=content(score=1.5)))
    reply = stub.ImportContacts(_stream(rows))
    assert (reply.created, reply.updated, reply.rejected) == (FILLER + 1, 0, 3)
    assert [(r.index, r.field, r.reason) for r in reply.rejected_rows] == [
        (FILLER, "attributes.score", "must be a finite number"),
        (FILLER + 1, "attributes.score", "must be a finite number"),
        (FILLER + 2, "attributes.scores[1]", "must be a finite number"),
    ]
    assert len(_emails_like(stub, tag)) == FILLER + 1


def test_create_and_update_contact_refuse_nan_attributes(stub: cs_grpc.ContactServiceStub) -> None:
    """CreateContact and UpdateContact answer INVALID_ARGUMENT on contact.attributes.<name> for a
    NaN, and write nothing."""
    tag = f"y{uuid.uuid4().hex[:8]}"
    with pytest.raises(grpc.RpcError) as caught:
        stub.CreateContact(
            cs.CreateContactRequest(
                contact_id=tag, contact=cs.Contact(email=f"{tag}@example.org", attributes=content(v=math.nan))
            )
        )
    found = failure(caught.value)
    assert (found.code, found.fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["contact.attributes.v"])
    assert _get(stub, tag) is None
    stub.CreateContact(
        cs.CreateContactRequest(contact_id=tag, contact=cs.Contact(email=f"{tag}@example.org"))
    )
    with pytest.raises(grpc.RpcError) as caught:
        stub.UpdateContact(
            cs.UpdateContactRequest(
                contact=cs.Contact(name=f"contacts/{tag}", attributes=content(v=math.inf)),
                update_mask=field_mask_pb2.FieldMask(paths=["attributes"]),
            )
        )
    assert failure(caught.value).fields == ["contact.attributes.v"]
    contact = _get(stub, tag)
    assert contact is not None
    assert dict(contact.attributes) == {}


def test_create_contact_repeated_with_its_request_id_returns_the_first_answer(
    stub: cs_grpc.ContactServiceStub,
) -> None:
    """A repeat with the same request_id returns the stored contact, even with other fields and
    after the contact changed; without a request_id the repeat is a new call."""
    tag = f"r{uuid.uuid4().hex[:8]}"
    request = cs.CreateContactRequest(
        contact=cs.Contact(email=f"{tag}-main@example.org"), request_id=f"{tag}-1"
    )
    first = stub.CreateContact(request)
    assert first.name.startswith("contacts/c")
    stub.UpdateContact(
        cs.UpdateContactRequest(
            contact=cs.Contact(name=first.name, phone="+12025550113"),
            update_mask=field_mask_pb2.FieldMask(paths=["phone"]),
        )
    )
    again = stub.CreateContact(
        cs.CreateContactRequest(contact=cs.Contact(email=f"{tag}-other@example.org"), request_id=f"{tag}-1")
    )
    assert again == first
    assert _emails_like(stub, tag) == {f"{tag}-main@example.org"}
    with pytest.raises(grpc.RpcError) as caught:
        stub.CreateContact(cs.CreateContactRequest(contact=cs.Contact(email=f"{tag}-main@example.org")))
    assert failure(caught.value).reason == "EMAIL_IN_USE"
    # A request_id that failed stores nothing: it runs again once the conflict is gone.
    with pytest.raises(grpc.RpcError):
        stub.CreateContact(
            cs.CreateContactRequest(
                contact=cs.Contact(email=f"{tag}-main@example.org"), request_id=f"{tag}-2"
            )
        )
    stub.DeleteContact(cs.DeleteContactRequest(name=first.name))
    second = stub.CreateContact(
        cs.CreateContactRequest(contact=cs.Contact(email=f"{tag}-main@example.org"), request_id=f"{tag}-2")
    )
    assert second.name != first.name


def test_an_invalid_repeat_is_refused_before_the_stored_answer(stub: cs_grpc.ContactServiceStub) -> None:
    """A repeat whose fields are malformed gets INVALID_ARGUMENT, not the stored answer."""
    tag = f"v{uuid.uuid4().hex[:8]}"
    stub.CreateContact(
        cs.CreateContactRequest(contact=cs.Contact(email=f"{tag}@example.org"), request_id=tag)
    )
    with pytest.raises(grpc.RpcError) as caught:
        stub.CreateContact(cs.CreateContactRequest(contact=cs.Contact(email="not-an-email"), request_id=tag))
    assert failure(caught.value).fields == ["contact.email"]


def _import_workers(pid: int) -> set[int]:
    """The daemon's child processes that are multiprocessing workers (import normalisation)."""
    found: set[int] = set()
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            with contextlib.suppress(OSError):
                if b"multiprocessing" in pathlib.Path(f"/proc/{child}/cmdline").read_bytes():
                    found.add(int(child))
    return found


def _alive(pid: int) -> bool:
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_import_workers_end_with_a_killed_daemon(tmp_path: pathlib.Path) -> None:
    """A daemon killed with SIGKILL leaves no import worker process behind: each ends within seconds."""
    process = DaemonProcess(tmp_path, CONFIG)
    process.start()
    try:
        with process.channel() as channel:
            stub = cs_grpc.ContactServiceStub(channel)
            stub.ImportContacts(_stream(_fillers("orphan", 3000)), timeout=60)
        assert process.proc is not None
        deadline = time.monotonic() + 30
        workers = _import_workers(process.proc.pid)
        while not workers and time.monotonic() < deadline:
            time.sleep(0.2)
            workers = _import_workers(process.proc.pid)
        assert workers, "the import started no worker process"
        process.signal(signal.SIGKILL)
        process.wait(10)
        deadline = time.monotonic() + 10
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = {w: pathlib.Path(f"/proc/{w}/cmdline").read_bytes()[:120] for w in workers if _alive(w)}
        assert not left, f"import workers outlived their daemon: {left}"
    finally:
        process.cleanup()
