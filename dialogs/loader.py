"""Load dialog templates: YAML -> :class:`Template`, checked completely at load.

Every problem is reported at once as ``file:line: message`` (:class:`TemplateError`): bad YAML, unknown keys,
unknown state / slot / extractor / validator / trigger / text names, transitions that conflict, texts missing
in a locale and placeholders the engine does not provide. A template that loads cannot fail mid-conversation
for a naming reason.
"""

from __future__ import annotations

import string
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from dialogs.exceptions import Problem, TemplateError
from dialogs.extract import EXTRACTORS
from dialogs.machine import ANY, FlowMachine, expand
from dialogs.phrases import IntentMatcher
from dialogs.schema import FLOWS, INTENTS, TRIGGERS, Template
from dialogs.validators import VALIDATORS

TEMPLATES = Path(__file__).resolve().parent / "templates"

Loc = tuple[str | int, ...]
Finding = tuple[Loc, str]


def load_template(path: Path) -> Template:
    """Load and check one template file; raises :class:`TemplateError` listing every problem found.

    A valid template is read with the fast (C, when ``ruamel.yaml.clib`` is installed) safe loader; only a
    template with a problem is read again with the round-trip loader, which knows the line of every key."""
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TemplateError([Problem(file, 0, f"cannot read template: {exc.strerror or exc}")]) from exc
    template = _valid_or_none(text)
    return build(template if template is not None else _load_located(text, file), file)


def _valid_or_none(text: str) -> Template | None:
    try:
        template = Template.model_validate(YAML(typ="safe").load(text))
    except (YAMLError, ValidationError, ValueError):
        return None
    return None if next(check(template), None) else template


def _load_located(text: str, file: str) -> Template:
    """The template, or :class:`TemplateError` with each problem at its line."""
    try:
        doc = YAML(typ="rt").load(text)
    except MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else 0
        raise TemplateError([Problem(file, line, f"invalid YAML: {exc.problem}")]) from exc
    except YAMLError as exc:
        raise TemplateError([Problem(file, 0, f"invalid YAML: {exc}")]) from exc
    if not isinstance(doc, CommentedMap):
        raise TemplateError([Problem(file, 1, "a template is a mapping (name, slots, states, ...)")])
    try:
        template = Template.model_validate(doc)
    except ValidationError as exc:
        raise TemplateError([Problem(file, _line(doc, loc), msg) for loc, msg in _schema_findings(exc)]) from exc
    findings = list(check(template))
    if findings:
        raise TemplateError([Problem(file, _line(doc, loc), msg) for loc, msg in findings])
    return template


@cache
def builtin_template(name: str) -> Template:
    """A shipped template by name (``dialogs/templates/<name>.yaml``), loaded once per process."""
    if name not in available_templates():
        raise KeyError(name)
    return load_template(TEMPLATES / f"{name}.yaml")


def available_templates() -> list[str]:
    return sorted(p.stem for p in TEMPLATES.glob("*.yaml"))


def build(template: Template, source: str) -> Template:
    """Attach the compiled parts (state machine, intent matcher) to a checked template."""
    template._source = source
    template._machine = FlowMachine(template.name, list(template.states), template.transitions, template.initial)
    template._intents = IntentMatcher(template.intents)
    return template


# --- checks ------------------------------------------------------------------------------------------------


def _schema_findings(exc: ValidationError) -> Iterator[Finding]:
    for error in exc.errors():
        loc = tuple(error["loc"])
        where = ".".join(str(part) for part in loc[:-1])
        prefix = f"{where}: " if where else ""
        if error["type"] == "extra_forbidden":
            yield loc, f"{prefix}unknown key {loc[-1]!r}"
        elif error["type"] == "missing":
            yield loc, f"{prefix}missing key {loc[-1]!r}"
        else:
            yield loc, f"{'.'.join(str(part) for part in loc)}: {error['msg']}"


def check(t: Template) -> Iterator[Finding]:
    """Everything the schema cannot say: cross-references between the parts of a template."""
    if t.initial not in t.states:
        yield ("initial",), f"unknown initial state {t.initial!r}"
    yield from _check_flows(t)
    yield from _check_slots(t)
    yield from _check_states(t)
    yield from _check_transitions(t)
    yield from _check_intents(t)
    yield from _check_texts(t)


def _check_flows(t: Template) -> Iterator[Finding]:
    for flow, slots in t.flows.items():
        if flow not in FLOWS:
            yield ("flows", flow), f"unknown flow {flow!r} (the engine runs: {', '.join(FLOWS)})"
        for index, slot in enumerate(slots):
            if slot not in t.slots:
                yield ("flows", flow, index), f"flow {flow!r}: unknown slot {slot!r}"


def _check_slots(t: Template) -> Iterator[Finding]:
    for slot, spec in t.slots.items():
        at: Loc = ("slots", slot)
        if spec.extractor not in EXTRACTORS:
            yield (
                (*at, "extractor"),
                f"slot {slot!r}: unknown extractor {spec.extractor!r} (known: {_names(EXTRACTORS)})",
            )
        elif spec.extractor != slot:
            yield at, f"slot {slot!r}: a slot is named after its extractor ({spec.extractor!r})"
        for index, name in enumerate(spec.validators):
            yield from (((*at, "validators", index), m) for m in validator_problems(slot, spec.extractor, name))


def validator_problems(slot: str, kind: str, name: str) -> list[str]:
    """Why validator ``name`` cannot check slot ``slot`` of kind ``kind`` (also used for tenant overrides)."""
    if name not in VALIDATORS:
        return [f"slot {slot!r}: unknown validator {name!r} (known: {_names(VALIDATORS)})"]
    if kind not in VALIDATORS[name].kinds:
        return [f"slot {slot!r}: validator {name!r} checks {_names(VALIDATORS[name].kinds)} values, not {kind}"]
    return []


def _check_states(t: Template) -> Iterator[Finding]:
    for name, state in t.states.items():
        at: Loc = ("states", name)
        if state.flow not in t.flows:
            yield (*at, "flow"), f"state {name!r}: unknown flow {state.flow!r}"
        if state.kind == "ask":
            if state.slot not in t.slots:
                yield (*at, "slot"), f"state {name!r}: an ask state needs a known slot, got {state.slot!r}"
            elif state.slot not in t.flows.get(state.flow, ()):
                yield (*at, "slot"), f"state {name!r}: slot {state.slot!r} is not in flow {state.flow!r}"
        elif state.slot is not None:
            yield (*at, "slot"), f"state {name!r}: only ask states have a slot"
        lacking = [locale for locale, texts in t.texts.items() if state.text and state.text not in texts]
        if lacking:
            yield (*at, "text"), f"state {name!r}: no text {state.text!r} in {', '.join(lacking)}"
        if state.kind == "pending" and state.text is not None:
            yield (*at, "text"), f"state {name!r}: a pending state shows no text (the effect's outcome does)"


def _check_transitions(t: Template) -> Iterator[Finding]:
    triggers = TRIGGERS | {f"need_{slot}" for slot in t.slots}
    for index, rule in enumerate(t.transitions):
        at: Loc = ("transitions", index)
        if rule.trigger not in triggers:
            yield (*at, "trigger"), f"unknown trigger {rule.trigger!r} (the engine fires: {_names(triggers)})"
        for source in rule.sources:
            if source != ANY and source not in t.states:
                yield (*at, "source"), f"unknown source state {source!r}"
        if rule.dest not in t.states:
            yield (*at, "dest"), f"unknown destination state {rule.dest!r}"
        elif problem := _dest_problem(t, rule.trigger, rule.dest):
            yield (*at, "dest"), problem
    _, conflicts = expand(t.transitions, t.states)
    for index, message in conflicts:
        yield ("transitions", index), message


def _dest_problem(t: Template, trigger: str, dest: str) -> str | None:
    """A trigger leads where its meaning needs: ``need_X`` to a state asking for X, and so on."""
    state = t.states[dest]
    wanted = {"complete": "confirm", "commit": "pending"}.get(trigger)
    if trigger.startswith("need_") and (state.kind, state.slot) != ("ask", trigger[5:]):
        return f"{trigger!r} must lead to a state asking for {trigger[5:]!r}, not {dest!r}"
    if wanted and state.kind != wanted:
        return f"{trigger!r} must lead to a {wanted} state, not {dest!r} ({state.kind})"
    return None


def _check_intents(t: Template) -> Iterator[Finding]:
    for name, by_locale in t.intents.items():
        if name not in INTENTS:
            yield ("intents", name), f"unknown intent {name!r} (known: {', '.join(INTENTS)})"
        for locale, phrases in by_locale.items():
            if locale not in t.texts:
                yield ("intents", name, locale), f"intent {name!r}: locale {locale!r} has no texts"
            if not any(p.strip() for p in phrases):
                yield ("intents", name, locale), f"intent {name!r}: no phrases for {locale!r}"
    missing = [name for name in INTENTS if name not in t.intents]
    if missing:
        yield ("intents",), f"intents missing: {', '.join(missing)}"


def _check_texts(t: Template) -> Iterator[Finding]:
    if not t.texts:
        yield ("texts",), "no texts: a template needs at least one locale"
    catalog = t.text_catalog()
    for locale, texts in t.texts.items():
        if locale not in t.formats:
            yield ("formats",), f"no date format for locale {locale!r}"
        missing = sorted(set(catalog) - set(texts))
        if missing:
            yield ("texts", locale), f"locale {locale!r}: texts missing: {', '.join(missing)}"
        for key, text in texts.items():
            allowed = catalog.get(key)
            if allowed is None:
                yield ("texts", locale, key), f"unknown text {key!r} (the engine never shows it)"
            else:
                yield from ((("texts", locale, key), m) for m in text_problems(key, text, allowed))
    for locale, fmt in t.formats.items():
        yield from ((("formats", locale, "date"), m) for m in text_problems("date", fmt.date, DATE_FIELDS))


DATE_FIELDS = frozenset({"weekday", "day", "month"})


def placeholders(text: str) -> list[str]:
    """The names of ``{placeholder}`` fields in a str.format text. Raises ValueError on a malformed one."""
    return [field.split(".")[0].split("[")[0] for _, field, _, _ in string.Formatter().parse(text) if field is not None]


def text_problems(key: str, text: str, allowed: frozenset[str]) -> list[str]:
    """What is wrong with ``text`` as the text of ``key`` (also used for tenant overrides)."""
    try:
        names = placeholders(text)
    except ValueError as exc:
        return [f"text {key!r}: malformed placeholder ({exc})"]
    unknown = [name for name in names if name not in allowed]
    if not unknown:
        return []
    offer = ", ".join("{" + a + "}" for a in sorted(allowed)) or "none"
    return [f"text {key!r}: unknown placeholder {{{unknown[0] or '?'}}} (available: {offer})"]


def _names(names: Any) -> str:
    return ", ".join(sorted(names))


def _line(doc: Any, loc: Loc) -> int:
    """The 1-based line of the deepest node of ``loc`` present in the YAML document."""
    line, node = 1, doc
    for part in loc:
        if isinstance(node, CommentedMap) and part in node:
            line = node.lc.key(part)[0] + 1
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
            line = node.lc.item(part)[0] + 1
        else:
            break
        node = node[part]
    return line
