"""docs/plugins.md documents every hook, every name of the published plugin API, and the
conformance kit."""

from __future__ import annotations

import dataclasses
import inspect
import pathlib
import re

import campaignd.plugin
import campaignd.plugin.templates
from campaignd.plugin import hookspecs
from campaignd.testing.conformance import Target, TransportChannelContract

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "plugins.md"
HOOKS = {
    name: function
    for name, function in inspect.getmembers(hookspecs, inspect.isfunction)
    if name.startswith("campaignd_")
}


def _sections(text: str, level: str) -> dict[str, str]:
    """The sections of `text` under headings of `level` ("##", "###"), by heading."""
    pattern = re.compile(rf"^{level} (.+)$", re.MULTILINE)
    found = {}
    headings = list(pattern.finditer(text))
    for heading, following in zip(headings, [*headings[1:], None], strict=True):
        end = following.start() if following is not None else len(text)
        body = text[heading.end() : end]
        # A deeper section ends where a heading of a higher level begins.
        higher = re.search(rf"^#{{1,{len(level) - 1}}} ", body, re.MULTILINE) if len(level) > 1 else None
        found[heading.group(1).strip()] = body[: higher.start()] if higher else body
    return found


def _hook_sections() -> dict[str, str]:
    sections = _sections(DOC.read_text(encoding="utf-8"), "###")
    return {m.group(1): body for title, body in sections.items() if (m := re.fullmatch(r"`(\w+)`", title))}


def _prose(section: str) -> str:
    return re.sub(r"```.*?```", "", section, flags=re.DOTALL)


def test_every_hook_has_a_section() -> None:
    """Each hook specification has a ### `name` section."""
    missing = sorted(set(HOOKS) - set(_hook_sections()))
    assert not missing, f"hooks without a section in {DOC.name}: {missing}"


def test_every_hook_section_names_a_hook() -> None:
    """A ### `campaignd_...` section, and every section under ## Hooks, is about a real hook."""
    text = DOC.read_text(encoding="utf-8")
    under_hooks = _sections(_sections(text, "##")["Hooks"], "###")
    named = {name for name in _hook_sections() if name.startswith("campaignd_")}
    titles = {title.strip("`") for title in under_hooks}
    stray = sorted((named | titles) - set(HOOKS))
    assert not stray, f"sections about no hook in {DOC.name}: {stray}"


def test_every_argument_is_described() -> None:
    """Each argument of a hook is named in the prose of its section, not only in its signature."""
    sections = _hook_sections()
    undescribed = {
        name: [
            arg for arg in inspect.signature(function).parameters if f"`{arg}`" not in _prose(sections[name])
        ]
        for name, function in HOOKS.items()
        if name in sections
    }
    undescribed = {name: args for name, args in undescribed.items() if args}
    assert not undescribed, f"arguments not described in their hook's section: {undescribed}"


def test_every_signature_is_the_specification() -> None:
    """The signature shown in each hook's section has the specification's arguments, in order."""
    sections = _hook_sections()
    for name, function in HOOKS.items():
        shown = re.search(rf"def {name}\((.*?)\)\s*->", sections.get(name, ""), re.DOTALL)
        assert shown is not None, f"no signature of {name} in its section"
        arguments = [a.split(":")[0].strip() for a in shown.group(1).split(",") if a.strip()]
        assert arguments == list(inspect.signature(function).parameters), name


def test_published_api_table_is_complete() -> None:
    """Every name campaignd.plugin exports is in the published-API table, and the table names
    nothing it does not have."""
    section = _sections(DOC.read_text(encoding="utf-8"), "##")["The published API"]
    table = section.split("\n### ", 1)[0]
    first_cells = re.findall(r"^\| ([^|]+) \|", table, re.MULTILINE)
    listed = {name for cell in first_cells for name in re.findall(r"`(\w+)`", cell)}
    missing = sorted(set(campaignd.plugin.__all__) - listed)
    assert not missing, f"exported but not in the published-API table: {missing}"
    unknown = sorted(name for name in listed if not hasattr(campaignd.plugin, name))
    assert not unknown, f"in the published-API table but not in campaignd.plugin: {unknown}"


def test_conformance_kit_is_described() -> None:
    """The kit's section lists every test of the contracts and every field of Target."""
    section = _sections(DOC.read_text(encoding="utf-8"), "##")["Testing a plugin: the conformance kit"]
    tests = {name for name in dir(TransportChannelContract) if name.startswith("test_")}
    fields = {f.name for f in dataclasses.fields(Target)}
    missing = sorted(name for name in tests | fields if f"| `{name}` |" not in section)
    assert not missing, f"not in the conformance kit's tables: {missing}"


def test_templates_api_table_is_complete() -> None:
    """Every name campaignd.plugin.templates exports is in its table in the published-API section,
    and the table names nothing the module does not have."""
    section = _sections(DOC.read_text(encoding="utf-8"), "###")[
        "`campaignd.plugin.templates`: message templates"
    ]
    first_cells = re.findall(r"^\| ([^|]+) \|", section, re.MULTILINE)
    listed = {name for cell in first_cells for name in re.findall(r"`(\w+)`", cell)}
    missing = sorted(set(campaignd.plugin.templates.__all__) - listed)
    assert not missing, f"exported but not in the templates table: {missing}"
    unknown = sorted(name for name in listed if not hasattr(campaignd.plugin.templates, name))
    assert not unknown, f"in the templates table but not in campaignd.plugin.templates: {unknown}"
