"""The one exception hierarchy of pymlsql_magics: each error says what happened and what to do."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._hinted import HintedError

if TYPE_CHECKING:
    from ._results import FleetResult


class PymlsqlError(HintedError):
    """Base for every error raised on purpose by pymlsql_magics."""

    exit_code = 1

    def add_outcome(self, outcome: str) -> None:
        """Adds what was done about the failure (say, released what it created) to the message."""
        self.args = (f"{self.args[0]}; {outcome}", *self.args[1:])


class ConfigError(PymlsqlError):
    """Missing or contradictory settings."""

    exit_code = 2


class EcsApiError(PymlsqlError):
    """The ECS API refused a call; carries its Code, Message and RequestId."""

    def __init__(
        self,
        message: str,
        *,
        code: str,
        api_message: str = "",
        request_id: str = "",
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.code = code
        self.api_message = api_message
        self.request_id = request_id


class InstanceStateError(EcsApiError):
    """An instance is not in a status that allows the operation."""


class SshError(PymlsqlError):
    """SSH to an instance failed: connecting, authenticating, a host key, or a transfer."""

    def __init__(self, message: str, *, host: str = "", hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.host = host


class HostKeyMismatchError(SshError):
    """An instance presented a host key other than the one pinned for it."""


class CopyError(PymlsqlError):
    """A copy could not be done; nothing partial was left at the target.

    Not an SshError: most of its causes are paths and programs, on either side, not the connection.
    A connection that breaks during a copy is still an SshError.
    """


class WaitTimeoutError(PymlsqlError):
    """An instance never reached the wanted state in time."""


class FleetError(PymlsqlError):
    """Some instances failed; `.result` holds every instance's outcome."""

    def __init__(self, message: str, *, result: FleetResult[Any], hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.result: FleetResult[Any] = result
