"""A local ECS sandbox: the ECS API over HTTP, and instances that are real OpenSSH servers.

It imports nothing from the rest of the package, and its names load on first use (so the
command line starts fast); clients reach it only through its endpoint.
The faces (the CLI, the magics) use what is named here and catch one error type, SandboxError:

    info, started = ensure_running()          # a background sandbox for default_state_dir()
    os.environ.update(info.environment())     # the SDK, the CLI and the magics now use it
    stop()                                    # releases every instance, ends every process

In-process (a test fixture), `Sandbox(state_dir).start()` serves from threads of this process.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._background import ensure_running, read_info, status, stop
    from ._cli import add_commands, run
    from ._errors import HostError, SandboxBusyError, SandboxControlError, SandboxError, UserDataError
    from ._faults import FaultOrder
    from ._sandbox import Sandbox, SandboxWarning
    from ._state import SandboxInfo, default_state_dir
    from ._timings import Timings

# name -> the module of this package that defines it
_WHERE = {
    "ensure_running": "._background",
    "read_info": "._background",
    "status": "._background",
    "stop": "._background",
    "add_commands": "._cli",
    "run": "._cli",
    "HostError": "._errors",
    "SandboxBusyError": "._errors",
    "SandboxControlError": "._errors",
    "SandboxError": "._errors",
    "UserDataError": "._errors",
    "FaultOrder": "._faults",
    "Timings": "._timings",
    "Sandbox": "._sandbox",
    "SandboxWarning": "._sandbox",
    "SandboxInfo": "._state",
    "default_state_dir": "._state",
}

__all__ = [
    "FaultOrder",
    "HostError",
    "Sandbox",
    "SandboxBusyError",
    "SandboxControlError",
    "SandboxError",
    "SandboxInfo",
    "SandboxWarning",
    "Timings",
    "UserDataError",
    "add_commands",
    "default_state_dir",
    "ensure_running",
    "read_info",
    "run",
    "status",
    "stop",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
