"""Fitting replies into a channel's limits: split long texts, shorten labels, lay buttons out in rows, and
degrade buttons to numbered text ("1) 17:00") where a channel cannot show them.

A numbered reply is answered by typing the number or the label; the engine maps that back to the button
(``Session.offered``), and :func:`choose` does the same for the terminal.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from channels.base import OutButton


def utf16_len(text: str) -> int:
    """Telegram measures text in UTF-16 code units (an emoji outside the BMP counts 2)."""
    return len(text.encode("utf-16-le")) // 2


def split_text(text: str, limit: int, size: Callable[[str], int] = len) -> list[str]:
    """Cut ``text`` into parts of at most ``limit`` (as measured by ``size``), preferring to break at a line
    break, then at a space, when one lies in the second half of the part."""
    parts: list[str] = []
    rest = text
    while size(rest) > limit:
        cut = _fit(rest, limit, size)
        brk = rest.rfind("\n", 0, cut)
        if brk <= cut // 2:
            brk = rest.rfind(" ", 0, cut)
        if brk > cut // 2:
            parts.append(rest[:brk])
            rest = rest[brk + 1 :]
        else:
            parts.append(rest[:cut])
            rest = rest[cut:]
    parts.append(rest)
    return parts


def _fit(text: str, limit: int, size: Callable[[str], int]) -> int:
    """How many leading characters of ``text`` fit in ``limit`` (at least one, so splitting advances)."""
    if size is len:
        return limit
    used = 0
    for index, char in enumerate(text):
        used += size(char)
        if used > limit:
            return max(index, 1)
    return len(text)


def shorten(label: str, limit: int) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


def numbered(text: str, buttons: Sequence[OutButton]) -> str:
    lines = [f"{number}) {button.label}" for number, button in enumerate(buttons, 1)]
    return "\n".join(([text, ""] if text else []) + lines)


def choose(line: str, buttons: Sequence[OutButton]) -> OutButton | None:
    """The button a typed line means: its number ("2", "2)", "2.") or its label (any letter case)."""
    typed = line.strip()
    number = typed.rstrip(").")
    if number.isdigit() and 1 <= int(number) <= len(buttons):
        return buttons[int(number) - 1]
    wanted = typed.casefold()
    return next((b for b in buttons if b.label.strip().casefold() == wanted), None)


def layout(buttons: Sequence[OutButton], max_per_row: int, max_rows: int) -> list[list[OutButton]]:
    """Rows of buttons: short labels (times, dates) share a row, long ones get a row each, and rows widen
    up to ``max_per_row`` when there would be more than ``max_rows``. The caller checks the buttons fit."""
    longest = max((len(b.label) for b in buttons), default=0)
    preferred = 4 if longest <= 5 else 3 if longest <= 10 else 2 if longest <= 18 else 1
    per_row = min(max_per_row, max(preferred, math.ceil(len(buttons) / max_rows)))
    return [list(buttons[i : i + per_row]) for i in range(0, len(buttons), per_row)]
