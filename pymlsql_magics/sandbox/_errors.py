"""The sandbox's one exception hierarchy: what it raises on purpose to the code that runs it.

    SandboxError              str() = what happened + "Hint: what to do"
    ├── SandboxControlError   a background sandbox could not be started, reached or told something
    ├── SandboxBusyError      another sandbox already runs for the state dir
    ├── HostError             an instance's machine could not be booted or reached
    └── UserDataError         user data that cloud-init could not run

The ECS API's own errors (`_api_errors.ApiError`) are not here: they never leave the HTTP
server, which answers them to the client as Alibaba Cloud would.
"""

from __future__ import annotations

from .._hinted import HintedError


class SandboxError(HintedError):
    """Base for every error the sandbox raises on purpose; the faces catch this one type."""


# The second bases are the built-in ones these errors had before they shared a root, so an
# `except RuntimeError` / `except ValueError` written against them still catches them.


class SandboxControlError(SandboxError, RuntimeError):
    """A sandbox command could not be carried out; the message says what to do."""


class SandboxBusyError(SandboxError, RuntimeError):
    """Another sandbox already runs for this state dir."""


class HostError(SandboxError, RuntimeError):
    """The machine of an instance could not be booted or reached."""


class UserDataError(SandboxError, ValueError):
    """User data that cloud-init could not run."""
