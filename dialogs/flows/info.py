"""Questions about the business, answered from the tenant's config (``info:``, ``services[].price``, ``hours``),
then the dialog continues where it was. A question the config cannot answer gets "I don't know that", with a
colleague offered; the bot never makes an answer up."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import cached_property

from rapidfuzz import fuzz

from dialogs.flows.base import Turn
from dialogs.flows.manage import ManageFlow
from dialogs.model import Reply
from dialogs.phrases import IntentMatcher, normalize
from dialogs.ports import BusinessInfo, ServiceInfo
from dialogs.schema import RESTING
from dialogs.validators import parse_date

INFO_INTENTS = ("ask_price", "ask_address", "ask_payment", "ask_hours")
FAQ_SIMILARITY = 80  # rapidfuzz token_set_ratio of the message and a FAQ question (or a synonym)
# How a question starts, in en and ru (a message ending in "?" is a question anyway).
_QUESTION = re.compile(
    r"^(?:what|where|when|how|why|which|who|do|does|did|is|are|can|could|will|would|have|has|"
    r"где|как|когда|сколько|почему|зачем|какой|какая|какие|что|есть\s+ли|можно\s+ли|а\s+\w+\s+ли)(?!\w)"
)


def is_question(text: str) -> bool:
    norm = normalize(text)
    return (norm.endswith("?") and len(norm) > 1) or bool(_QUESTION.match(norm))


class _Faq:
    """The tenant's free-text FAQ: a message matches a question or one of its synonyms."""

    def __init__(self, info: BusinessInfo) -> None:
        self._items = [
            (IntentMatcher({"faq": {"any": item.synonyms}}) if item.synonyms else None, item.question, item.answer)
            for item in info.faq
        ]

    def answer(self, text: str) -> str | None:
        norm = normalize(text)
        for synonyms, question, answer in self._items:
            if (synonyms and synonyms.all(text)) or fuzz.token_set_ratio(norm, normalize(question)) >= FAQ_SIMILARITY:
                return answer
        return None


class InfoFlow(ManageFlow):
    @cached_property
    def _faq(self) -> _Faq:
        return _Faq(self.profile.info)

    async def _answer(self, turn: Turn, intent: str | None, found: Mapping[str, str], text: str) -> bool:
        """Answer a question about the business, if the message asks one; the dialog continues after."""
        faq = self._faq.answer(text) if is_question(text) or intent is None else None
        reply = self._reply("info_answer", {"answer": faq}) if faq else await self._topic(turn, intent, found)
        if reply is None:
            return False
        self._say(turn, reply)
        if self._state(turn).kind not in RESTING:
            await self._reprompt(turn)
        return True

    async def _topic(self, turn: Turn, intent: str | None, found: Mapping[str, str]) -> Reply | None:
        info = self.profile.info
        if intent == "ask_price":
            return self._price(found.get("service"))
        if intent == "ask_hours":
            return self._hours(found.get("date"))
        answer = {"ask_address": _joined(info.address, info.directions), "ask_payment": info.payment}.get(intent or "")
        return self._reply("info_answer", {"answer": answer}) if answer else None

    def _price(self, service_id: str | None) -> Reply | None:
        service = self.profile.service(service_id or "")
        if service is not None:
            facts = {"service": service.label, "price": service.price or ""}
            return self._reply("info_price", facts) if service.price else None
        priced: Sequence[ServiceInfo] = [s for s in self.profile.services if s.price]
        lines = "\n".join(self.text("booking_price", service=s.label, price=s.price or "") for s in priced)
        return self._reply("info_prices", {"prices": lines}) if priced else None

    def _hours(self, iso: str | None) -> Reply:
        fmt, hours = self._format, self.profile.hours
        week = "; ".join(
            f"{fmt.weekdays[first]}{'–' + fmt.weekdays[last] if last > first else ''} {', '.join(hours[first])}"
            for first, last in _runs(hours)
        )
        day = parse_date(iso or "")
        if day is not None and day.weekday() not in hours:
            return self._reply("info_closed", {"on_day": fmt.on_day[day.weekday()], "hours": week})
        return self._reply("info_hours", {"hours": week})

    async def _unknown(self, turn: Turn) -> None:
        """A question nothing in the config answers: say so and offer a colleague (not at a yes/no question,
        where a "yes" must keep its meaning)."""
        offer = self._state(turn).kind != "confirm"
        human = (self._button("button_yes", "intent:human"),) if offer else ()
        self._say(turn, self._reply("info_unknown" if offer else "info_dont_know", {}, human))
        if self._state(turn).kind not in RESTING:
            await self._reprompt(turn)


def _runs(hours: Mapping[int, Sequence[str]]) -> list[tuple[int, int]]:
    """Consecutive open weekdays with the same hours, as (first, last) weekday pairs: Mon–Sat 10:00-20:00."""
    runs: list[tuple[int, int]] = []
    for day in sorted(hours):
        if runs and runs[-1][1] == day - 1 and hours[runs[-1][0]] == hours[day]:
            runs[-1] = (runs[-1][0], day)
        else:
            runs.append((day, day))
    return runs


def _joined(*parts: str | None) -> str | None:
    return " ".join(p for p in parts if p) or None
