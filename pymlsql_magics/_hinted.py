"""The root both exception hierarchies share: an error says what happened, then what to do."""

from __future__ import annotations


class HintedError(Exception):
    """An error whose str() is its message and, on a line of its own, "Hint: " and the fix."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        message = super().__str__()
        return f"{message}\nHint: {self.hint}" if self.hint else message
