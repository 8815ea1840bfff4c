"""A local ECS sandbox: the ECS API over HTTP, and instances that are real OpenSSH servers.

It imports nothing from the rest of the package; clients reach it only through its endpoint.
"""

from ._model import Timings
from ._server import Sandbox, default_state_dir

__all__ = ["Sandbox", "Timings", "default_state_dir"]
