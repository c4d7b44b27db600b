"""Message templates, the same for every channel type: Jinja2 in a sandbox, the context a template
sees, and the `Renderer` through which plugins render them.

A plugin checks a channel's templates when its content is validated (`check_template`) and renders
them for a batch of recipients in one call (`await renderer.render(...)`). The daemon's renderer
runs templates in worker processes, each render bounded in time and memory, never on the event
loop. Every channel type gets `{{ contact.first_name }}` the same way: `contact` is the recipient's
contact (`ContactView`), and the plugin adds its own variables (e.g. `unsubscribe_url`).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NoReturn, Protocol

from jinja2 import Template, TemplateSyntaxError, nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

if TYPE_CHECKING:
    from campaignd.plugin import Recipient

__all__ = [
    "MAX_OUTPUT",
    "ContactView",
    "ContentError",
    "Renderer",
    "Rendering",
    "TemplateError",
    "TemplateSet",
    "check_template",
    "contact_view",
]

MAX_OUTPUT = 2_000_000  # characters one template may produce for one recipient
_MAX_REPEAT = 100_000  # the longest string or list `*` may build
_MAX_EXPONENT = 64

Limit = Literal["", "time", "memory", "output"]


class ContentError(ValueError):
    """A channel's content cannot make a message for one recipient (e.g. a text too long once
    rendered); `field` names the content field, "" when none. The message is fit for the client."""

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class TemplateError(ContentError):
    """A template failed for one recipient: an error in it, or a limit it went over (`limit`:
    "time", "memory" or "output"; "" for an error). The message is fit for the client."""

    def __init__(self, message: str, *, field: str = "", limit: Limit = "") -> None:
        super().__init__(message, field=field)
        self.limit: Limit = limit


@dataclass(frozen=True)
class TemplateSet:
    """The templates of one channel: field name -> source. Fields named in `html` are HTML and
    autoescaped. Workers compile a set once and keep it, known by `key`, for later batches."""

    sources: Mapping[str, str]
    html: frozenset[str] = frozenset()
    key: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        digest = hashlib.sha256(
            json.dumps([sorted(self.sources.items()), sorted(self.html)]).encode()
        ).hexdigest()
        object.__setattr__(self, "key", digest)

    def static(self) -> dict[str, str]:
        """The fields without template syntax: the same text for every recipient."""
        return {name: source for name, source in self.sources.items() if "{" not in source}

    def dynamic(self) -> dict[str, str]:
        """The fields that are templates."""
        return {name: source for name, source in self.sources.items() if "{" in source}


# One recipient's rendering: field name -> text, or why it failed.
Rendering = dict[str, str] | TemplateError


class Renderer(Protocol):
    """Renders templates for recipients, away from the event loop; the daemon gives one to the
    hooks that render (`campaignd_render`, `campaignd_send`)."""

    async def render(
        self,
        templates: TemplateSet,
        recipients: Sequence[Recipient],
        variables: Sequence[Mapping[str, Any]] | None = None,
        common: Mapping[str, Any] | None = None,
    ) -> list[Rendering]:
        """Render `templates` for each recipient, in order: a dict of field -> text, or the
        TemplateError of that recipient (the others are unaffected).

        Each recipient's templates see `contact` (its `ContactView`), the names in `common`, and
        its own `variables[i]`; values must be plain data (str, numbers, bool, None, lists and
        dicts of them). Each recipient's render is bounded by the daemon's `[templates]` time
        and memory limits. Pass a whole batch: it is one round trip to the workers.
        """
        ...


class _Sandbox(ImmutableSandboxedEnvironment):
    """No loader (so no include, import or extends), no access to internals, no mutation of the
    context, and bounded `*` and `**` so one expression cannot exhaust memory."""

    intercepted_binops = frozenset({"*", "**"})

    def __init__(self, *, autoescape: bool) -> None:
        super().__init__(autoescape=autoescape, keep_trailing_newline=True)
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


_TEXT = _Sandbox(autoescape=False)
_HTML = _Sandbox(autoescape=True)

# A compiled field: a Jinja template, or the text itself when it has no template syntax.
Part = Template | str


def compile_template(source: str, *, html: bool = False) -> Part:
    """Compile one template; TemplateSyntaxError or SecurityError when it is not acceptable."""
    if "{" not in source:
        return source
    env = _HTML if html else _TEXT
    tree = env.parse(source)
    _check_tree(tree)
    return env.from_string(tree)


def check_template(source: object, *, html: bool = False) -> str:
    """The problem with one template, or "" when it compiles in the sandbox (or is not a
    string: the declared field kinds are checked elsewhere)."""
    if not isinstance(source, str) or "{" not in source:
        return ""
    return _check(source, html)


# A channel's content is checked on every create, update, launch and test send; compiling a long
# template takes a while, so the same one is not compiled again.
@functools.lru_cache(maxsize=64)
def _check(source: str, html: bool) -> str:
    try:
        compile_template(source, html=html)
    except TemplateSyntaxError as exc:
        return f"line {exc.lineno}: {exc.message}"
    except SecurityError as exc:
        return str(exc)
    except (RecursionError, SyntaxError, MemoryError):
        # Jinja compiles to Python, whose parser and compiler have their own nesting limits.
        return "the template is nested too deeply"
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


def compile_set(sources: Mapping[str, str], html: frozenset[str]) -> dict[str, Part]:
    """Compile every field of a set; TemplateError naming the first that does not compile."""
    compiled = {}
    for name, source in sources.items():
        try:
            compiled[name] = compile_template(source, html=name in html)
        except TemplateSyntaxError as exc:
            raise TemplateError(
                f"the {name} template does not compile (line {exc.lineno}): {exc.message}", field=name
            ) from None
        except SecurityError as exc:
            raise TemplateError(f"the {name} template does not compile: {exc}", field=name) from None
        except (RecursionError, SyntaxError):
            raise TemplateError(f"the {name} template is nested too deeply", field=name) from None
    return compiled


class TimeLimit(BaseException):
    """Raised into a render that ran out of time (a BaseException, so nothing on the way catches it)."""


def render_fields(compiled: Mapping[str, Part], context: Mapping[str, Any]) -> dict[str, str]:
    """Render each compiled field for one recipient; TemplateError when one fails, with `limit`
    "time" or "memory" (and no message: the caller knows its limits) when it ran out of either."""
    out = {}
    for name, part in compiled.items():
        if isinstance(part, str):
            out[name] = part
            continue
        try:
            text = part.render(context)
        except TimeLimit:
            raise TemplateError("", field=name, limit="time") from None
        except MemoryError:
            raise TemplateError("", field=name, limit="memory") from None
        except Exception as exc:
            raise TemplateError(f"the {name} template failed: {exc}", field=name) from None
        if len(text) > MAX_OUTPUT:
            raise TemplateError(
                f"the {name} template produced more than {MAX_OUTPUT} characters", field=name, limit="output"
            )
        out[name] = text
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
    fields (`email`, `phone`, `contact_id`, `time_zone`, `attributes`), which an attribute of the
    same name does not hide. `address` (an email address or a phone number) stands in for a
    recipient without a contact, e.g. in a test send."""
    attributes = contact.get("attributes") or {}
    values = dict(attributes) if isinstance(attributes, Mapping) else {}
    is_email = "@" in address
    values["email"] = contact.get("email") or (address if is_email else "")
    values["phone"] = contact.get("phone") or ("" if is_email else address)
    values["contact_id"] = contact.get("contact_id") or ""
    values["time_zone"] = contact.get("time_zone") or ""
    values["attributes"] = attributes
    return ContactView(values)
