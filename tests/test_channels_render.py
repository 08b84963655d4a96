"""Shared rendering (splitting, numbering, layout), the terminal and web channels, and the rate-limit data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from channels import terminal, web
from channels.base import OutboundMessage, OutButton, header
from channels.exceptions import BadPayload
from channels.ratelimit import LIMITS
from channels.render import choose, layout, numbered, shorten, split_text, utf16_len

FIXTURES = Path(__file__).parents[1] / "fixtures" / "channels" / "web"
TIMES = tuple(OutButton(label=t, data=f"time:{t}") for t in ("17:00", "17:30", "18:00"))


def test_split_keeps_short_text_whole() -> None:
    assert split_text("hello", 10) == ["hello"]
    assert split_text("", 10) == [""]


def test_split_prefers_line_breaks_then_spaces() -> None:
    assert split_text("first line here\nsecond line", 20) == ["first line here", "second line"]
    assert split_text("a\nbcdefghijkl mnopqrstuv", 20) == ["a\nbcdefghijkl", "mnopqrstuv"]
    assert split_text("aaaa bbbb cccc", 10) == ["aaaa bbbb", "cccc"]


def test_split_cuts_hard_when_no_break_is_near() -> None:
    parts = split_text("x" * 25, 10)
    assert parts == ["x" * 10, "x" * 10, "x" * 5]


def test_split_by_utf16_never_exceeds_the_limit() -> None:
    text = ("😀" * 3000) + " tail"
    parts = split_text(text, 4096, utf16_len)
    assert all(utf16_len(p) <= 4096 for p in parts)
    assert "".join(parts).replace(" ", "") == text.replace(" ", "")
    assert utf16_len("😀") == 2


def test_shorten_and_numbered() -> None:
    assert shorten("Hair colouring and styling", 10) == "Hair colo…"
    assert len(shorten("x" * 50, 40)) == 40
    assert numbered("When?", TIMES) == "When?\n\n1) 17:00\n2) 17:30\n3) 18:00"
    assert numbered("", TIMES[:1]) == "1) 17:00"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("2", "time:17:30"),
        (" 3) ", "time:18:00"),
        ("1.", "time:17:00"),
        ("17:30", "time:17:30"),
        ("4", None),
        ("0", None),
        ("tomorrow", None),
    ],
)
def test_choose_by_number_or_label(line: str, expected: str | None) -> None:
    pressed = choose(line, TIMES)
    assert (pressed.data if pressed else None) == expected


def test_choose_label_ignores_case() -> None:
    services = (OutButton(label="Haircut", data="service:haircut"),)
    assert choose("HAIRCUT", services) == services[0]


def test_layout_packs_short_labels_and_respects_limits() -> None:
    many = tuple(OutButton(label=f"1{i}:00", data=str(i)) for i in range(10))
    assert [len(row) for row in layout(many, 8, 100)] == [4, 4, 2]
    long = tuple(OutButton(label=f"A rather long service name {i}", data=str(i)) for i in range(10))
    rows = layout(long, 5, 6)  # one per row would be 10 rows: widened to fit 6
    assert len(rows) <= 6 and all(len(r) <= 5 for r in rows)
    assert [b for r in rows for b in r] == list(long)


def test_terminal_render_and_parse_line() -> None:
    out = OutboundMessage(tenant="t", channel="terminal", user_id="u", text="Pick a time", buttons=TIMES)
    assert terminal.render(out) == "Pick a time\n\n1) 17:00\n2) 17:30\n3) 18:00"
    assert terminal.parse_line("2", TIMES) == ("", "time:17:30")
    assert terminal.parse_line("18:00", TIMES) == ("", "time:18:00")
    assert terminal.parse_line("Anna Smith", TIMES) == ("Anna Smith", None)
    assert terminal.parse_line("2", ()) == ("2", None)


def test_web_parse_fixtures() -> None:
    text = web.parse("demo", (FIXTURES / "text.json").read_bytes()).messages[0]
    assert (text.channel, text.user_id, text.event_id, text.text) == (
        "web",
        "web-5f3a9c",
        "web-5f3a9c-1",
        "Hi, can I get a haircut tomorrow?",
    )
    button = web.parse("demo", (FIXTURES / "button.json").read_bytes()).messages[0]
    assert (button.button, button.text) == ("time:17:00", "")


def test_web_parse_without_event_id_gets_a_fresh_one() -> None:
    body = json.dumps({"user_id": "u1", "text": "hi"}).encode()
    first, second = (web.parse("demo", body).messages[0] for _ in range(2))
    assert first.event_id and first.event_id != second.event_id


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"text": "hi"}',
        b'{"user_id": "u1"}',
        b'{"user_id": "u 1", "text": "hi"}',
        b'{"user_id": "u1", "text": "hi", "admin": true}',
        json.dumps({"user_id": "u", "text": "hi", "button": "b" * 65}).encode(),
    ],
)
def test_web_parse_rejects_bad_bodies(body: bytes) -> None:
    with pytest.raises(BadPayload):
        web.parse("demo", body)


def test_web_render() -> None:
    out = OutboundMessage(
        tenant="t", channel="web", user_id="u", text="When?", buttons=TIMES[:1], event_id="e", index=2
    )
    assert web.render(out).model_dump() == {
        "text": "When?",
        "buttons": [{"label": "17:00", "data": "time:17:00"}],
        "event_id": "e",
        "index": 2,
    }


def test_header_lookup_ignores_case() -> None:
    assert header({"x-hub-signature-256": "v"}, "X-Hub-Signature-256") == "v"
    assert header({}, "X-Anything") is None


def test_rate_limits_cover_every_channel() -> None:
    assert {limit.count for limit in LIMITS["telegram"]} == {1, 30}
    assert LIMITS["whatsapp"][0].count == 80 and LIMITS["vk"][0].count == 20
    assert set(LIMITS) == {"telegram", "whatsapp", "vk", "web", "terminal"}
