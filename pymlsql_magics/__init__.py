"""Run Alibaba Cloud ECS instances from a Jupyter notebook: `%load_ext pymlsql_magics`."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def load_ipython_extension(ipython: Any) -> None:
    """Registers %ecs_start, %%ecs_exec, %ecs_copy, %ecs_forward, %ecs_stop, %ecs_list, %ecs_network and
    %ecs_sandbox, and lists
    the instances this tool created that are still there."""
    from .magics import EcsMagics  # IPython is only needed once the extension loads

    magics = EcsMagics(ipython)
    ipython.register_magics(magics)
    # Instances left by an earlier kernel cost money until released: say so at once.
    magics.report_leftovers()
