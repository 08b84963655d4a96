"""The one exception tree of :mod:`llm`.

LLMError
├── ProviderError        the API answered with an error or could not be reached (after the one retry)
│   └── ProviderTimeout  no answer within the configured timeout (the tokens may have been spent)
└── BadCompletion        the API answered, but not with what was asked (no text, JSON not matching the schema)
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
