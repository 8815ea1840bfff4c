"""Executes a runbook notebook top to bottom and writes the executed copy.

Stops at the first failing cell (the executed copy still shows it) and exits non-zero.
Usage: python scripts/run_notebook.py IN.ipynb OUT.ipynb
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError


def main(source: str, target: str) -> int:
    notebook = nbformat.read(source, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=900,
        kernel_name="python3",
        resources={"metadata": {"path": str(Path(source).parent)}},
    )
    failed = False
    try:
        client.execute()
    except CellExecutionError as error:
        failed = True
        print(f"run_notebook: {source} stopped at a failing cell:\n{error}", file=sys.stderr)
    nbformat.write(notebook, target)
    print(f"run_notebook: wrote {target}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
