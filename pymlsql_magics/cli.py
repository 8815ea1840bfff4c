"""`pymlsql`: the command line face of pymlsql_magics."""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .sandbox import _cli as sandbox_cli
from .sandbox._control import SandboxControlError
from .sandbox._hosts import HostError
from .sandbox._server import SandboxBusyError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pymlsql",
        description="Run Alibaba Cloud ECS instances from shell scripts and notebooks.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sandbox_cli.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.command == "sandbox":
            return sandbox_cli.run(args)
    except (SandboxControlError, SandboxBusyError, HostError) as error:
        if args.debug:
            raise
        print(f"pymlsql: error: {error}", file=sys.stderr)
        return 1
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
