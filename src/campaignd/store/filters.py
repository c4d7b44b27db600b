"""Segment filters in SQL: the checked syntax tree of a filter and its WHERE clause on contacts.

`audience.filters.parse` turns filter text (docs/segments.md) into a `Filter`; `compile` turns
a `Filter` into a WHERE clause on the contacts table that runs the same on SQLite and
PostgreSQL (where attributes are `jsonb`). User text only ever reaches SQL as bound parameters.

Every compiled term is two-valued (true or false, never NULL), so `NOT` is the exact complement.
"""

from __future__ import annotations

import datetime as dt
import operator
import re
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

# --- The syntax tree -----------------------------------------------------------------------------

Value = str | int | float | bool | dt.datetime


@dataclass(frozen=True)
class Field:
    """A column of the contact (`keys` empty) or an attribute path (`name` "attributes")."""

    name: str
    keys: tuple[str, ...] = ()

    def __str__(self) -> str:
        return ".".join((self.name, *self.keys))


@dataclass(frozen=True)
class Compare:
    """`field op value`; a string value of `=`/`!=` with a leading or trailing `*` is a pattern."""

    field: Field
    op: str
    value: Value


@dataclass(frozen=True)
class Has:
    """`field:value`: the field equals the value, or is a list with an element equal to it."""

    field: Field
    value: Value


@dataclass(frozen=True)
class Present:
    """`field:*`: the field is set (not NULL; for an attribute, present and not JSON null)."""

    field: Field


@dataclass(frozen=True)
class In:
    """`field IN (v, ...)`: the field equals one of the values."""

    field: Field
    values: tuple[Value, ...]


@dataclass(frozen=True)
class Not:
    """`NOT operand` or `-operand`: every contact the operand does not select."""

    operand: Node


@dataclass(frozen=True)
class And:
    """`a AND b ...`, also written `a b ...`."""

    operands: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    """`a OR b ...`."""

    operands: tuple[Node, ...]


Node = Compare | Has | Present | In | Not | And | Or

OPERATORS = ("=", "!=", "<", "<=", ">", ">=")
"""The comparisons a `Compare` may hold."""


@dataclass(frozen=True)
class Filter:
    """A parsed and validated filter; `ast` is None for the empty filter, which matches everyone."""

    text: str
    ast: Node | None


# --- Compiling -----------------------------------------------------------------------------------

_OPERATORS = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
# The JSON types of SQLite's json_type() and PostgreSQL's jsonb_typeof() for each kind of value.
_SQLITE_TYPES = {
    "number": ("integer", "real"),
    "string": ("text",),
    "boolean": ("true", "false"),
    "present": ("integer", "real", "text", "true", "false", "array", "object"),
}
_POSTGRESQL_TYPES = {
    "number": ("number",),
    "string": ("string",),
    "boolean": ("boolean",),
    "present": ("number", "string", "boolean", "array", "object"),
}


class _ByDialect(FunctionElement[bool]):
    """One of two equivalent conditions, the SQLite or the PostgreSQL one, chosen when compiled."""

    type = sa.Boolean()
    inherit_cache = True  # both forms are its arguments, so both are in its cache key
    name = "by_dialect"


@compiles(_ByDialect)
def _compile_by_dialect(element: _ByDialect, compiler: SQLCompiler, **kw: Any) -> str:
    sqlite_form, postgresql_form = element.clauses.clauses
    forms = {"sqlite": sqlite_form, "postgresql": postgresql_form}
    if compiler.dialect.name not in forms:
        raise sa.exc.CompileError(f"segment filters do not support {compiler.dialect.name}")
    return f"({compiler.process(forms[compiler.dialect.name], **kw)})"


def compile(f: Filter, table: sa.Table) -> sa.ColumnElement[bool]:
    """A WHERE clause on `table` (the contacts table) selecting the contacts `f` matches."""
    return sa.true() if f.ast is None else _compile(f.ast, table)


def _compile(node: Node, table: sa.Table) -> sa.ColumnElement[bool]:
    match node:
        case And(operands):
            return sa.and_(*(_compile(operand, table) for operand in operands))
        case Or(operands):
            return sa.or_(*(_compile(operand, table) for operand in operands))
        case Not(operand):
            return sa.not_(_compile(operand, table))
        case Present(Field(name, ())):
            column = table.c[name]
            return column.is_not(None) if column.nullable else sa.true()
        case Present(Field(_, keys)):
            return _json_is(table.c.attributes, keys, "present")
        case Compare(field, op, value):
            return _compare(table, field, op, value, patterns=True)
        case Has(field, value):
            equal = _compare(table, field, "=", value, patterns=False)
            return (
                equal if not field.keys else sa.or_(equal, _list_has(table.c.attributes, field.keys, value))
            )
        case In(field, values):
            return _in(table, field, values)


def _compare(
    table: sa.Table, field: Field, op: str, value: Value, *, patterns: bool
) -> sa.ColumnElement[bool]:
    """`field op value`, false (never NULL) when the field is NULL, absent or of another type."""
    pattern = patterns and op in ("=", "!=") and isinstance(value, str) and "*" in (value[:1], value[-1:])
    if not field.keys:
        return _guarded(table.c[field.name], _condition(table.c[field.name], op, value, pattern))
    kind, target, value = _json_target(table.c.attributes, field.keys, value)
    typed = _typed(table.c.attributes, field.keys, kind, _condition(target, op, value, pattern))
    if op == "=" and not pattern and kind != "number":
        # jsonb containment compares type and value in one step, without extracting the
        # attribute (numbers keep the float comparison, as on SQLite).
        return _ByDialect(typed, _contains(table.c.attributes, field.keys, value))
    return typed


def _in(table: sa.Table, field: Field, values: tuple[Value, ...]) -> sa.ColumnElement[bool]:
    if not field.keys:
        return _guarded(table.c[field.name], table.c[field.name].in_(values))
    targets: dict[str, sa.ColumnElement[Any]] = {}
    by_kind: dict[str, list[Value]] = {}
    for value in values:
        kind, targets[kind], value = _json_target(table.c.attributes, field.keys, value)
        by_kind.setdefault(kind, []).append(value)
    return sa.or_(
        *(
            _typed(table.c.attributes, field.keys, kind, targets[kind].in_(same))
            for kind, same in by_kind.items()
        )
    )


def _guarded(column: sa.Column[Any], condition: sa.ColumnElement[bool]) -> sa.ColumnElement[bool]:
    return sa.and_(column.is_not(None), condition) if column.nullable else condition


def _json_target(
    attributes: sa.Column[Any], keys: tuple[str, ...], value: Value
) -> tuple[str, sa.ColumnElement[Any], Value]:
    """The kind of `value`, the attribute at `keys` read as that kind, and the value to bind."""
    json = attributes[keys]
    if isinstance(value, bool):
        return "boolean", json.as_boolean(), value
    if isinstance(value, int | float):
        return "number", json.as_float(), float(value)  # a float: PostgreSQL's INTEGER would overflow
    return "string", json.as_string(), value


def _typed(
    attributes: sa.Column[Any], keys: tuple[str, ...], kind: str, condition: sa.ColumnElement[bool]
) -> sa.ColumnElement[bool]:
    # CASE, not AND: PostgreSQL may evaluate either side of an AND first, and the cast would fail.
    return sa.case((_json_is(attributes, keys, kind), condition), else_=sa.false())


def _condition(target: sa.ColumnElement[Any], op: str, value: Value, pattern: bool) -> sa.ColumnElement[bool]:
    if pattern:
        assert isinstance(value, str)
        matched = _like(target, value)
        return sa.not_(matched) if op == "!=" else matched
    if isinstance(value, str) and op not in ("=", "!="):
        # Order text by code point on both databases, whatever PostgreSQL's default collation.
        return _ByDialect(_operate(target, op, value), _operate(sa.collate(target, "C"), op, value))
    return _operate(target, op, value)


def _operate(left: sa.ColumnElement[Any], op: str, right: Any) -> sa.ColumnElement[bool]:
    result: sa.ColumnElement[bool] = _OPERATORS[op](left, right)
    return result


def _like(target: sa.ColumnElement[Any], value: str) -> sa.ColumnElement[bool]:
    """A case-sensitive match of `*`-ended `value`: GLOB on SQLite (its LIKE ignores case), else LIKE."""
    head, tail = value.startswith("*"), value.endswith("*") and len(value) > 1
    middle = value[head : len(value) - tail]
    glob = re.sub(r"([*?\[])", r"[\1]", middle)
    like = re.sub(r"([%_\\])", r"\\\1", middle)
    return _ByDialect(
        target.op("GLOB")("*" * head + glob + "*" * tail),
        target.like("%" * head + like + "%" * tail, escape="\\"),
    )


def _json_is(attributes: sa.ColumnElement[Any], keys: tuple[str, ...], kind: str) -> sa.ColumnElement[bool]:
    """Whether the attribute at `keys` holds a value of `kind`; false when it is absent."""
    path = sa.bindparam(None, keys, type_=sa.JSON.JSONPathType())
    return _ByDialect(
        sa.func.coalesce(sa.func.json_type(attributes, path), "").in_(_SQLITE_TYPES[kind]),
        sa.func.coalesce(sa.func.jsonb_typeof(attributes[keys]), "").in_(_POSTGRESQL_TYPES[kind]),
    )


def _contains(attributes: sa.ColumnElement[Any], keys: tuple[str, ...], value: Any) -> sa.ColumnElement[bool]:
    """PostgreSQL: whether the jsonb attributes hold `value` at `keys` (`@>`, never NULL). Inside
    an object, a list contains only a list and a scalar only an equal scalar of the same type."""
    document = value
    for key in reversed(keys):
        document = {key: document}
    return attributes.bool_op("@>")(sa.bindparam(None, document, type_=JSONB()))


def _list_has(
    attributes: sa.ColumnElement[Any], keys: tuple[str, ...], value: Value
) -> sa.ColumnElement[bool]:
    """Whether the attribute at `keys` is a list with an element equal to `value` (of its type)."""
    element: int | float | str
    if isinstance(value, bool):
        kind, element = "boolean", int(value)  # json_each gives true and false as 1 and 0
    elif isinstance(value, int | float):
        kind, element = "number", float(value)
    else:
        kind, element = "string", str(value)
    path = sa.bindparam(None, keys, type_=sa.JSON.JSONPathType())
    items = sa.func.json_each(attributes, path).table_valued("type", "value")
    sqlite_form = sa.and_(
        sa.func.json_type(attributes, path) == "array",
        sa.exists().where(items.c.type.in_(_SQLITE_TYPES[kind]), items.c.value == element),
    )
    # jsonb's @> compares typed values; a list argument makes a scalar attribute never match.
    return _ByDialect(sqlite_form, _contains(attributes, keys, [value]))
