"""The one exception tree of :mod:`dialogs`.

    DialogError
    ├── TemplateError        a template YAML is invalid (carries ``file:line: message`` items)
    ├── IllegalTransition    the engine fired a trigger the template does not allow from the current state
    └── SessionError         a stored session cannot be read (bad JSON, unknown schema version)
"""

from __future__ import annotations

from dataclasses import dataclass


class DialogError(Exception):
    """Root of every error raised by :mod:`dialogs`."""


@dataclass(frozen=True)
class Problem:
    """One located problem in a YAML file, printed as ``file:line: message``."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


class TemplateError(DialogError):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class IllegalTransition(DialogError):
    """A bug: the engine tried a state change its template's machine does not have."""


class SessionError(DialogError):
    """A session value in storage is not a valid session document."""
