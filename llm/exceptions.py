"""The one exception tree of :mod:`llm`.

LLMError
├── ProviderError             the API answered with an error or could not be reached (after the one retry)
│   └── ProviderTimeout       no answer within the configured timeout (the tokens may have been spent)
├── BadCompletion             the API answered, but not with what was asked (no text, JSON not matching the schema)
└── SpeechError               a voice note could not be turned into text
    ├── AudioTooLarge         more bytes than the configured ``max_bytes`` (checked before decoding)
    ├── AudioTooLong          longer than ``max_seconds`` (from the container, else while decoding)
    ├── BadAudio              not audio PyAV can decode (corrupt, truncated, an image, ...)
    ├── LanguageNotSupported  the model cannot transcribe the tenant's language (an English-only model)
    └── ModelUnavailable      the model is not installed here, or faster-whisper is not (never downloaded)
"""

from __future__ import annotations


class LLMError(Exception):
    """Root of every error raised by :mod:`llm`."""


class ProviderError(LLMError):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ProviderTimeout(ProviderError):
    pass


class BadCompletion(LLMError):
    pass


class SpeechError(LLMError):
    pass


class AudioTooLarge(SpeechError):
    pass


class AudioTooLong(SpeechError):
    pass


class BadAudio(SpeechError):
    pass


class LanguageNotSupported(SpeechError):
    pass


class ModelUnavailable(SpeechError):
    pass
