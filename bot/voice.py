"""Voice notes as dialog input: fetch the audio through its channel, transcribe it in the tenant's language
(:mod:`llm.stt`), and when that cannot work, tell the engine why (so the customer gets a clear answer).

The transcript then goes through the dialog exactly like typed text. One :class:`Voice` per process (on the
:class:`~bot.runtime.Runtime`); each model is loaded on the first voice note that needs it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from bot import metrics
from bot.settings import Settings
from channels.base import InboundMessage
from channels.exceptions import PermanentSendError
from dialogs.model import Reply, UserInput, VoiceProblem
from llm.exceptions import (
    AudioTooLarge,
    AudioTooLong,
    BadAudio,
    LanguageNotSupported,
    ModelUnavailable,
    SpeechError,
)
from llm.stt import SpeechToText, SttConfig

if TYPE_CHECKING:
    from bot.runtime import Tenant

log = logging.getLogger(__name__)

MediaFetch = Callable[[InboundMessage], Awaitable[bytes]]  # the audio of a message's voice note

_PROBLEMS: dict[type[Exception], VoiceProblem] = {
    AudioTooLarge: "voice_too_long",
    AudioTooLong: "voice_too_long",
    BadAudio: "voice_unreadable",
    PermanentSendError: "voice_unreadable",  # the provider has no such file (any more)
    LanguageNotSupported: "voice_unsupported",
    ModelUnavailable: "voice_unsupported",
}


class Voice:
    def __init__(self, settings: Settings) -> None:
        self.config = settings.voice
        self._cache_dir = str(Path(settings.data_dir) / "models")
        self._stt: dict[str, SpeechToText] = {}  # by model

    def stt(self, tenant: Tenant) -> SpeechToText:
        """The tenant's transcriber (one per model, shared by the tenants that use it)."""
        model = tenant.config.voice.model or self.config.model
        if model not in self._stt:
            config = self.config.model_dump(include=set(SttConfig.model_fields)) | {
                "model": model,
                "cache_dir": self._cache_dir,
            }
            self._stt[model] = SpeechToText(SttConfig.model_validate(config))
        return self._stt[model]

    async def hear(self, msg: InboundMessage, tenant: Tenant, fetch: MediaFetch | None) -> UserInput:
        """The dialog input of a voice note: its transcript, or no text and the reason.

        A message that already carries text (a replayed transcript) is not transcribed again. A transient
        fetch failure (``RetryLater``) propagates: the drain retries the message."""
        if msg.text.strip():
            return UserInput(text=msg.text, voice=True)
        if not tenant.config.voice.enabled or fetch is None:
            return UserInput(voice=True)
        started = time.perf_counter()
        try:
            audio = await fetch(msg)
            transcript = await self.stt(tenant).transcribe(audio, tenant.profile.locale)
        except (SpeechError, PermanentSendError) as exc:
            problem = _PROBLEMS[type(exc)]
            log.log(logging.WARNING if problem == "voice_unsupported" else logging.INFO, "%s: %s", msg.tenant, exc)
            metrics.VOICE_NOTES.labels(msg.channel, problem).inc()
            return UserInput(voice=True, voice_problem=problem, voice_facts={"minutes": self._minutes()})
        metrics.VOICE_SECONDS.observe(time.perf_counter() - started)
        if not transcript.text:
            metrics.VOICE_NOTES.labels(msg.channel, "voice_unheard").inc()
            return UserInput(voice=True, voice_problem="voice_unheard")
        metrics.VOICE_NOTES.labels(msg.channel, "transcribed").inc()
        return UserInput(text=transcript.text, voice=True)

    def echo(self, tenant: Tenant, heard: UserInput) -> list[Reply]:
        """``voice.echo``: "I heard: ..." before the answer to a transcribed voice note."""
        if not (self.config.echo and heard.voice and heard.text):
            return []
        return [Reply(key="voice_echo", text=tenant.engine.text("voice_echo", text=heard.text))]

    def _minutes(self) -> str:
        return f"{self.config.max_seconds / 60:g}"

    def close(self) -> None:
        for stt in self._stt.values():
            stt.close()
