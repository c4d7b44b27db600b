"""Personalisation of text prompts: Jinja2 templates in a sandbox, and the context they see.

The same sandbox as the email channel's, for the one template field a voice channel has.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, NoReturn

from jinja2 import Template, TemplateSyntaxError, nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

TEMPLATE_FIELDS = ("text",)
MAX_OUTPUT = 10_000  # characters one prompt may hold for one recipient: minutes of speech
_MAX_REPEAT = 100_000  # the longest string or list `*` may build
_MAX_EXPONENT = 64


class RenderError(ValueError):
    """A template failed for a recipient; the message is fit for the client."""


class _Sandbox(ImmutableSandboxedEnvironment):
    """No loader (so no include, import or extends), no access to internals, no mutation of the
    context, and bounded `*` and `**` so one expression cannot exhaust memory."""

    intercepted_binops = frozenset({"*", "**"})

    def __init__(self) -> None:
        super().__init__(autoescape=False, keep_trailing_newline=True)
        # lipsum() writes arbitrary amounts of text; nothing in a message needs it.
        self.globals.pop("lipsum", None)

    def getattr(self, obj: Any, attribute: str) -> Any:
        # A contact holds data only: reading it needs none of the checks made for other objects.
        if type(obj) is ContactView:
            try:
                return obj._values[attribute]
            except KeyError:
                return self.undefined(hint=f"contact has no attribute {attribute!r}", name=attribute)
        return super().getattr(obj, attribute)

    def unsafe_undefined(self, obj: Any, attribute: str) -> NoReturn:
        # The stock sandbox renders an unsafe attribute as empty; fail loudly instead.
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


TEXT = _Sandbox()

# A part of a message: a compiled template, or the text itself when it has no template syntax.
Part = Template | str


def compile_part(field: str, source: str) -> Part:
    """Compile one field; TemplateSyntaxError or SecurityError when it is not acceptable."""
    if "{" not in source:
        return source
    env = TEXT
    tree = env.parse(source)
    _check_tree(tree)
    return env.from_string(tree)


def check_template(field: str, source: object) -> str:
    """The problem with one template field, or ""."""
    if not isinstance(source, str) or "{" not in source:
        return ""
    try:
        compile_part(field, source)
    except TemplateSyntaxError as exc:
        return f"line {exc.lineno}: {exc.message}"
    except SecurityError as exc:
        return str(exc)
    return ""


def _check_tree(tree: nodes.Template) -> None:
    # The sandbox refuses these at render time too; refusing them here tells the author at once.
    for node in tree.find_all((nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)):
        raise SecurityError(f"line {node.lineno}: templates cannot include, import or extend other templates")
    for getattr_node in tree.find_all(nodes.Getattr):
        if getattr_node.attr.startswith("_"):
            raise SecurityError(f"line {getattr_node.lineno}: attributes starting with _ are not accessible")
    for getitem in tree.find_all(nodes.Getitem):
        if isinstance(getitem.arg, nodes.Const) and str(getitem.arg.value).startswith("_"):
            raise SecurityError(f"line {getitem.lineno}: attributes starting with _ are not accessible")


def render_part(field: str, part: Part, context: Mapping[str, Any]) -> str:
    """Render one part for one recipient; RenderError when the template fails."""
    if isinstance(part, str):
        return part
    try:
        out = part.render(context)
    except Exception as exc:
        raise RenderError(f"the {field} template failed: {exc}") from None
    if len(out) > MAX_OUTPUT:
        raise RenderError(f"the {field} template produced more than {MAX_OUTPUT} characters")
    return out


class ContactView:
    """A contact as templates see it: `contact.first_name` reads an attribute, `contact.email` a
    field of the contact. Unlike a dict it has no methods, so an attribute named `items` or
    `keys` is read like any other."""

    __slots__ = ("_values",)

    def __init__(self, values: dict[str, Any]) -> None:
        self._values = values

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __contains__(self, name: object) -> bool:
        return name in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def contact_view(address: str, contact: Mapping[str, Any]) -> ContactView:
    """The `contact` of the template context: the attributes at the top, then the contact's own
    fields, which an attribute of the same name does not hide."""
    attributes = contact.get("attributes") or {}
    values = dict(attributes) if isinstance(attributes, Mapping) else {}
    values["email"] = contact.get("email") or address
    values["phone"] = contact.get("phone") or ""
    values["contact_id"] = contact.get("contact_id") or ""
    values["time_zone"] = contact.get("time_zone") or ""
    values["attributes"] = attributes
    return ContactView(values)
