"""A local ECS sandbox: the ECS API over HTTP, and instances that are real OpenSSH servers.

It imports nothing from the rest of the package; clients reach it only through its endpoint.
The faces (the CLI, the magics) use what is named here and catch one error type, SandboxError:

    info, started = ensure_running()          # a background sandbox for default_state_dir()
    os.environ.update(info.environment())     # the SDK, the CLI and the magics now use it
    stop()                                    # releases every instance, ends every process

In-process (a test fixture), `Sandbox(state_dir).start()` serves from threads of this process.
"""

from ._background import ensure_running, read_info, status, stop
from ._cli import add_commands, run
from ._errors import HostError, SandboxBusyError, SandboxControlError, SandboxError, UserDataError
from ._faults import FaultOrder
from ._model import Timings
from ._sandbox import Sandbox, SandboxWarning
from ._state import SandboxInfo, default_state_dir

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
