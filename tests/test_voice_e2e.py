"""Voice notes end to end, per channel: a provider double posts a voice webhook and serves the audio (the
committed fixtures/voice clips); the server ingests, the drain fetches the audio through the channel,
tiny.en transcribes it, the dialog goes on as if the customer had typed, and the double gets the reply.

Each transcription costs ~1 s of CPU, so each channel hears one clip; Telegram books a whole haircut."""

from __future__ import annotations

import copy
import itertools
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from _stack import A, Stack, fixture, stack
from ruamel.yaml import YAML
from sqlalchemy import text

from bot import keys
from bot.devtools.export import export_fixture

VOICE = Path(__file__).resolve().parent.parent / "fixtures" / "voice"
_ids = itertools.count(1)


@pytest.fixture(scope="module")
async def s(services_env: dict[str, str]) -> AsyncIterator[Stack]:
    async with stack(services_env) as st:
        yield st


def clip(name: str) -> bytes:
    return (VOICE / name).read_bytes()


def new_user() -> int:
    return 700_000_000 + next(_ids)


async def heard_a_haircut(s: Stack, conversation: str) -> None:
    """The dialog read "a haircut tomorrow at five pm" (17:00 itself may be taken by an earlier test)."""
    session = await s.services.runtime.sessions.load(s.a, conversation)
    assert session is not None
    assert (session.slots.get("service"), session.slots.get("date")) == ("haircut", "2026-11-24"), session.slots


# --- Telegram: getFile + file download ---------------------------------------------------------------------


async def tg_send(s: Stack, user: int, **message: Any) -> list[dict[str, Any]]:
    """One update from ``user`` (a voice note: ``voice=...``); the replies it got."""
    name = "voice" if "voice" in message else "contact" if "contact" in message else "text"
    update = copy.deepcopy(fixture("telegram", name, update_id=920_000_000 + next(_ids)))
    update["message"]["from"]["id"] = update["message"]["chat"]["id"] = user
    update["message"].update(message)
    before = len([m for m in s.telegram.sent if m["chat_id"] == str(user)])
    delivery = await s.telegram.deliver(s.hook("telegram", s.a), update, A.tg_secret)
    assert delivery.status == 200, delivery.text
    await s.idle()
    return [m for m in s.telegram.sent if m["chat_id"] == str(user)][before:]


def tg_voice(s: Stack, name: str | None = None, content: bytes | None = None) -> dict[str, Any]:
    file_id = f"voice-{next(_ids)}"
    audio = content if content is not None else clip(name or "")
    s.telegram.add_file(file_id, audio)
    return {
        "duration": 3,
        "mime_type": "audio/ogg",
        "file_id": file_id,
        "file_unique_id": file_id,
        "file_size": len(audio),
    }


async def test_a_voice_note_to_telegram_books_a_haircut(s: Stack) -> None:
    user = new_user()
    asked = await tg_send(s, user, voice=tg_voice(s, "haircut_tomorrow_at_five.ogg"))  # "A haircut tomorrow at five pm"
    assert asked and "name" in asked[-1]["text"].lower(), asked
    await tg_send(s, user, voice=tg_voice(s, "name_john.ogg"))  # "My name is John."
    confirm = await tg_send(s, user, contact={"phone_number": "447700900123", "first_name": "J", "user_id": user})
    assert "17:00" in confirm[-1]["text"] and "John" in confirm[-1]["text"]
    booked = await tg_send(s, user, voice=tg_voice(s, "yes.ogg"))  # "Yes."
    assert "17:00" in booked[-1]["text"]
    async with s.services.runtime.db.connect() as conn:
        rows = (
            await conn.execute(
                text("SELECT service, name FROM bookings WHERE tenant = :t AND customer = :c"),
                {"t": s.a, "c": f"telegram:{user}"},
            )
        ).all()
    assert [tuple(r) for r in rows] == [("haircut", "John")]
    # the message log keeps each transcript with its voice reference (what `bookingbot export` writes out)
    await s.services.runtime.log.flush()
    logged = await s.services.runtime.log.conversation(s.a, f"telegram:{user}")
    heard = [(m.voice, m.text) for m in logged if m.direction == "in" and m.voice]
    assert len(heard) == 3 and all(ref and ref.startswith("voice-") for ref, _ in heard)
    assert "john" in (heard[1][1] or "").lower()
    exported = await export_fixture(s.services.runtime, s.a, f"telegram:{user}")
    assert exported is not None
    turns = YAML(typ="safe", pure=True).load(exported)["turns"]  # as replay reads it (YAML 1.2)
    assert [(t["voice"], t["heard"]) for t in turns if "voice" in t] == heard


async def test_corrupt_and_overlong_voice_notes_get_a_clear_answer_and_the_dialog_goes_on(s: Stack) -> None:
    user = new_user()
    await tg_send(s, user, text="haircut tomorrow")
    corrupt = await tg_send(s, user, voice=tg_voice(s, content=b"OggS\x00\x02 this is not audio" * 20))
    assert [m["text"] for m in corrupt] == [s.services.runtime.tenant(s.a).engine.text("voice_unreadable")]
    assert "16:00" in str(corrupt[-1].get("reply_markup"))  # the offered times are offered again
    long = await tg_send(s, user, voice=tg_voice(s, "too_long.ogg"))
    assert len(long) == 1 and "under 2 min" in long[0]["text"]
    gone = await tg_send(s, user, voice={**tg_voice(s, "yes.ogg"), "file_id": "deleted-file"})
    assert len(gone) == 1 and "couldn't play" in gone[0]["text"]
    after = await tg_send(s, user, text="4pm")  # not stuck: the next message is handled as usual
    assert "name" in after[-1]["text"].lower()
    assert await s.services.runtime.redis.llen(keys.deadletter(s.a)) == 0  # type: ignore[misc]


# --- WhatsApp: media URL with the bearer token --------------------------------------------------------------


async def test_whatsapp_voice_note(s: Stack) -> None:
    wa_id = f"44780{new_user()}"
    media_id = f"{new_user()}"
    s.whatsapp.add_media(media_id, clip("haircut_tomorrow_at_five.ogg"))
    payload = copy.deepcopy(fixture("whatsapp", "voice"))
    value = payload["entry"][0]["changes"][0]["value"]
    value["metadata"]["phone_number_id"] = A.wa_number
    value["contacts"][0]["wa_id"] = wa_id
    value["messages"][0].update({"from": wa_id, "id": f"wamid.voice{next(_ids)}"})
    value["messages"][0]["audio"]["id"] = media_id
    assert (await s.whatsapp.deliver(s.hook("whatsapp", s.a), payload, A.wa_app_secret)).status == 200
    await s.idle()
    assert [m for m in s.whatsapp.sent if m.get("to") == wa_id]
    await heard_a_haircut(s, f"whatsapp:{wa_id}")
    assert [
        c.method for c in s.whatsapp.calls if c.params.get("id") == media_id or c.params.get("mid") == media_id
    ] == [
        "media",
        "download",
    ]


# --- VK: the audio_message's link_ogg ---------------------------------------------------------------------


async def test_vk_voice_note(s: Stack) -> None:
    user = new_user()
    url = s.vk.add_file(f"{user}.ogg", clip("haircut_tomorrow_at_five.ogg"))
    event = copy.deepcopy(fixture("vk", "voice", group_id=A.vk_group, event_id=f"voice{next(_ids)}"))
    event.pop("secret", None)
    message = event["object"]["message"]
    message["from_id"] = message["peer_id"] = user
    message["attachments"][0]["audio_message"].update({"link_ogg": url, "owner_id": user})
    assert (await s.vk.deliver(s.hook("vk", s.a), event, A.vk_secret)).status == 200
    await s.idle()
    assert [m for m in s.vk.sent if m["peer_id"] == str(user)]
    await heard_a_haircut(s, f"vk:{user}")


# --- web chat: the page's recording, uploaded -------------------------------------------------------------


async def test_web_chat_voice_upload(s: Stack) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        page = await http.get(f"{s.url}/chat/{s.a}")
        assert 'id="record"' in page.text
        user = re.search(r'data-user="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        auth = {"X-Chat-Token": re.search(r'data-token="([^"]+)"', page.text).group(1)}  # type: ignore[union-attr]
        voice = f"{s.url}/chat/{s.a}/voice"
        audio = clip("haircut_tomorrow_at_five.ogg")
        ogg = {"Content-Type": "audio/ogg; codecs=opus"}
        params = {"user_id": user, "event_id": f"{user}-v1"}
        posted = await http.post(voice, params=params, content=audio, headers=auth | ogg)
        assert posted.status_code == 202, posted.text
        api = f"{s.url}/chat/{s.a}/messages"
        replies = (await http.get(api, params={"user_id": user, "after": 0, "wait": 20}, headers=auth)).json()[
            "replies"
        ]
        assert replies
        await s.idle()
        await heard_a_haircut(s, f"web:{user}")
        # refused: no token, not audio, empty, over voice.max_bytes
        assert (await http.post(voice, params=params, content=audio, headers=ogg)).status_code == 401
        assert (
            await http.post(voice, params=params, content=b"{}", headers=auth | {"Content-Type": "application/json"})
        ).status_code == 415
        assert (await http.post(voice, params=params, content=b"", headers=auth | ogg)).status_code == 400
        big = b"\0" * (s.settings.voice.max_bytes + 1)
        assert (await http.post(voice, params=params, content=big, headers=auth | ogg)).status_code == 413
