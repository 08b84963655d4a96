"""Load ``config.yaml`` into :class:`bot.settings.Settings`; report every problem as ``file:line: message``.

Steps: parse (ruamel round-trip, which keeps line numbers) -> find duplicate keys -> expand ``${VAR}`` /
``${VAR:-default}`` in string values -> validate with pydantic -> cross-check what the schema cannot see alone
(duplicate service ids; the dialog template and the slots, validators and texts the config names in it).
Each problem is located at the YAML key or list item it is about, or the nearest parent that has a line.

Loading is pure: it returns a new :class:`Settings` or raises :class:`ConfigError`, and never touches global
state, so a caller that reloads keeps its running config when the new file is bad.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import ConstructorError, RoundTripConstructor, SafeConstructor
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from ruamel.yaml.reader import ReaderError

from bot.exceptions import ConfigError
from bot.settings import BookingConfig, DialogConfig, Settings, TenantConfig, did_you_mean
from dialogs.exceptions import Problem, TemplateError
from dialogs.loader import available_templates, builtin_template, text_problems, validator_problems
from dialogs.schema import Template
from llm.models import model_problem

ENV_VAR = "BOOKINGBOT_CONFIG"
DEFAULT_PATH = Path("config.yaml")
DOTENV = Path(".env")

Loc = tuple[str | int, ...]
Finding = tuple[Loc, str]  # where in the document (for the line) and the full message
LineOf = Callable[[Loc], int]

_REF = re.compile(r"\$\{([^}]*)(\}?)")
_VAR = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?$", re.DOTALL)


def config_path(cli_value: str | None) -> Path:
    """``--config`` if given, else ``$BOOKINGBOT_CONFIG``, else ``./config.yaml``; reads ``.env`` first."""
    load_dotenv()
    return Path(cli_value or os.environ.get(ENV_VAR) or DEFAULT_PATH)


def load_dotenv(path: Path = DOTENV) -> None:
    """``KEY=value`` lines of ``./.env`` into the environment, where a variable is not already set (the real
    environment wins, as in compose). A missing file is fine: production passes real variables."""
    if path.is_file():
        import dotenv

        dotenv.load_dotenv(path, override=False)


def check_config(path: str | Path) -> list[Problem]:
    """Every problem of the config at ``path`` (empty when it is valid), for ``bookingbot check-config``."""
    try:
        load_config(path)
    except ConfigError as error:
        return error.problems
    return []


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Settings:
    """Parse, interpolate (``env`` defaults to the process environment) and validate; raise ConfigError.

    The file is read with the fast safe loader first; the round-trip reading, which knows every key's line
    and finds duplicate keys, is done only when that fails or a problem needs its line."""
    file = str(path)
    text, problems = _read(Path(path), file)
    if text is None:
        raise ConfigError(problems)
    doc: Any = _quick_parse(text)
    located: CommentedMap | None = None
    if doc is None:
        located, problems = _parse(text, file)
        if located is None:
            raise ConfigError(problems)
        doc = located

    def line(loc: Loc) -> int:
        nonlocal located
        if located is None:
            located = _parse(text, file)[0]
        return _line(located, loc) if located is not None else 1

    findings: list[Finding] = []
    data = _expand_tree(doc, os.environ if env is None else env, (), findings)
    unresolved = {loc for loc, _ in findings}
    settings, schema = _validate(data)
    findings += [(loc, message) for loc, message in schema if loc not in unresolved]
    semantic, template_problems = _cross_check(data, line)
    findings += semantic
    findings += _voice_findings(settings) if settings is not None else []
    problems += [Problem(file, line(loc), message) for loc, message in findings]
    problems.sort(key=lambda p: p.line)
    problems += template_problems
    if problems or settings is None:
        raise ConfigError(problems)
    return settings


# --- parsing -----------------------------------------------------------------------------------------------


class _Constructor(RoundTripConstructor):
    """Round-trip constructor whose scalar errors carry a line, and which keeps dates as text.

    ruamel raises a bare ``ValueError`` without a position for ``!!int x`` or ``2026-13-45``; no setting is a
    date, so timestamps stay strings (a service label may look like one).
    """

    def construct_non_recursive_object(self, node: Any, tag: str | None = None) -> Any:
        try:
            return super().construct_non_recursive_object(node, tag)
        except ValueError as error:
            reason = f"invalid value {node.value!r}: {error}"
            raise ConstructorError(None, None, reason, node.start_mark) from None


_Constructor.add_constructor("tag:yaml.org,2002:timestamp", RoundTripConstructor.construct_yaml_str)


class _QuickConstructor(SafeConstructor):
    """Timestamps stay text, as in :class:`_Constructor`."""


_QuickConstructor.add_constructor("tag:yaml.org,2002:timestamp", SafeConstructor.construct_yaml_str)


def _quick_parse(text: str) -> dict[str, Any] | None:
    """The document as plain data, or None for anything :func:`_parse` has to explain (bad YAML, duplicate
    keys, a bad scalar, not a mapping)."""
    yaml = YAML(typ="safe")
    yaml.Constructor = _QuickConstructor
    try:
        doc = yaml.load(text)
    except (YAMLError, ValueError, TypeError):
        return None
    return doc if isinstance(doc, dict) else None


def _read(path: Path, file: str) -> tuple[str | None, list[Problem]]:
    try:
        raw = path.read_bytes()
    except OSError as error:
        return None, [Problem(file, 0, f"cannot read the config: {error.strerror or error}")]
    try:
        return raw.decode("utf-8"), []
    except UnicodeDecodeError as error:
        return None, [Problem(file, raw.count(b"\n", 0, error.start) + 1, "not UTF-8 text")]


def _parse(text: str, file: str) -> tuple[CommentedMap | None, list[Problem]]:
    """The document with the line of each key (None when it cannot be used at all) and the problems found
    while reading it."""
    yaml = YAML(typ="rt")
    yaml.Constructor = _Constructor
    yaml.allow_duplicate_keys = True  # found below from the node tree, all of them and with both lines
    try:
        tree = yaml.compose(text)
        doc = yaml.load(text)
    except MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        reason = error.problem or error.context
        line = mark.line + 1 if mark else 1
        lines = text.splitlines()
        if 0 < line <= len(lines) and "\t" in lines[line - 1]:
            reason = f"{reason} (this line has a tab: use spaces, not tabs, to indent YAML)"
        return None, [Problem(file, line, f"invalid YAML: {reason}")]
    except ReaderError as error:
        line = text.count("\n", 0, error.position) + 1
        return None, [Problem(file, line, f"invalid YAML: {error.reason}")]
    except YAMLError as error:
        return None, [Problem(file, 1, f"invalid YAML: {error}")]
    if not isinstance(doc, CommentedMap):
        got = "an empty file" if doc is None else _got(doc)
        return None, [Problem(file, 1, f"expected a mapping with 'tenants' at the top, got {got}")]
    return doc, list(_duplicate_keys(tree, (), file, set()))


def _duplicate_keys(node: Node, loc: Loc, file: str, visited: set[int]) -> Iterator[Problem]:
    if id(node) in visited:  # an alias: already walked where its anchor is
        return
    visited.add(id(node))
    if isinstance(node, MappingNode):
        first: dict[str, int] = {}
        for key, value in node.value:
            name = key.value if isinstance(key, ScalarNode) else None
            if name is None:
                continue
            line = key.start_mark.line + 1
            if name in first:
                yield Problem(file, line, f"{_at(loc)}duplicate key {name!r} (first at line {first[name]})")
            first.setdefault(name, line)
            yield from _duplicate_keys(value, (*loc, name), file, visited)
    elif isinstance(node, SequenceNode):
        for index, item in enumerate(node.value):
            yield from _duplicate_keys(item, (*loc, index), file, visited)


def _line(doc: CommentedMap, loc: Loc) -> int:
    """The line of the key or item at ``loc``, or of its nearest parent that exists in the document."""
    node: Any = doc
    line = 1
    for part in loc:
        if isinstance(node, CommentedMap) and part in node:
            line = _position(node.lc.key, part, line)
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
            line = _position(node.lc.item, part, line)
        else:
            break
        node = node[part]
    return line


def _position(lookup: Callable[[Any], tuple[int, int]], part: str | int, fallback: int) -> int:
    try:
        return lookup(part)[0] + 1
    except KeyError:  # a key merged in with `<<: *anchor` has no position of its own
        return fallback


# --- ${VAR} interpolation ----------------------------------------------------------------------------------


def _expand_tree(node: Any, env: Mapping[str, str], loc: Loc, findings: list[Finding]) -> Any:
    """A plain copy of the document (dicts, lists, str, int, float, bool, None) with ``${VAR}`` expanded."""
    if isinstance(node, dict):
        return {key: _expand_tree(value, env, (*loc, key), findings) for key, value in node.items()}
    if isinstance(node, list):
        return [_expand_tree(item, env, (*loc, index), findings) for index, item in enumerate(node)]
    if isinstance(node, str):
        return _expand(str(node), env, loc, findings)
    if isinstance(node, bool):
        return node
    if isinstance(node, float):  # ruamel's ScalarFloat / ScalarInt: plain numbers read better in messages
        return float(node)
    if isinstance(node, int):
        return int(node)
    return node


def _expand(text: str, env: Mapping[str, str], loc: Loc, findings: list[Finding]) -> str:
    def substitute(ref: re.Match[str]) -> str:
        var = _VAR.match(ref.group(1))
        if var is None or not ref.group(2):
            usage = "use ${VAR} or ${VAR:-default}"
            findings.append((loc, f"{_at(loc)}bad reference {ref.group(0)!r}: {usage}"))
            return ""
        name, default = var.groups()
        if default is not None:
            return env.get(name) or default
        if name not in env:
            hint = f"write ${{{name}:-default}} to give it a default"
            findings.append((loc, f"{_at(loc)}environment variable {name!r} is not set ({hint})"))
            return ""
        return env[name]

    return _REF.sub(substitute, text)


# --- schema ------------------------------------------------------------------------------------------------

_EXPECTED = {
    "int_parsing": "an integer",
    "int_type": "an integer",
    "int_from_float": "a whole number",
    "float_parsing": "a number",
    "float_type": "a number",
    "string_type": "a string",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}
_BOUNDS = {
    "greater_than": ("gt", "greater than"),
    "greater_than_equal": ("ge", "at least"),
    "less_than": ("lt", "less than"),
    "less_than_equal": ("le", "at most"),
}


def _validate(data: Any) -> tuple[Settings | None, list[Finding]]:
    try:
        return Settings.model_validate(data), []
    except ValidationError as error:
        return None, [_schema_finding(detail) for detail in error.errors()]


def _schema_finding(error: ErrorDetails) -> Finding:
    loc: Loc = tuple(error["loc"])
    if error["type"] == "missing":
        return loc[:-1], f"{_at(loc[:-1])}missing required key {loc[-1]!r}"
    if error["type"] == "extra_forbidden":
        hint = did_you_mean(str(loc[-1]), _known_keys(loc[:-1]))
        return loc, f"{_at(loc[:-1])}unknown key {loc[-1]!r}{hint}"
    if loc and loc[-1] == "[key]":  # a mapping key itself is wrong: report it at that key
        return loc[:-1], f"{_at(loc[:-2])}{_describe(error)}"
    return loc, f"{_at(loc)}{_describe(error)}"


def _describe(error: ErrorDetails) -> str:
    kind, ctx, value = error["type"], error.get("ctx", {}), error["input"]
    got = _got(value)
    if kind in ("value_error", "assertion_error"):
        return str(ctx["error"])
    if kind in _EXPECTED:
        quote = " (put it in quotes)" if kind == "string_type" and isinstance(value, int | float) else ""
        return f"expected {_EXPECTED[kind]}, got {got}{quote}"
    if kind == "literal_error":
        return f"expected {ctx['expected']}, got {got}"
    if kind in _BOUNDS:
        key, words = _BOUNDS[kind]
        return f"must be {words} {ctx[key]}, got {got}"
    if kind in ("too_short", "string_too_short"):
        least = ctx.get("min_length", 1)
        return "must not be empty" if least == 1 else f"needs at least {least} items"
    message = error["msg"]
    return f"{message[:1].lower()}{message[1:]}, got {got}"


def _got(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _known_keys(loc: Loc) -> list[str]:
    """The keys the schema allows at ``loc`` (for "did you mean")."""
    shape: Any = Settings
    for part in loc:
        shape = _unwrap(shape)
        if _is_model(shape):
            field = shape.model_fields.get(part)
            shape = field.annotation if field else None
        else:
            shape = get_args(shape)[-1] if get_origin(shape) in (dict, list) else None
    shape = _unwrap(shape)
    return list(shape.model_fields) if _is_model(shape) else []


def _unwrap(shape: Any) -> Any:
    """``X`` out of ``Annotated[X, ...]`` and ``X | None``."""
    while get_origin(shape) in (Annotated, Union, UnionType):
        args = get_args(shape)
        shape = args[0] if get_origin(shape) is Annotated else next(a for a in args if a is not type(None))
    return shape


def _is_model(shape: Any) -> bool:
    return isinstance(shape, type) and issubclass(shape, BaseModel)


def _at(loc: Loc) -> str:
    """``"tenants.demo.services[0]: "`` (empty at the top)."""
    path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")
    return f"{path}: " if path else ""


# --- cross-checks ------------------------------------------------------------------------------------------


def _cross_check(data: Any, line: LineOf) -> tuple[list[Finding], list[Problem]]:
    """Cross-reference findings, and the problems of broken templates (reported once each)."""
    tenants = _tenant_parts(data)
    templates: dict[str, Template | str | None] = {}
    template_problems: list[Problem] = []
    for name in sorted({parts.dialog.template for parts in tenants.values() if parts.dialog}):
        templates[name], problems = _template(name)
        template_problems += problems
    findings: list[Finding] = []
    for tenant, parts in tenants.items():
        findings += _service_findings(tenant, parts.service_ids, line)
        if parts.booking:
            findings += _booking_findings(tenant, parts.service_ids, parts.booking)
        if parts.dialog:
            template = templates[parts.dialog.template]
            findings += _dialog_findings(("tenants", tenant), parts.locale, parts.dialog, template)
    return findings, template_problems


def _voice_findings(settings: Settings) -> Iterator[Finding]:
    """Every model a voice-enabled tenant uses must be loadable here (models are never downloaded)."""
    for tenant, cfg in settings.tenants.items():
        if not cfg.voice.enabled:
            continue
        own = cfg.voice.model is not None
        loc: Loc = ("tenants", tenant, "voice", "model") if own else ("voice", "model")
        problem = model_problem(cfg.voice.model or settings.voice.model)
        if problem is not None:
            yield loc, f"{_at(loc)}{problem} (voice is enabled for tenant {tenant!r})"


@dataclass(frozen=True)
class _TenantParts:
    """The fields of a tenant that cross-checks read, each validated alone (None when invalid), so that an
    error elsewhere in the tenant does not hide them."""

    locale: str | None
    service_ids: list[Any]  # raw: a duplicate id is worth reporting even when a service is otherwise invalid
    dialog: DialogConfig | None
    booking: BookingConfig | None


def _tenant_parts(data: Any) -> dict[str, _TenantParts]:
    raw = data.get("tenants") if isinstance(data, dict) else None
    if not isinstance(raw, dict):
        return {}
    return {str(tenant): _parts(cfg) for tenant, cfg in raw.items() if isinstance(cfg, dict)}


def _parts(tenant: dict[str, Any]) -> _TenantParts:
    services = tenant.get("services")
    listed = services if isinstance(services, list) else []
    ids = [service.get("id") if isinstance(service, dict) else None for service in listed]
    return _TenantParts(_field(tenant, "locale"), ids, _field(tenant, "dialog"), _field(tenant, "booking"))


def _field(tenant: dict[str, Any], name: str) -> Any:
    field = TenantConfig.model_fields[name]
    if name not in tenant:
        return None if field.is_required() else field.get_default(call_default_factory=True)
    try:
        return TypeAdapter(field.annotation).validate_python(tenant[name])
    except ValidationError:
        return None  # reported by the schema pass


def _service_findings(tenant: str, service_ids: list[Any], line: LineOf) -> Iterator[Finding]:
    first: dict[str, Loc] = {}
    for index, service_id in enumerate(service_ids):
        loc: Loc = ("tenants", tenant, "services", index, "id")
        if not isinstance(service_id, str):
            continue
        if service_id in first:
            earlier = line(first[service_id])
            yield loc, f"{_at(loc)}duplicate service id {service_id!r} (first at line {earlier})"
        first.setdefault(service_id, loc)


def _booking_findings(tenant: str, service_ids: list[Any], booking: BookingConfig) -> Iterator[Finding]:
    """cal.com needs its block, and an event type for every service (and only for services)."""
    at: Loc = ("tenants", tenant, "booking")
    if booking.backend != "calcom":
        return
    if booking.calcom is None:
        yield (*at, "backend"), f"{_at((*at, 'backend'))}backend 'calcom' needs a 'calcom:' block beside it"
        return
    loc: Loc = (*at, "calcom", "event_types")
    services = [s for s in service_ids if isinstance(s, str)]
    for service in services:
        if service not in booking.calcom.event_types:
            yield loc, f"{_at(loc)}service {service!r} has no cal.com event type"
    for service in booking.calcom.event_types:
        if service not in services:
            hint = did_you_mean(service, services)
            yield (*loc, service), f"{_at(loc)}{service!r} is not a service of this tenant{hint}"


# --- what a tenant names in its dialog template -----------------------------------------------------------
# The same rules as dialogs.engine.override_problems (which the Engine enforces), located in the file.


def _template(name: str) -> tuple[Template | str | None, list[Problem]]:
    """The shipped template ``name``; else a message (no such template) or None and its own problems."""
    try:
        return builtin_template(name), []
    except (KeyError, FileNotFoundError):
        return f"unknown template {name!r}{did_you_mean(name, available_templates())}", []
    except TemplateError as error:
        return None, error.problems


def _dialog_findings(
    tenant: Loc, locale: str | None, dialog: DialogConfig, template: Template | str | None
) -> Iterator[Finding]:
    at: Loc = (*tenant, "dialog")
    if isinstance(template, str):
        yield (*at, "template"), f"{_at((*at, 'template'))}{template}"
    if not isinstance(template, Template):
        return
    if locale is not None and locale not in template.texts:  # None: invalid, reported by the schema pass
        loc: Loc = (*tenant, "locale")
        has = ", ".join(sorted(template.texts))
        yield loc, f"{_at(loc)}template {template.name!r} has no {locale!r} texts (it has: {has})"
    yield from _text_findings(at, dialog, template)
    yield from _slot_findings(at, dialog, template)


def _text_findings(at: Loc, dialog: DialogConfig, template: Template) -> Iterator[Finding]:
    catalog = template.text_catalog()
    where = _at((*at, "texts"))
    for key, text in dialog.texts.items():
        loc: Loc = (*at, "texts", key)
        if key not in catalog:
            hint = did_you_mean(key, catalog, else_list=False)
            yield loc, f"{where}unknown text {key!r} in template {template.name!r}{hint}"
        else:
            yield from ((loc, f"{where}{message}") for message in text_problems(key, text, catalog[key]))


def _slot_findings(at: Loc, dialog: DialogConfig, template: Template) -> Iterator[Finding]:
    where = _at((*at, "slots"))
    for slot, override in dialog.slots.items():
        if slot not in template.slots:
            hint = did_you_mean(slot, template.slots)
            yield (*at, "slots", slot), f"{where}unknown slot {slot!r} in template {template.name!r}{hint}"
            continue
        usable: list[str] = []
        for index, name in enumerate(override.validators or ()):
            loc: Loc = (*at, "slots", slot, "validators", index)
            problems = validator_problems(slot, template.slots[slot].extractor, name)
            yield from ((loc, f"{where}{message}") for message in problems)
            usable += [] if problems else [name]
        for key in sorted(template.rejection_keys(slot, tuple(usable))):
            if any(key not in texts for texts in template.texts.values()):
                loc = (*at, "slots", slot, "validators")
                yield loc, f"{where}slot {slot!r}: its validators need a text {key!r}, which {template.name!r} lacks"
