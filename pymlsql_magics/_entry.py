"""The `pymlsql` command: through the user's agent when it can (see agent/), else right here."""

from __future__ import annotations

import sys


def main() -> int:
    from .agent._client import through_agent

    status = through_agent(sys.argv[1:])
    if status is not None:
        return status
    from .cli import main as run_here

    return run_here(sys.argv[1:])
