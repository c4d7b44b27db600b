"""The message template: compiled and rendered in a Jinja2 sandbox, with `contact.*`.

The whole of the channel's templating is in this module, behind `compile_text`, `check_text` and
`render_text`, so that it can give way to a template API shared by every channel.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NoReturn

from jinja2 import Template, TemplateSyntaxError, nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_OUTPUT = 100_000  # characters one message may render to
_MAX_REPEAT = 10_000
_MAX_EXPONENT = 64


class RenderError(ValueError):
    """The template failed for a recipient; the message is fit for the client."""


class _Sandbox(ImmutableSandboxedEnvironment):
    """No loader (so no include or import), no internals, bounded `*` and `**`."""

    intercepted_binops = frozenset({"*", "**"})

    def __init__(self) -> None:
        super().__init__(autoescape=False, keep_trailing_newline=True)
        self.globals.pop("lipsum", None)

    def unsafe_undefined(self, obj: Any, attribute: str) -> NoReturn:
        raise SecurityError(
            f"access to attribute {attribute!r} of a {type(obj).__name__!r} value is not allowed"
        )

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            if isinstance(right, int | float) and abs(right) > _MAX_EXPONENT:
                raise SecurityError(f"the exponent of ** is limited to {_MAX_EXPONENT}")
            return left**right
        size = max(_length(left) * _count(right), _length(right) * _count(left))
        if size > _MAX_REPEAT:
            raise SecurityError(f"* may build at most {_MAX_REPEAT} items")
        return left * right


def _length(value: Any) -> int:
    return len(value) if isinstance(value, str | list | tuple) else 0


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


_ENV = _Sandbox()

Compiled = Template | str


def compile_text(source: str) -> Compiled:
    """The compiled template, or the text itself when it has no template syntax;
    TemplateSyntaxError or SecurityError when it is not acceptable."""
    if "{" not in source:
        return source
    tree = _ENV.parse(source)
    for node in tree.find_all((nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)):
        raise SecurityError(f"line {node.lineno}: templates cannot include, import or extend other templates")
    for getattr_node in tree.find_all(nodes.Getattr):
        if getattr_node.attr.startswith("_"):
            raise SecurityError(f"line {getattr_node.lineno}: attributes starting with _ are not accessible")
    return _ENV.from_string(tree)


def check_text(source: object) -> str:
    """The problem with a template, or ""."""
    if not isinstance(source, str):
        return ""
    try:
        compile_text(source)
    except TemplateSyntaxError as exc:
        return f"line {exc.lineno}: {exc.message}"
    except SecurityError as exc:
        return str(exc)
    return ""


def render_text(compiled: Compiled, address: str, contact: Mapping[str, Any]) -> str:
    """The text one recipient gets; RenderError when the template fails."""
    if isinstance(compiled, str):
        return compiled
    try:
        out = compiled.render(contact=contact_values(address, contact))
    except Exception as exc:
        raise RenderError(f"the text template failed: {exc}") from None
    if len(out) > MAX_OUTPUT:
        raise RenderError(f"the text template produced more than {MAX_OUTPUT} characters")
    return out


def contact_values(address: str, contact: Mapping[str, Any]) -> dict[str, Any]:
    """`contact` as templates see it: its attributes, then its own fields, which an attribute of
    the same name does not hide."""
    attributes = contact.get("attributes") or {}
    values = dict(attributes) if isinstance(attributes, Mapping) else {}
    values["phone"] = contact.get("phone") or address
    values["email"] = contact.get("email") or ""
    values["contact_id"] = contact.get("contact_id") or ""
    values["time_zone"] = contact.get("time_zone") or ""
    values["attributes"] = attributes
    return values
