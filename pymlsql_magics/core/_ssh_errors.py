"""The one place where paramiko's and the socket's failures become SshError."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import paramiko

from ._errors import SshError

# What paramiko and the socket under it raise when a connection cannot be made or breaks.
FAILURES: tuple[type[Exception], ...] = (paramiko.SSHException, OSError, EOFError)

def os_reason(error: Exception) -> str:
    """The system's words for an OSError without its errno prefix; any other error as it is."""
    return (error.strerror if isinstance(error, OSError) else None) or str(error)


@contextmanager
def ssh_errors(
    message: str,
    *,
    host: str = "",
    hint: str | None = None,
    reason: Callable[[Exception], str] | None = str,
    cleanup: Callable[[], object] | None = None,
) -> Iterator[None]:
    """Raises SshError(f"{message}: {reason(error)}") for a failure of paramiko or its socket inside.

    With `reason` None the message stands alone. `cleanup` runs first, say to close the channel.
    """
    try:
        yield
    except FAILURES as error:
        if cleanup is not None:
            cleanup()
        text = message if reason is None else f"{message}: {reason(error)}"
        raise SshError(text, host=host, hint=hint) from None


def session_errors(
    where: str, *, host: str = "", cleanup: Callable[[], object] | None = None
) -> AbstractContextManager[None]:
    """The failures of a session already open: "the SSH session to `where` broke: …"."""
    return ssh_errors(f"the SSH session to {where} broke", host=host, cleanup=cleanup)


@contextmanager
def refused_key(where: str, login: str, *, host: str) -> Iterator[None]:
    """The server turned the key down: a wrong key pair, not a broken connection."""
    try:
        yield
    except paramiko.AuthenticationException:
        raise SshError(
            f"{where} refused the key for {login}",
            host=host,
            hint="Use the private key of the key pair the instance was started with (--key-pair-name).",
        ) from None
