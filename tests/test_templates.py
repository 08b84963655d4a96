"""Dialog templates: the shipped one loads complete; broken ones fail at load with ``file:line: message``."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from dialogs.exceptions import IllegalTransition, TemplateError
from dialogs.graph import to_dot, to_mermaid
from dialogs.loader import TEMPLATES, available_templates, builtin_template, load_template
from dialogs.schema import Template

SHIPPED = TEMPLATES / "booking.yaml"
FIXTURE_STATES = {
    "start", "idle", "ask_service", "ask_date", "ask_time", "ask_name", "ask_phone", "confirm", "booking", "booked",
    "cancel_pick", "cancel_confirm", "cancelled", "reschedule_pick", "reschedule_date", "reschedule_time",
    "reschedule_confirm", "rescheduling", "rescheduled", "handoff",
}  # fmt: skip


@pytest.fixture(scope="module")
def booking() -> Template:
    return builtin_template("booking")


# --- the shipped template ------------------------------------------------------------------------------------


def test_shipped_template_loads_once_with_the_fixture_state_names(booking: Template) -> None:
    assert "booking" in available_templates()
    assert builtin_template("booking") is booking
    assert set(booking.states) >= FIXTURE_STATES
    assert booking.initial == "start"
    with pytest.raises(KeyError):
        builtin_template("no-such-template")
    with pytest.raises(KeyError):
        builtin_template("../booking")


def test_every_text_exists_in_en_and_ru(booking: Template) -> None:
    assert set(booking.texts) == {"en", "ru"}
    assert set(booking.texts["en"]) == set(booking.texts["ru"]) == set(booking.text_catalog())


def test_machine_is_built_once_with_explicit_rules_before_wildcards(booking: Template) -> None:
    machine = booking.machine
    assert "to_start" not in machine.triggers  # auto_transitions=False
    assert machine.dest("ask_name", "need_date") == "ask_date"  # "*"
    assert machine.dest("reschedule_time", "need_date") == "reschedule_date"  # its own rule wins
    assert machine.dest("confirm", "commit") == "booking"
    assert machine.dest("cancel_confirm", "commit") == "cancelling"
    with pytest.raises(IllegalTransition, match="'commit' from state 'ask_name'"):
        machine.dest("ask_name", "commit")


@pytest.mark.parametrize(
    ("text", "intent"),
    [
        ("Hi there", "greeting"),
        ("Здравствуйте!", "greeting"),
        ("I want to cancel my booking", "cancel_booking"),
        ("отменить запись", "cancel_booking"),
        ("cancel", "cancel"),  # the context decides: stop the booking being made, or cancel the one held
        ("отмена", "cancel"),
        ("i need to cancel, something came up", "cancel"),
        ("мне нужно отменить, планы поменялись", "cancel"),
        ("I'd like to cancle my apointment", "cancel_booking"),  # typos
        ("can i move it to monday morning", "reschedule"),
        ("no, I want to move my friday booking", "reschedule"),
        ("could we push it to thursday", "reschedule"),
        ("давайте сдвинем на четверг", "reschedule"),
        ("ok forget it, book me saturday at 6pm", "stop"),
        ("ладно, забудьте", "stop"),
        ("let's start again", "restart"),
        ("thanks bye", "thanks"),
        ("спасибо, до свидания", "thanks"),
        ("can I speak to someone please", "human"),
        ("when am I coming in?", "my_booking"),
        ("never mind", "stop"),
        ("can you move my booking to Friday?", "reschedule"),
        ("перенесите на пятницу", "reschedule"),
        ("what is my booking", "my_booking"),
        ("когда я записан?", "my_booking"),
        ("start over", "restart"),
        ("/start", "restart"),
        ("сначала", "restart"),
        ("?", "help"),
        ("operator please", "human"),
        ("yes please", "yes"),
        ("Да", "yes"),
        ("нет", "no"),
        ("Friday", None),
        ("haircut tomorrow at 5pm", None),
        ("this is a booking", None),  # "hi" and "book" are not whole words here
    ],
)
def test_intent_phrases(booking: Template, text: str, intent: str | None) -> None:
    assert booking.intent_matcher.match(text) == intent


def test_graphs_draw_every_state_and_trigger(booking: Template) -> None:
    mermaid = to_mermaid(booking)
    assert mermaid.startswith("stateDiagram-v2\n")
    assert "[*] --> start" in mermaid
    assert "confirm --> booking : commit" in mermaid
    assert "any_state --> ask_date : need_date" in mermaid
    assert all(f" as {state}" in mermaid for state in booking.states)
    dot = to_dot(booking)
    assert dot.startswith('digraph "booking" {')
    assert '"confirm" -> "booking" [label="commit"];' in dot
    if shutil.which("dot"):
        svg = subprocess.run(["dot", "-Tsvg"], input=dot, capture_output=True, text=True, check=True).stdout
        assert "<svg" in svg and "reschedule_confirm" in svg


# --- broken templates fail at load, each problem with its line ---------------------------------------------


def _variant(tmp_path: Path, old: str, new: str) -> tuple[Path, int]:
    """The shipped template with ``old`` replaced by ``new``; returns the file and the line where ``new`` starts."""
    text = SHIPPED.read_text(encoding="utf-8")
    assert old in text, old
    text = text.replace(old, new, 1)
    path = tmp_path / "broken.yaml"
    path.write_text(text, encoding="utf-8")
    return path, text[: text.index(new)].count("\n") + 1


def _problems(path: Path) -> list[str]:
    with pytest.raises(TemplateError) as info:
        load_template(path)
    return [str(p) for p in info.value.problems]


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "  - {trigger: commit, source: confirm, dest: booking}",
            "  - {trigger: commit, source: confirm, dest: bookin}",
            "unknown destination state 'bookin'",
        ),
        (
            "  - {trigger: keep, source: cancel_confirm, dest: idle}",
            "  - {trigger: keep, source: [cancel_confirm, canceled], dest: idle}",
            "unknown source state 'canceled'",
        ),
        (
            "  - {trigger: keep, source: cancel_confirm, dest: idle}",
            "  - {trigger: kept, source: cancel_confirm, dest: idle}",
            "unknown trigger 'kept'",
        ),
        (
            "  - {trigger: keep, source: cancel_confirm, dest: idle}",
            "  - {trigger: pick, source: cancel_pick, dest: idle}",
            "trigger 'pick' from 'cancel_pick' is already defined",
        ),
        (
            '  - {trigger: need_name, source: "*", dest: ask_name}',
            '  - {trigger: need_name, source: "*", dest: ask_phone}',
            "'need_name' must lead to a state asking for 'name'",
        ),
        (
            "  date: {extractor: date, validators: [not_past, within_horizon, open_day]}",
            "  date: {extractor: date, validators: [not_past, within_horizon, opn_day]}",
            "slot 'date': unknown validator 'opn_day'",
        ),
        (
            "  phone: {extractor: phone, validators: [valid_phone]}",
            "  phone: {extractor: phone, validators: [free_time]}",
            "validator 'free_time' checks time values, not phone",
        ),
        (
            "  name: {extractor: name, validators: [name_like]}",
            "  name: {extractor: nme, validators: [name_like]}",
            "slot 'name': unknown extractor 'nme'",
        ),
        (
            "  ask_name: {flow: booking, kind: ask, slot: name}",
            "  ask_name: {flow: booking, kind: ask, slot: nickname}",
            "an ask state needs a known slot, got 'nickname'",
        ),
        (
            "  ask_name: {flow: booking, kind: ask, slot: name}",
            "  ask_name: {flow: booking, kind: ask, slot: name, colour: red}",
            "unknown key 'colour'",
        ),
        (
            "  booked: {flow: idle, kind: rest, text: booked}",
            "  booked: {flow: idle, kind: rest, text: booked_text}",
            "state 'booked': no text 'booked_text' in en, ru",
        ),
        (
            '    ask_time: "What time on {date} suits you?"',
            '    ask_time: "What time on {dat} suits you?"',
            "text 'ask_time': unknown placeholder {dat}",
        ),
        (
            '    ask_time: "What time on {date} suits you?"',
            '    ask_time: "What time on {date suits you?"',
            "text 'ask_time': malformed placeholder",
        ),
        (
            '    label_phone: "Phone"',
            '    label_shoe_size: "Shoe size"\n    label_phone: "Phone"',
            "unknown text 'label_shoe_size'",
        ),
        ("  greeting:\n    en: [hi,", "  greting:\n    en: [hi,", "unknown intent 'greting'"),
        ("initial: start", "initial: begin", "unknown initial state 'begin'"),
        ("  cancel: []", "  refund: []\n  cancel: []", "unknown flow 'refund'"),
    ],
)
def test_broken_template_names_file_and_line(tmp_path: Path, old: str, new: str, message: str) -> None:
    path, line = _variant(tmp_path, old, new)
    problems = _problems(path)
    assert any(p.startswith(f"{path}:{line}: ") and message in p for p in problems), problems


def test_missing_ru_text_points_at_the_locale(tmp_path: Path) -> None:
    path, _ = _variant(tmp_path, '    button_keep: "Оставить запись"\n', "")
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    ru_line = len(lines) - lines[::-1].index("  ru:")  # the texts' ru, after the formats' one
    assert _problems(path) == [f"{path}:{ru_line}: locale 'ru': texts missing: button_keep"]


def test_invalid_yaml_names_its_line(tmp_path: Path) -> None:
    path, line = _variant(tmp_path, "initial: start\n", "initial: start\n  bad: [indent\n")
    problems = _problems(path)
    assert len(problems) == 1 and problems[0].startswith(f"{path}:") and "invalid YAML" in problems[0]
    assert int(problems[0].split(":")[1]) >= line


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path, _ = _variant(tmp_path, "  - {trigger: keep, source: cancel_confirm, dest: idle}",
                       "  - {trigger: keep, source: cancel_confirm, dest: nowhere}")  # fmt: skip
    text = path.read_text(encoding="utf-8").replace("[valid_email]", "[valid_mail]")
    path.write_text(text, encoding="utf-8")
    problems = _problems(path)
    assert any("unknown destination state 'nowhere'" in p for p in problems)
    assert any("unknown validator 'valid_mail'" in p for p in problems)


def test_not_a_mapping_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- just\n- a list\n", encoding="utf-8")
    assert _problems(path) == [f"{path}:1: a template is a mapping (name, slots, states, ...)"]
    assert "cannot read template" in _problems(tmp_path / "absent.yaml")[0]
