"""Segment filters: an AIP-160 subset over contact fields and attributes (docs/segments.md).

`parse` turns filter text into a validated `Filter` (its syntax tree is declared in
`store/filters.py`, which compiles it to SQL) or raises `FilterError` with the character offset of
the problem; `unparse` gives a tree's canonical text.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass

from campaignd.store.filters import (
    OPERATORS,
    And,
    Compare,
    Field,
    Filter,
    Has,
    In,
    Node,
    Not,
    Or,
    Present,
    Value,
)

__all__ = [
    "MAX_ATTRIBUTE_DEPTH",
    "MAX_DEPTH",
    "MAX_IN_VALUES",
    "MAX_LENGTH",
    "MAX_TERMS",
    "And",
    "Compare",
    "Field",
    "Filter",
    "FilterError",
    "Has",
    "In",
    "Node",
    "Not",
    "Or",
    "Present",
    "Value",
    "fields",
    "parse",
    "unparse",
]

MAX_LENGTH = 10_000
MAX_TERMS = 200
MAX_DEPTH = 20
MAX_IN_VALUES = 1000
MAX_ATTRIBUTE_DEPTH = 3

_COLUMNS = {
    "contact_id": "string",
    "email": "string",
    "phone": "string",
    "time_zone": "string",
    "create_time": "timestamp",
    "update_time": "timestamp",
}
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_NUMBER = re.compile(r"[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(\.\d{1,9})?([Zz]|[+-]\d\d:\d\d)", re.ASCII)
_FORBIDDEN = re.compile(r"[\x00\ud800-\udfff]")  # no database stores NUL; surrogates are not text
_EXAMPLE_TIME = '"2024-05-01T00:00:00Z"'


class FilterError(ValueError):
    """A filter that cannot be accepted: `position` is the 0-based character offset of the problem."""

    def __init__(self, position: int, message: str) -> None:
        super().__init__(position, message)
        self.position = position
        self.message = message

    def __str__(self) -> str:
        return self.message


def fields() -> list[str]:
    """The field names a filter may use."""
    return [*_COLUMNS, "attributes.<key>"]


# --- Tokens --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Token:
    kind: str  # name, number, string, op, one of ( ) , : * -, or end
    text: str
    pos: int
    value: str = ""  # a string's decoded contents


_LEXEME = re.compile(
    r"(?P<space>\s+)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]*)*)"
    r"|(?P<number>[0-9](?:[A-Za-z0-9_.]|(?<=[eE])[+-])*)"
    r"|(?P<op>[=!<>~]+)"
    r"|(?P<punct>[():,*-])"
)
_HINTS = {"'": "; strings use double quotes", "&": "; write AND", "|": "; write OR"}


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(text):
        if text[pos] == '"':
            token = _string(text, pos)
        else:
            match = _LEXEME.match(text, pos)
            if match is None:
                char = text[pos]
                raise FilterError(pos, f"unexpected character {char!r} at {pos}{_HINTS.get(char, '')}")
            kind = match.lastgroup or ""
            token = _Token(match[0] if kind == "punct" else kind, match[0], pos)
            if kind == "number" and not _NUMBER.fullmatch(match[0]):
                raise FilterError(pos, f"invalid number '{match[0]}' at {pos}")
            if kind == "op" and match[0] not in OPERATORS:
                raise FilterError(
                    pos, f"unknown operator '{match[0]}' at {pos}; operators are = != < <= > >= : IN"
                )
        if token.kind != "space":
            tokens.append(token)
        pos += len(token.text)
    tokens.append(_Token("end", "", len(text)))
    return tokens


def _string(text: str, start: int) -> _Token:
    chars: list[str] = []
    pos = start + 1
    while pos < len(text):
        char = text[pos]
        if char == '"':
            return _Token("string", text[start : pos + 1], start, "".join(chars))
        if char == "\\":
            escaped = text[pos + 1 : pos + 2]
            if not escaped:
                break
            if escaped not in ('"', "\\"):
                raise FilterError(pos, f"unknown escape '\\{escaped}' at {pos}; only \\\" and \\\\ exist")
            char, pos = escaped, pos + 1
        chars.append(char)
        pos += 1
    raise FilterError(start, f"unterminated string at {start}")


def _describe(token: _Token) -> str:
    return "the end of the filter" if token.kind == "end" else f"'{token.text}'"


# --- Parsing -------------------------------------------------------------------------------------


def parse(text: str) -> Filter:
    """Parse and validate filter text; raises FilterError. Empty or blank text matches everyone."""
    if len(text) > MAX_LENGTH:
        raise FilterError(MAX_LENGTH, f"filter is longer than {MAX_LENGTH} characters")
    if forbidden := _FORBIDDEN.search(text):
        raise FilterError(forbidden.start(), f"NUL or unpaired surrogate at {forbidden.start()}")
    return Filter(text, _Parser(_tokenize(text)).filter())


class _Parser:
    """Recursive descent over the grammar in docs/segments.md; AND binds tighter than OR."""

    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.index = 0
        self.terms = 0

    def peek(self) -> _Token:
        return self.tokens[self.index]

    def next(self) -> _Token:
        token = self.tokens[self.index]
        self.index = min(self.index + 1, len(self.tokens) - 1)
        return token

    def at_keyword(self, word: str) -> bool:
        token = self.peek()
        return token.kind == "name" and token.text == word

    def filter(self) -> Node | None:
        if self.peek().kind == "end":
            return None
        node = self.expression(0)
        token = self.peek()
        if token.kind != "end":  # only a ')' can stop an expression early
            raise FilterError(token.pos, f"unbalanced ')' at {token.pos}")
        return node

    def expression(self, depth: int) -> Node:
        operands = [self.conjunction(depth)]
        while self.at_keyword("OR"):
            self.next()
            operands.append(self.conjunction(depth))
        return operands[0] if len(operands) == 1 else Or(tuple(operands))

    def conjunction(self, depth: int) -> Node:
        operands = [self.unary(depth)]
        while True:
            if self.at_keyword("AND"):
                self.next()
            elif self.peek().kind in (")", "end") or self.at_keyword("OR"):
                break
            operands.append(self.unary(depth))  # adjacent terms are ANDed, as in AIP-160
        return operands[0] if len(operands) == 1 else And(tuple(operands))

    def unary(self, depth: int) -> Node:
        token = self.peek()
        if token.kind in ("-", "(") or self.at_keyword("NOT"):
            self.next()
            if depth + 1 > MAX_DEPTH:
                raise FilterError(
                    token.pos, f"filter is nested deeper than {MAX_DEPTH} levels at {token.pos}"
                )
            if token.kind != "(":
                return Not(self.unary(depth + 1))
            node = self.expression(depth + 1)
            if self.next().kind != ")":
                raise FilterError(token.pos, f"unbalanced '(' at {token.pos}: no matching ')'")
            return node
        return self.restriction()

    def restriction(self) -> Node:
        token = self.next()
        if token.kind != "name":
            raise FilterError(
                token.pos,
                f"expected a field at {token.pos}, found {_describe(token)}; fields are "
                + ", ".join(fields()),
            )
        field = self.field(token)
        self.terms += 1
        if self.terms > MAX_TERMS:
            raise FilterError(token.pos, f"filter has more than {MAX_TERMS} terms at {token.pos}")
        comparator = self.next()
        if comparator.kind == "op":
            value, value_token = self.value(comparator)
            return Compare(field, comparator.text, _check(field, comparator.text, value, value_token))
        if comparator.kind == ":":
            if self.peek().kind == "*":
                self.next()
                return Present(field)
            value, value_token = self.value(comparator)
            return Has(field, _check(field, ":", value, value_token))
        if comparator.kind == "name" and comparator.text == "IN":
            return In(field, self.values(field))
        raise FilterError(
            comparator.pos,
            f"expected an operator after '{field}' at {comparator.pos}, found {_describe(comparator)}; "
            "operators are = != < <= > >= : IN",
        )

    def field(self, token: _Token) -> Field:
        name, *keys = token.text.split(".")
        if name in _COLUMNS:
            if keys:
                raise FilterError(token.pos, f"field '{name}' at {token.pos} has no sub-fields")
            return Field(name)
        if name != "attributes":
            hint = f"; write the operator in capitals: {name.upper()}" if name in ("and", "or", "not") else ""
            raise FilterError(
                token.pos, f"unknown field '{name}' at {token.pos}; fields are {', '.join(fields())}{hint}"
            )
        if not keys:
            raise FilterError(token.pos, f"expected 'attributes.<key>' at {token.pos}")
        if len(keys) > MAX_ATTRIBUTE_DEPTH:
            raise FilterError(
                token.pos, f"attribute path at {token.pos} is deeper than {MAX_ATTRIBUTE_DEPTH}"
            )
        offset = token.pos + len(name) + 1
        for key in keys:
            if not _KEY.fullmatch(key):
                raise FilterError(
                    offset,
                    f"invalid attribute key '{key}' at {offset}; a key is 1-63 letters, digits and "
                    "underscores, not starting with a digit",
                )
            offset += len(key) + 1
        return Field(name, tuple(keys))

    def value(self, after: _Token) -> tuple[Value, _Token]:
        token = self.next()
        if token.kind == "string":
            return token.value, token
        if token.kind == "number":
            return _number(token, 1), token
        following = self.peek()
        if token.kind == "-" and following.kind == "number" and following.pos == token.pos + 1:
            self.next()
            return _number(following, -1), token
        if token.kind == "name" and token.text in ("true", "false"):
            return token.text == "true", token
        raise FilterError(
            token.pos,
            f"expected a value after '{after.text}' at {token.pos}, found {_describe(token)}; "
            'values are "strings", numbers, true and false',
        )

    def values(self, field: Field) -> tuple[Value, ...]:
        opening = self.next()
        if opening.kind != "(":
            raise FilterError(opening.pos, f"expected '(' after 'IN' at {opening.pos}")
        values: list[Value] = []
        after = opening
        while True:
            value, token = self.value(after)
            if len(values) == MAX_IN_VALUES:
                raise FilterError(token.pos, f"IN has more than {MAX_IN_VALUES} values at {token.pos}")
            values.append(_check(field, "IN", value, token))
            after = self.next()
            if after.kind == ")":
                return tuple(values)
            if after.kind != ",":
                raise FilterError(after.pos, f"expected ',' or ')' in IN at {after.pos}")


def _number(token: _Token, sign: int) -> int | float:
    if "." in token.text or "e" in token.text.lower():
        number = sign * float(token.text)
        if math.isfinite(number):
            return number
    elif len(token.text) <= 18:
        return sign * int(token.text)
    raise FilterError(token.pos, f"number out of range at {token.pos}")


def _check(field: Field, op: str, value: Value, token: _Token) -> Value:
    """The value to compare `field` with, or FilterError if its type does not fit the field."""
    kind = _COLUMNS.get(field.name)
    if kind is None:  # an attribute: any JSON scalar
        if isinstance(value, bool) and op in ("<", "<=", ">", ">="):
            raise FilterError(token.pos, f"true and false compare only with = and != at {token.pos}")
        return value
    if kind == "string":
        if not isinstance(value, str):
            raise FilterError(
                token.pos, f"field '{field}' holds text; compare it with a quoted string at {token.pos}"
            )
        return value.lower() if field.name == "email" else value  # emails are stored lower-cased
    if not isinstance(value, str) or not _TIMESTAMP.fullmatch(value):
        raise FilterError(
            token.pos,
            f"field '{field}' holds a timestamp; write an RFC 3339 timestamp such as {_EXAMPLE_TIME} "
            f"at {token.pos}",
        )
    try:
        parsed = dt.datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
        raise FilterError(token.pos, f"invalid timestamp {value!r} at {token.pos}") from None
    try:
        # Stored times are UTC: one whose UTC form falls outside years 1-9999 cannot be compared.
        parsed.astimezone(dt.UTC)
    except OverflowError:
        raise FilterError(
            token.pos, f"timestamp {value!r} is outside years 0001-9999 in UTC at {token.pos}"
        ) from None
    return parsed


# --- Formatting ----------------------------------------------------------------------------------


def unparse(node: Node | None) -> str:
    """Canonical text for a syntax tree: parse(unparse(t)).ast == t."""
    match node:
        case None:
            return ""
        case Compare(field, op, value):
            return f"{field} {op} {_literal(value)}"
        case Has(field, value):
            return f"{field}:{_literal(value)}"
        case Present(field):
            return f"{field}:*"
        case In(field, values):
            return f"{field} IN ({', '.join(map(_literal, values))})"
        case Not(operand):
            return f"NOT {_grouped(operand, (And, Or))}"
        case And(operands):
            return " AND ".join(_grouped(operand, (And, Or)) for operand in operands)
        case Or(operands):
            return " OR ".join(_grouped(operand, (Or,)) for operand in operands)


def _grouped(node: Node, kinds: tuple[type, ...]) -> str:
    return f"({unparse(node)})" if isinstance(node, kinds) else unparse(node)


def _literal(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.datetime):
        value = value.isoformat().replace("+00:00", "Z")
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)
