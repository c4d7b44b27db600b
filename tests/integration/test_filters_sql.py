"""Segment filters compiled to SQL and run on a real SQLite file and a real PostgreSQL database."""

from __future__ import annotations

import datetime as dt
import pathlib
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.dialects import postgresql

from campaignd.audience.filters import FilterError, parse
from campaignd.store.db import UTCDateTime, create_engine
from campaignd.store.filters import compile
from campaignd.store.schema import Address, Phone

metadata = sa.MetaData()
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
contacts = sa.Table(
    "contacts",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("contact_id", sa.String(63), nullable=False, unique=True),
    # As in campaignd.store.schema: addresses in byte order and attributes as jsonb on PostgreSQL,
    # which the compiled filters expect there.
    sa.Column("email", Address),
    sa.Column("phone", Phone),
    sa.Column("time_zone", sa.String(64)),
    sa.Column("attributes", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
    sa.Column("create_time", UTCDateTime, nullable=False),
    sa.Column("update_time", UTCDateTime, nullable=False),
)

DROP = "'); DROP TABLE contacts; --"
# contact_id, email, phone, time_zone, attributes, created (UTC midnight)
CONTACTS: list[tuple[str, str | None, str | None, str | None, dict[str, Any], str]] = [
    ("c01", "alice@example.org", "+14155550101", "America/Los_Angeles",
     {"age": 30, "tier": "gold", "tags": ["vip", "beta"], "vip": True, "score": 9.5,
      "address": {"city": "Paris", "geo": {"country": "FR"}}}, "2023-03-01"),
    ("c02", "bob@example.org", "+14155550102", "Europe/Paris",
     {"age": "thirty", "tier": "silver", "tags": ["beta"], "vip": False, "score": 7}, "2023-06-15"),
    ("c03", "carol@example.com", None, None,
     {"age": 41, "tags": [], "vip": "true", "score": -1.5}, "2023-09-30"),
    ("c04", "dave@sub.example.org", "+447700900004", "Europe/London",
     {"age": 30.0, "tier": "Gold", "tags": "vip", "nickname": None}, "2024-01-01"),
    ("c05", None, "+33612345605", "Europe/Paris",
     {"age": 17, "tags": ["VIP", 3, True], "tier": None}, "2024-02-29"),
    ("c06", "erin@example.net", None, "UTC", {}, "2024-03-10"),
    ("c07", "frank_x@example.org", None, None, {"note": "50% off"}, "2024-04-01"),
    ("c08", "frankxx@example.org", None, None, {"note": "50 percent off"}, "2024-04-02"),
    ("c09", "frank%y@example.org", None, None, {"note": "a_b\\c"}, "2024-04-03"),
    ("c10", "gina@example.org", "+15551234567", "America/New_York", {"tags": [1, 2.5, "2"]}, "2024-05-05"),
    ("c11", "hank@example.org", None, None, {"age": True}, "2024-06-01"),
    ("c12", "ivy@example.org", None, None, {"age": [30]}, "2024-06-02"),
    ("c13", "jack@example.org", None, None, {"age": {"years": 30}}, "2024-06-03"),
    ("c14", "o'brien@example.org", None, None, {"tier": "gold", "age": 29}, "2024-07-04"),
    ("c15", "kim@example.org", "+819012345678", "Asia/Tokyo", {"name": "Zoë", "score": 1e10}, "2024-08-08"),
    ("c16", "lee@example.org", None, None, {"name": "zoe", "score": 0}, "2024-09-09"),
    ("c17", "mia@example.org", None, None, {"name": "Émile", "city": "Paris"}, "2024-10-10"),
    ("c18", "ned@example.org", None, None, {"address": {"city": "Lyon"}}, "2024-11-11"),
    ("c19", None, None, None, {"tier": "bronze"}, "2024-12-12"),
    ("c20", "oscar@example.org", None, None, {"tags": [["vip"]]}, "2025-01-01"),
    ("c21", "pat@example.org", None, None, {"tags": {"vip": True}}, "2025-01-02"),
    ("c22", "quinn@example.org", None, None, {"age": 1000000, "vip": True}, "2025-01-03"),
    ("c23", "rae@example.org", None, None, {"x": DROP}, "2025-01-04"),
    ("c24", "sam@example.org", None, None, {"level": 3, "tags": ["vip"]}, "2025-02-01"),
    ("c25", "tess@example.org", "+14155550125", "America/Los_Angeles",
     {"level": 3.5, "vip": True, "tier": "gold"}, "2025-03-01"),
    ("c26", "uma@example.org", None, "Europe/Paris", {"level": -2}, "2025-04-01"),
    ("c27", "vic@example.org", None, None, {"level": "3"}, "2025-05-01"),
    ("c28", "wes@example.org", None, None, {"a": {"b": {"c": 1}}}, "2025-06-01"),
    ("c29", "xan@example.org", None, None, {"a": {"b": {"c": "1"}}}, "2025-07-01"),
    ("c30", "yul@example.org", None, None, {"a": [1, 2]}, "2025-08-01"),
    ("c31", "zed@example.org", None, None, {"address": [{"city": "Paris"}]}, "2025-09-01"),
]  # fmt: skip
ALL = frozenset(row[0] for row in CONTACTS)
NO_EMAIL_OR_NOT_EXAMPLE_ORG = {"c03", "c04", "c05", "c06", "c19"}

# Each filter and exactly the contacts it selects, on both databases.
CASES: list[tuple[str, set[str]]] = [
    ("", set(ALL)),
    ("attributes.age = 30", {"c01", "c04"}),  # not "thirty", true, [30] or {"years": 30}
    ("attributes.age:30", {"c01", "c04", "c12"}),
    ("attributes.age > 29", {"c01", "c03", "c04", "c22"}),
    ("attributes.age >= 29 AND attributes.age < 41", {"c01", "c04", "c14"}),
    ('attributes.age = "thirty"', {"c02"}),
    ('attributes.tags:"vip"', {"c01", "c04", "c24"}),  # not "VIP", [["vip"]] or {"vip": true}
    ("attributes.tags:3 OR attributes.tags:2.5", {"c05", "c10"}),
    ("attributes.tags:2", set()),  # c10 holds "2", a string
    ('attributes.tags = "vip"', {"c04"}),
    ("attributes.tags:*", {"c01", "c02", "c03", "c04", "c05", "c10", "c20", "c21", "c24"}),
    ("attributes.tier:*", {"c01", "c02", "c04", "c14", "c19", "c25"}),  # c05's tier is null
    ("attributes.nickname:* OR attributes.missing:*", set()),
    ('email = "*@example.org"', set(ALL - NO_EMAIL_OR_NOT_EXAMPLE_ORG)),
    ('email = "*EXAMPLE.NET"', {"c06"}),  # emails are compared lower-cased
    ('email = "frank_*"', {"c07"}),  # _ is not a wildcard
    ('email = "frank%*"', {"c09"}),  # nor is %
    ('attributes.note = "*% off"', {"c07"}),
    (r'attributes.note = "*\\c" OR attributes.note = "a_*"', {"c09"}),
    ('attributes.tier = "G*"', {"c04"}),  # patterns are case-sensitive on both databases
    ('attributes.tier != "g*"', {"c02", "c04", "c19"}),
    ('attributes.name < "a"', {"c15"}),  # code point order: "Zoë" < "a" < "zoe" < "Émile"
    ('time_zone = "Europe/Paris" OR phone = "+1*"', {"c01", "c02", "c05", "c10", "c25", "c26"}),
    ("NOT email:*", {"c05", "c19"}),
    ('email != "alice@example.org" AND create_time < "2023-12-31T00:00:00Z"', {"c02", "c03"}),
    ('create_time < "2023-06-15T01:00:00+01:00"', {"c01"}),
    ('create_time = "2023-06-15T02:00:00+02:00"', {"c02"}),
    ('create_time >= "2025-01-01T00:00:00Z" AND update_time < "2025-02-01T00:00:00Z"',
     {"c20", "c21", "c22", "c23"}),
    ("attributes.vip = true", {"c01", "c22", "c25"}),  # not the string "true"
    ("attributes.vip != true", {"c02"}),
    ('attributes.level IN (3, "3", -2)', {"c24", "c26", "c27"}),
    ("attributes.a.b.c = 1", {"c28"}),
    ('attributes.a.b.c = "1"', {"c29"}),
    ("attributes.a.b.c:* OR attributes.a.b:1", {"c28", "c29"}),
    ('attributes.address.city = "Paris" OR attributes.city = "Paris"', {"c01", "c17"}),  # not c31's list
    ('attributes.address.city:"Paris"', {"c01"}),
    ("attributes.score > 5 AND attributes.score != 1e10", {"c01", "c02"}),
    ("attributes.score = 0", {"c16"}),
    ('contact_id IN ("c01", "c30", "nope")', {"c01", "c30"}),
    ('(attributes.tier = "gold" OR attributes.tier = "silver") -attributes.vip = true', {"c02", "c14"}),
    ("email = \"o'brien@example.org\"", {"c14"}),
    ("phone:*", {"c01", "c02", "c04", "c05", "c10", "c15", "c25"}),
    ("attributes.missing != 1", set()),  # != needs the field to be there
    ("NOT attributes.missing = 1", set(ALL)),
]  # fmt: skip


def _row(
    contact_id: str,
    email: str | None,
    phone: str | None,
    zone: str | None,
    attributes: dict[str, Any],
    created: str,
) -> dict[str, Any]:
    create_time = dt.datetime.fromisoformat(created).replace(tzinfo=dt.UTC)
    return {
        "contact_id": contact_id,
        "email": email,
        "phone": phone,
        "time_zone": zone,
        "attributes": attributes,
        "create_time": create_time,
        "update_time": create_time + dt.timedelta(hours=1),
    }


def _filled(database_url: str) -> sa.Engine:
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(contacts.insert(), [_row(*contact) for contact in CONTACTS])
    return engine


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    """A database with the contacts table and the contacts above."""
    engine = _filled(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def both(pg_url: str, tmp_path: pathlib.Path) -> Iterator[tuple[sa.Engine, sa.Engine]]:
    """A SQLite and a PostgreSQL database, each with the contacts above."""
    sqlite, postgresql = _filled(f"sqlite:///{tmp_path}/campaignd.db"), _filled(pg_url)
    yield sqlite, postgresql
    sqlite.dispose()
    postgresql.dispose()


def matching(engine: sa.Engine, text: str, *, negate: bool = False) -> set[str]:
    where = compile(parse(text), contacts)
    with engine.connect() as conn:
        query = sa.select(contacts.c.contact_id).where(sa.not_(where) if negate else where)
        return set(conn.scalars(query))


def test_filters_select_exactly_the_expected_contacts(engine: sa.Engine) -> None:
    """Every filter in CASES selects exactly its contacts, and its NOT selects exactly the others."""
    wrong = {}
    for text, expected in CASES:
        found, complement = matching(engine, text), matching(engine, text, negate=True)
        if found != expected or complement != ALL - expected:
            wrong[text] = {
                "missing": expected - found,
                "extra": found - expected,
                "complement wrong": complement ^ (ALL - expected),
            }
    assert wrong == {}


@pytest.mark.parametrize("op", ["=", "!=", "<", "<=", ">", ">="])
def test_attributes_of_another_json_type_never_match_or_fail(engine: sa.Engine, op: str) -> None:
    """Comparing attributes.age (number, string, bool, list, object, absent) never raises in SQL."""
    numbers = {"c01", "c03", "c04", "c05", "c14", "c22"}
    found = matching(engine, f"attributes.age {op} 30") | matching(engine, f'attributes.age {op} "thirty"')
    if op in ("=", "!="):
        found |= matching(engine, f"attributes.age {op} true")
    assert found <= numbers | {"c02", "c11"}
    assert matching(engine, f"NOT attributes.age {op} 30") >= ALL - numbers


INJECTIONS_THAT_PARSE = [
    'email = "x\' OR 1=1 --"',
    'email = "\\" OR 1=1 --"',
    'contact_id = "c01\'; DELETE FROM contacts; --"',
    "attributes.x = \"' OR ''='\"",
    "attributes.__proto__ = 1",
    'attributes.sqlite_master:"x"',
    'phone IN ("1) OR (1=1", "x")',
]
INJECTIONS_THAT_DO_NOT_PARSE = [
    "attributes.a'b = 1",
    "attributes.x')) OR 1=1 -- = 1",
    "attributes.$.x = 1",
    'attributes."a" = 1',
    "attributes.a[0] = 1",
    "attributes.json_extract(attributes) = 1",
    'campaigns.id = "x"',
    "sqlite_master.name:*",
    'email = "x" OR 1=1',
    "email = 'x' OR '1'='1'",
    "attributes.x = 1; DROP TABLE contacts",
]


@pytest.mark.parametrize("text", INJECTIONS_THAT_DO_NOT_PARSE)
def test_injection_attempts_that_do_not_parse(text: str) -> None:
    """Text that tries to reach SQL through field names or bare SQL is refused by the parser."""
    with pytest.raises(FilterError):
        parse(text)


def test_injection_attempts_match_only_data_and_leave_the_table(engine: sa.Engine) -> None:
    """Quotes and SQL in values are only data: they match nothing, or the contact holding that text."""
    for text in INJECTIONS_THAT_PARSE:
        assert matching(engine, text) == set(), text
    assert matching(engine, f'attributes.x = "{DROP}"') == {"c23"}
    assert matching(engine, 'attributes.x = "*DROP TABLE*"') == {"c23"}
    with engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(contacts)) == len(CONTACTS)
        assert "contacts" in sa.inspect(conn).get_table_names()


@pytest.mark.parametrize("url", ["sqlite://", "postgresql+psycopg://"])
def test_compiled_sql_carries_no_user_text(url: str) -> None:
    """Values and attribute keys reach the database only as bound parameters, never in the SQL text."""
    text = (
        'attributes.secretkey.inner = "DROP TABLE" OR attributes.listkey:"OR 1=1" '
        'OR email = "*evil%_*" OR attributes.otherkey IN (12345, "sneaky") OR attributes.presentkey:*'
    )
    sql = str(
        sa.select(contacts.c.id)
        .where(compile(parse(text), contacts))
        .compile(dialect=sa.create_mock_engine(url, executor=print).dialect)
    )
    for fragment in (
        "secretkey",
        "inner",
        "listkey",
        "otherkey",
        "presentkey",
        "DROP",
        "1=1",
        "evil",
        "sneaky",
        "12345",
    ):
        assert fragment not in sql


def test_statement_cache_keeps_keys_and_values_apart(engine: sa.Engine) -> None:
    """Filters of the same shape but other keys or values reuse cached SQL with their own parameters."""
    assert matching(engine, "attributes.level = 3") == {"c24"}
    assert matching(engine, "attributes.score = 0") == {"c16"}
    assert matching(engine, 'attributes.tags:"beta"') == {"c01", "c02"}
    assert matching(engine, "attributes.tags:3") == {"c05"}
    assert matching(engine, "attributes.level = 3") == {"c24"}


_KEYS = [
    "age",
    "tags",
    "tier",
    "vip",
    "score",
    "level",
    "note",
    "name",
    "a.b.c",
    "a.b",
    "address.city",
    "missing",
]
_VALUES = [
    "30",
    "3",
    "-2",
    "2.5",
    "1e10",
    '"vip"',
    '"3"',
    '"gold"',
    '"G*"',
    '"*off"',
    '"thirty"',
    "true",
    "false",
]
_COLUMN_TERMS = ['email = "*.org"', "phone:*", 'time_zone < "F"', 'create_time > "2024-06-01T00:00:00Z"']
_TERMS = st.one_of(
    st.builds(
        "attributes.{} {} {}".format,
        st.sampled_from(_KEYS),
        st.sampled_from(["=", "!=", "<", ">="]),
        st.sampled_from(_VALUES),
    ),
    st.builds("attributes.{}:{}".format, st.sampled_from(_KEYS), st.sampled_from([*_VALUES, "*"])),
    st.builds(
        "attributes.{} IN ({}, {})".format,
        st.sampled_from(_KEYS),
        st.sampled_from(_VALUES),
        st.sampled_from(_VALUES),
    ),
    st.sampled_from(_COLUMN_TERMS),
)
_FILTERS = st.recursive(
    _TERMS,
    lambda inner: st.one_of(
        st.builds("NOT ({})".format, inner),
        st.builds("({}) AND ({})".format, inner, inner),
        st.builds("({}) OR ({})".format, inner, inner),
    ),
    max_leaves=6,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_FILTERS)
def test_any_valid_filter_runs_and_its_not_is_the_complement(engine: sa.Engine, text: str) -> None:
    """Generated filters run without SQL errors, and NOT selects exactly the contacts they do not."""
    try:
        parse(text)
    except FilterError:
        return  # e.g. a boolean with < ; the parser's own tests cover these
    found = matching(engine, text)
    assert matching(engine, text, negate=True) == ALL - found


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_FILTERS)
def test_any_valid_filter_selects_the_same_contacts_on_both_databases(
    both: tuple[sa.Engine, sa.Engine], text: str
) -> None:
    """SQLite's JSON text and PostgreSQL's jsonb give every generated filter the same contacts."""
    try:
        parse(text)
    except FilterError:
        return
    sqlite, postgresql = both
    assert matching(postgresql, text) == matching(sqlite, text)
