"""The segment filter language: parse trees, precedence, errors with their positions, limits."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaignd.audience.filters import (
    MAX_DEPTH,
    MAX_IN_VALUES,
    MAX_LENGTH,
    MAX_TERMS,
    And,
    Compare,
    Field,
    Filter,
    FilterError,
    Has,
    In,
    Node,
    Not,
    Or,
    Present,
    fields,
    parse,
    unparse,
)

EMAIL = Field("email")
A, B, C = (Compare(Field("attributes", (k,)), "=", 1) for k in "abc")


def tree(text: str) -> Node | None:
    return parse(text).ast


def outcome(text: str) -> Filter | FilterError:
    try:
        return parse(text)
    except FilterError as raised:
        return raised


def error(text: str) -> FilterError:
    with pytest.raises(FilterError) as caught:
        parse(text)
    return caught.value


def test_fields_lists_the_columns_and_attributes() -> None:
    """fields() names every column a filter may use, then the attribute form."""
    assert fields() == [
        "contact_id",
        "email",
        "phone",
        "time_zone",
        "create_time",
        "update_time",
        "attributes.<key>",
    ]


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_filter_matches_everyone(text: str) -> None:
    """Empty or blank text parses to no tree, which compiles to 'every contact'."""
    assert tree(text) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('email = "a@example.org"', Compare(EMAIL, "=", "a@example.org")),
        ('email!="x"', Compare(EMAIL, "!=", "x")),
        ('phone >= "+44"', Compare(Field("phone"), ">=", "+44")),
        ('contact_id < "m"', Compare(Field("contact_id"), "<", "m")),
        ('time_zone <= "Europe/Paris"', Compare(Field("time_zone"), "<=", "Europe/Paris")),
        ("attributes.age > 30", Compare(Field("attributes", ("age",)), ">", 30)),
        ("attributes.score <= -1.5", Compare(Field("attributes", ("score",)), "<=", -1.5)),
        ("attributes.big = 2.5e10", Compare(Field("attributes", ("big",)), "=", 2.5e10)),
        ("attributes.vip = true", Compare(Field("attributes", ("vip",)), "=", True)),
        ("attributes.vip != false", Compare(Field("attributes", ("vip",)), "!=", False)),
        ('attributes.a.b.c = "x"', Compare(Field("attributes", ("a", "b", "c")), "=", "x")),
        ('attributes.AND = "x"', Compare(Field("attributes", ("AND",)), "=", "x")),
        ('attributes.tags:"vip"', Has(Field("attributes", ("tags",)), "vip")),
        ("attributes.tags : 3", Has(Field("attributes", ("tags",)), 3)),
        ("attributes.x:*", Present(Field("attributes", ("x",)))),
        ("email:*", Present(EMAIL)),
        ('email IN ("a", "b")', In(EMAIL, ("a", "b"))),
        ('attributes.n IN (1, "one", true)', In(Field("attributes", ("n",)), (1, "one", True))),
        ('email = "Bob@Example.ORG"', Compare(EMAIL, "=", "bob@example.org")),
        ('email = "*@example.org"', Compare(EMAIL, "=", "*@example.org")),
        (r'attributes.q = "say \"hi\" \\ bye"', Compare(Field("attributes", ("q",)), "=", 'say "hi" \\ bye')),
        (
            'create_time > "2024-05-01T12:30:00Z"',
            Compare(Field("create_time"), ">", dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.UTC)),
        ),
        (
            'update_time = "2024-05-01t14:30:00.5+02:00"',
            Compare(Field("update_time"), "=", dt.datetime(2024, 5, 1, 12, 30, 0, 500000, tzinfo=dt.UTC)),
        ),
    ],
)
def test_restrictions_parse_to_typed_nodes(text: str, expected: Node) -> None:
    """Each comparison form parses to its node, with the value converted to the field's type."""
    assert tree(text) == expected


def test_number_literals_keep_their_python_type() -> None:
    """Integers stay int, decimals and exponents become float, booleans stay bool."""
    values = [tree(f"attributes.x = {text}") for text in ("3", "-3", "3.0", "1e3", "true")]
    assert [type(node.value) for node in values if isinstance(node, Compare)] == [
        int,
        int,
        float,
        float,
        bool,
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("attributes.a = 1 AND attributes.b = 1 OR attributes.c = 1", Or((And((A, B)), C))),
        ("attributes.a = 1 OR attributes.b = 1 AND attributes.c = 1", Or((A, And((B, C))))),
        ("attributes.a = 1 AND (attributes.b = 1 OR attributes.c = 1)", And((A, Or((B, C))))),
        ("attributes.a = 1 attributes.b = 1 OR attributes.c = 1", Or((And((A, B)), C))),
        ("attributes.a = 1 OR attributes.b = 1 OR attributes.c = 1", Or((A, B, C))),
        ("attributes.a = 1 AND attributes.b = 1 AND attributes.c = 1", And((A, B, C))),
        ("NOT attributes.a = 1 AND attributes.b = 1", And((Not(A), B))),
        ("-attributes.a = 1 attributes.b = 1", And((Not(A), B))),
        ("NOT (attributes.a = 1 OR attributes.b = 1)", Not(Or((A, B)))),
        ("NOT NOT attributes.a = 1", Not(Not(A))),
        ("((attributes.a = 1))", A),
        ("attributes.a = 1 OR (attributes.b = 1 OR attributes.c = 1)", Or((A, Or((B, C))))),
    ],
)
def test_precedence_and_grouping(text: str, expected: Node) -> None:
    """AND (explicit or implicit) binds tighter than OR; NOT binds to one term; parentheses group."""
    assert tree(text) == expected


@pytest.mark.parametrize(
    ("text", "position", "message"),
    [
        ('foo = "x"', 0, "unknown field 'foo' at 0; fields are contact_id, email, phone, time_zone,"),
        ('email = "a" or phone = "b"', 12, "unknown field 'or' at 12; fields are"),
        ('email = "a" or phone = "b"', 12, "write the operator in capitals: OR"),
        ("email = ", 8, "expected a value after '=' at 8, found the end of the filter"),
        ("email = foo", 8, "expected a value after '=' at 8, found 'foo'"),
        ("attributes.n = - 1", 15, "expected a value after '=' at 15, found '-'"),
        ('email = "abc', 8, "unterminated string at 8"),
        ('email = "abc\\', 8, "unterminated string at 8"),
        (r'email = "a\nb"', 10, r"unknown escape '\n' at 10"),
        ("email = 'x'", 8, 'unexpected character "\'" at 8; strings use double quotes'),
        ('email = "a" && phone = "b"', 12, "unexpected character '&' at 12; write AND"),
        ('email == "x"', 6, "unknown operator '==' at 6; operators are = != < <= > >= : IN"),
        ('email <> "x"', 6, "unknown operator '<>' at 6"),
        ('email ~ "x"', 6, "unknown operator '~' at 6"),
        ('email "x"', 6, "expected an operator after 'email' at 6, found '\"x\"'"),
        ('email IN "x"', 9, "expected '(' after 'IN' at 9"),
        ('email IN ("a" "b")', 14, "expected ',' or ')' in IN at 14"),
        ("email IN ()", 10, "expected a value after '(' at 10, found ')'"),
        ('(email = "a"', 0, "unbalanced '(' at 0: no matching ')'"),
        ('email = "a")', 11, "unbalanced ')' at 11"),
        ("()", 1, "expected a field at 1, found ')'"),
        ('email = "a" AND', 15, "expected a field at 15, found the end of the filter"),
        ('OR email = "a"', 0, "unknown field 'OR' at 0"),
        ('"x" = email', 0, "expected a field at 0, found '\"x\"'"),
        ("email > 3", 8, "field 'email' holds text; compare it with a quoted string at 8"),
        ("phone IN (1)", 10, "field 'phone' holds text"),
        ("contact_id = true", 13, "field 'contact_id' holds text"),
        ("create_time > 5", 14, "field 'create_time' holds a timestamp; write an RFC 3339 timestamp"),
        ('create_time > "yesterday"', 14, "field 'create_time' holds a timestamp"),
        ('update_time < "2024-05-01"', 14, "holds a timestamp"),
        ('create_time > "2024-05-01T00:00:00"', 14, "holds a timestamp"),
        ('create_time > "2024-02-30T00:00:00Z"', 14, "invalid timestamp '2024-02-30T00:00:00Z' at 14"),
        ("attributes.vip > true", 17, "true and false compare only with = and != at 17"),
        ("attributes = 1", 0, "expected 'attributes.<key>' at 0"),
        ("attributes. = 1", 11, "invalid attribute key '' at 11"),
        ("attributes.a.9b = 1", 13, "invalid attribute key '9b' at 13; a key is 1-63 letters"),
        (f"attributes.{'k' * 64} = 1", 11, "invalid attribute key"),
        ("attributes.a.b.c.d = 1", 0, "attribute path at 0 is deeper than 3"),
        ("email.domain = 1", 0, "field 'email' at 0 has no sub-fields"),
        ("attributes.a'b = 1", 12, 'unexpected character "\'" at 12'),
        ("attributes.n = 3abc", 15, "invalid number '3abc' at 15"),
        ("attributes.n = 1.2.3", 15, "invalid number '1.2.3' at 15"),
        ("attributes.n = 1e999", 15, "number out of range at 15"),
        (f"attributes.n = {'9' * 19}", 15, "number out of range at 15"),
        ("attributes.n = 1\x00", 16, "NUL or unpaired surrogate at 16"),
        ('email = "\ud800"', 9, "NUL or unpaired surrogate at 9"),
        ("NOT", 3, "expected a field at 3, found the end of the filter"),
        ("email:", 6, "expected a value after ':' at 6"),
    ],
)
def test_errors_name_the_position_and_the_problem(text: str, position: int, message: str) -> None:
    """Each malformed filter raises FilterError at the offending offset, with a precise message."""
    raised = error(text)
    assert raised.position == position
    assert message in str(raised)
    assert raised.message == str(raised)


def test_filter_error_is_a_value_error() -> None:
    """FilterError is a ValueError, so generic input validation can catch it."""
    assert isinstance(error("?"), ValueError)


def test_length_limit() -> None:
    """Text of MAX_LENGTH characters is accepted; one more is refused at that offset."""
    padding = " " * (MAX_LENGTH - len("email:*"))
    assert tree("email:*" + padding) == Present(EMAIL)
    assert error("email:*" + padding + " ").position == MAX_LENGTH


def test_term_limit() -> None:
    """MAX_TERMS restrictions are accepted; the next one is refused where it starts."""
    term = "attributes.a = 1"
    assert isinstance(tree(" OR ".join([term] * MAX_TERMS)), Or)
    raised = error(" OR ".join([term] * (MAX_TERMS + 1)))
    assert raised.position == MAX_TERMS * len(term + " OR ")
    assert f"more than {MAX_TERMS} terms" in raised.message


@pytest.mark.parametrize("opener", ["(", "NOT ", "-"])
def test_depth_limit(opener: str) -> None:
    """MAX_DEPTH levels of parentheses or negation are accepted; one more is refused at its start."""
    closer = ")" if opener == "(" else ""
    assert tree(opener * MAX_DEPTH + "email:*" + closer * MAX_DEPTH) is not None
    raised = error(opener * (MAX_DEPTH + 1) + "email:*" + closer * (MAX_DEPTH + 1))
    assert raised.position == MAX_DEPTH * len(opener)
    assert f"deeper than {MAX_DEPTH} levels" in raised.message


def test_in_value_limit() -> None:
    """IN takes MAX_IN_VALUES values; the next one is refused where it starts."""
    values = ", ".join(["1"] * MAX_IN_VALUES)
    node = tree(f"attributes.n IN ({values})")
    assert isinstance(node, In)
    assert len(node.values) == MAX_IN_VALUES
    raised = error(f"attributes.n IN ({values}, 2)")
    assert raised.position == len(f"attributes.n IN ({values}, ")


@pytest.mark.parametrize(
    "text",
    [
        'email = "*@example.org" AND NOT attributes.tags:"vip" OR (phone:* -time_zone:*)',
        'attributes.q IN ("a \\"b\\"", -2, 2.5, false) AND create_time >= "2024-01-01T00:00:00+02:00"',
        "NOT (attributes.a = 1 OR attributes.b = 1) AND (attributes.c = 1 AND attributes.d.e = 1)",
        "attributes.a = 1 OR (attributes.b = 1 OR attributes.c = 1)",
    ],
)
def test_unparse_round_trips(text: str) -> None:
    """unparse gives text that parses back to the same tree, and is stable when repeated."""
    first = unparse(tree(text))
    assert tree(first) == tree(text)
    assert unparse(tree(first)) == first


@settings(max_examples=500)
@given(st.text(max_size=300))
def test_arbitrary_text_raises_only_filter_error(text: str) -> None:
    """Any text either parses or raises FilterError at an offset inside it, never another exception."""
    result = outcome(text)
    assert isinstance(result, Filter) or 0 <= result.position <= len(text)


_PIECES = st.sampled_from(
    [
        "email", "attributes.a", "attributes.b.c", "create_time", "AND", "OR", "NOT", "IN", "-", "(", ")",
        ",", ":", "*", "=", "!=", "<", ">=", '"x"', '"*y"', '"2024-01-01T00:00:00Z"', "1", "-2", "3.5",
        "true", " ", "\\", '"', "==", "1e5",
    ]
)  # fmt: skip


@settings(max_examples=1000)
@given(st.lists(_PIECES, max_size=40).map(" ".join))
def test_token_soup_raises_only_filter_error(text: str) -> None:
    """Sequences of real tokens either parse or raise FilterError, and what parses round-trips."""
    result = outcome(text)
    if isinstance(result, Filter):
        assert tree(unparse(result.ast)) == result.ast
    else:
        assert 0 <= result.position <= len(text)


_KEYS = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
_FIELDS = st.one_of(
    st.sampled_from([Field(name) for name in ("contact_id", "email", "phone", "time_zone")]),
    st.lists(_KEYS, min_size=1, max_size=3).map(lambda keys: Field("attributes", tuple(keys))),
)
_SCALARS = st.one_of(
    st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=8),
    st.integers(-(10**15), 10**15),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
)


def _restriction(field: Field, op: str, value: str | int | float | bool) -> Node:
    if not field.keys:
        value = str(value).lower() if field.name == "email" else str(value)
    elif isinstance(value, bool) and op in ("<", "<=", ">", ">="):
        op = "="
    return Compare(field, op, value)


_TERMS = st.one_of(
    st.builds(_restriction, _FIELDS, st.sampled_from(["=", "!=", "<", "<=", ">", ">="]), _SCALARS),
    st.builds(Present, _FIELDS),
    st.builds(
        Has,
        st.lists(_KEYS, min_size=1, max_size=3).map(lambda keys: Field("attributes", tuple(keys))),
        _SCALARS,
    ),
)
_TREES = st.recursive(
    _TERMS,
    lambda children: st.one_of(
        st.builds(Not, children),
        st.lists(children, min_size=2, max_size=3).map(lambda operands: And(tuple(operands))),
        st.lists(children, min_size=2, max_size=3).map(lambda operands: Or(tuple(operands))),
    ),
    max_leaves=8,
)


@settings(max_examples=300)
@given(_TREES)
def test_generated_trees_round_trip(node: Node) -> None:
    """Any well-formed tree survives unparse then parse unchanged."""
    assert tree(unparse(node)) == node
