"""The terminal channel (``bookingbot chat``): replies as text with numbered buttons, typed lines in."""

from __future__ import annotations

from collections.abc import Sequence

from channels.base import OutboundMessage, OutButton
from channels.render import choose, numbered


def render(out: OutboundMessage) -> str:
    return numbered(out.text, out.buttons)


def parse_line(line: str, buttons: Sequence[OutButton]) -> tuple[str, str | None]:
    """``(text, pressed button data)``: a number or a label of the last reply's buttons presses that button
    (and sends no text, as a real button press does); anything else is typed text."""
    pressed = choose(line, buttons)
    if pressed is not None:
        return "", pressed.data
    return line, None
