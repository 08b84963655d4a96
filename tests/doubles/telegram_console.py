"""A customer at the terminal, talking to a polling bot through the Telegram double: the README's "Connect your
Telegram bot" without Telegram (offline, or before a real token exists).

    python -m tests.doubles.telegram_console --token 123456:ABC --port 8081

It runs the Bot API double (``tests/doubles/telegram.py``) on the port and plays one customer: every line typed
is that customer's message, a number presses that button of the bot's newest keyboard, and every message the bot
sends is printed with its buttons numbered. Point the tenant's ``api_base`` at ``http://127.0.0.1:8081`` and run
``bookingbot poll --tenant demo`` beside it.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import threading
import time
from contextlib import suppress
from typing import IO, Any

from . import cli
from .telegram import TelegramDouble

CUSTOMER = {"id": 5550001, "is_bot": False, "first_name": "Alex", "language_code": "en"}
CHAT = {"id": CUSTOMER["id"], "first_name": CUSTOMER["first_name"], "type": "private"}


class Console:
    """One customer's side of the chat: what they type becomes updates, what the bot sends becomes lines."""

    def __init__(self, double: TelegramDouble, token: str) -> None:
        self.double, self.token = double, token
        self.shown = 0  # double.sent entries already printed
        self.keyboard: list[tuple[dict[str, Any], dict[str, Any]]] = []  # (bot message, button) of the newest
        self._ids = itertools.count(1)

    def type(self, line: str) -> None:
        """The customer sends ``line`` (a number within the newest keyboard presses that button)."""
        line = line.strip()
        if line.isdigit() and 1 <= int(line) <= len(self.keyboard):
            message, button = self.keyboard[int(line) - 1]
            query = {"id": f"console-{next(self._ids)}", "from": CUSTOMER, "message": message,
                     "chat_instance": "console", "data": button["callback_data"]}  # fmt: skip
            self.double.queue_update(self.token, {"callback_query": query})
        elif line:
            message = {"message_id": next(self._ids), "from": CUSTOMER, "chat": CHAT, "date": int(time.time()),
                       "text": line}  # fmt: skip
            self.double.queue_update(self.token, {"message": message})

    def replies(self) -> list[str]:
        """The bot's messages to this customer since the last call, as lines to print."""
        lines: list[str] = []
        for sent in self.double.sent[self.shown :]:
            if sent["chat_id"] != str(CHAT["id"]):
                continue
            lines.append(f"bot: {sent['text']}")
            rows = (sent.get("reply_markup") or {}).get("inline_keyboard") or []
            buttons = [b for row in rows for b in row if "callback_data" in b]
            if buttons:
                message = {"message_id": sent["message_id"], "chat": CHAT, "date": int(time.time()),
                           "text": sent["text"], "reply_markup": sent["reply_markup"]}  # fmt: skip
                self.keyboard = [(message, b) for b in buttons]
                lines.append("     " + "  ".join(f"[{i}] {b['text']}" for i, b in enumerate(buttons, 1)))
        self.shown = len(self.double.sent)
        return lines


async def run(token: str, port: int, lines: IO[str] = sys.stdin) -> None:
    double = TelegramDouble(token)
    await double.start(port=port)
    print(f"Telegram double on {double.url}: set the tenant's telegram api_base to it, then run "
          "`bookingbot poll --tenant <id>`. Type as the customer; a number presses a button; Ctrl-D ends.",
          flush=True)  # fmt: skip
    console, typed = Console(double, token), _reader(lines)
    try:
        while True:
            with suppress(TimeoutError):
                line = await asyncio.wait_for(typed.get(), 0.1)
                if not line:  # end of input
                    return
                console.type(line)
            for reply in console.replies():
                print(reply, flush=True)
    finally:
        await double.stop()


def _reader(lines: IO[str]) -> asyncio.Queue[str]:
    """Lines typed, read by a daemon thread: a blocked read must not keep Ctrl-C from ending the process."""
    loop, typed = asyncio.get_running_loop(), asyncio.Queue[str]()

    def read() -> None:
        for line in iter(lines.readline, ""):
            loop.call_soon_threadsafe(typed.put_nowait, line)
        loop.call_soon_threadsafe(typed.put_nowait, "")

    threading.Thread(target=read, daemon=True).start()
    return typed


if __name__ == "__main__":
    parser = cli("A customer at the terminal, talking to a polling bot through the Telegram double")
    parser.add_argument("--token", required=True, help="the bot token the tenant's config uses")
    args = parser.parse_args()
    with suppress(KeyboardInterrupt):
        try:
            asyncio.run(run(args.token, args.port))
        except OSError as exc:  # the port is taken (often: a console from before is still running)
            raise SystemExit(f"cannot listen on 127.0.0.1:{args.port}: {exc.strerror}") from None
