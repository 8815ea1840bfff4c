"""`pymlsql sandbox ...`: start, serve, stop, status, fault, log, and run inside an instance."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from . import _background
from ._catalog import DEFAULT_REGION
from ._errors import SandboxControlError, SandboxError
from ._faults import QUIRKS, STUCK_STATUSES, FaultOrder
from ._state import SandboxInfo, state_dir_or_default
from ._stock import parse_no_stock, parse_stock
from ._throttle import parse_link
from ._timings import Timings

_DEFAULTS = Timings()
_NO_FAULT = FaultOrder()
Parser = TypeVar("Parser", bound=argparse.ArgumentParser)


def add_commands(subparsers: argparse._SubParsersAction[Parser]) -> None:
    """Adds the `sandbox` command and its subcommands to a parent argparse parser."""
    sandbox = subparsers.add_parser(
        "sandbox",
        help="a local ECS endpoint whose instances are real OpenSSH servers",
        description=(
            "A local stand-in for Alibaba Cloud ECS: the ECS API over HTTP, signed requests "
            "checked, and instances that are real OpenSSH sshd servers with their own "
            "addresses, host keys, hostnames and disks."
        ),
    )
    commands = sandbox.add_subparsers(dest="sandbox_command", metavar="COMMAND", required=True)

    start = commands.add_parser(
        "start",
        help="start in the background and print `export` lines for the shell",
        description='Starts a sandbox in the background. Use: eval "$(pymlsql sandbox start)"',
    )
    _state_dir_flag(start)
    _serve_flags(start)

    serve = commands.add_parser("serve", help="run in the foreground until interrupted")
    _state_dir_flag(serve)
    _serve_flags(serve)

    stop = commands.add_parser("stop", help="release every instance and end every process")
    _state_dir_flag(stop)

    status = commands.add_parser("status", help="show whether it runs, and its instances")
    _state_dir_flag(status)
    status.add_argument("--json", action="store_true", help="print JSON")

    fault = commands.add_parser(
        "fault",
        help="inject faults: failing API calls, slow or dropped SSH, stuck instances",
        description="Each option takes effect on the running sandbox at once.",
    )
    _state_dir_flag(fault)
    fault.add_argument("--action", help="ECS action whose next calls fail (e.g. RunInstances, or * for any)")
    fault.add_argument("--code", default=_NO_FAULT.code, help="error code to answer (default %(default)s)")
    fault.add_argument("--status", type=int, default=_NO_FAULT.status,
                       help="HTTP status to answer (default %(default)s)")  # fmt: skip
    fault.add_argument("--count", type=int, default=_NO_FAULT.count, help="how many calls fail (default %(default)s)")
    fault.add_argument("--message", help="error message to answer")
    fault.add_argument("--lose-response", action="store_true",
                       help="with --action: carry the calls out but drop their answers")  # fmt: skip
    fault.add_argument("--ssh-delay", type=float, metavar="SECONDS",
                       help="SSH of instances started from now on comes up this much later")  # fmt: skip
    fault.add_argument("--stuck", metavar="STATUS", choices=[*STUCK_STATUSES, ""],
                       help="new instances never leave this status ('' to undo)")  # fmt: skip
    fault.add_argument("--kill-ssh", metavar="INSTANCE_ID",
                       help="kill its sshd and every session; it comes back after the boot delay")  # fmt: skip
    fault.add_argument("--rotate-host-key", metavar="INSTANCE_ID",
                       help="drop its sshd and sessions; it comes back with new host keys")  # fmt: skip
    fault.add_argument("--freeze", metavar="INSTANCE_ID",
                       help="stop all its processes: it answers nothing, like a hung machine")  # fmt: skip
    fault.add_argument("--thaw", metavar="INSTANCE_ID", help="let a frozen instance run again")
    fault.add_argument("--reclaim", metavar="INSTANCE_ID",
                       help="reclaim a spot instance as ECS does: OperationLocks Recycling and the metadata's "
                            "instance/spot/termination-time now, released when the notice is over")  # fmt: skip
    fault.add_argument("--notice", type=_seconds, default=_NO_FAULT.notice, metavar="SECONDS",
                       help="with --reclaim: seconds of notice (ECS gives 300; default %(default)s)")  # fmt: skip
    for flag, meaning in (
        ("--initializing", "DeleteInstance(s) of an instance younger than this answers "
                           "IncorrectInstanceStatus.Initializing"),
        ("--idempotent-processing", "a RunInstances replayed with the same ClientToken within this of the "
                                    "first answers IdempotentProcessing"),
        ("--describe-lag", "new instances appear in DescribeInstances only this long after their creation"),
        ("--console-lag", "GetInstanceConsoleOutput is empty until this long after an instance first ran"),
    ):  # fmt: skip
        fault.add_argument(flag, type=_seconds, metavar="SECONDS", help=f"{meaning} (0 undoes it)")
    fault.add_argument("--no-stock", metavar="TYPE[@ZONE]", action="append", type=_checked(parse_no_stock),
                       help="RunInstances of TYPE in ZONE (every zone when none is given) answers "
                            "OperationDenied.NoStock, DescribeAvailableResource says SoldOut; repeatable")  # fmt: skip
    fault.add_argument("--stock", metavar="TYPE@ZONE=N", action="append", type=_checked(parse_stock),
                       help="only N more instances of TYPE fit in ZONE; repeatable")  # fmt: skip
    fault.add_argument("--clear", action="store_true", help="remove every pending fault")

    inside = commands.add_parser(
        "run",
        help="run a command inside an instance, as a process on it would run (as root)",
        description="Runs CMD inside the instance's network, files, hostname and processes, as USER: "
                    "what a program on an ECS instance sees (its private address, the metadata service "
                    "at 100.100.100.200, /sys/class/dmi/id/product_name). Its exit status is CMD's.",
    )  # fmt: skip
    _state_dir_flag(inside)
    inside.add_argument("instance_id", metavar="INSTANCE_ID")
    inside.add_argument("--user", default="root", help="run as this user of the instance (default root)")
    inside.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD...", help="the command and its arguments")

    log = commands.add_parser("log", help="every API request, and per-instance event times")
    _state_dir_flag(log)
    log.add_argument("--json", action="store_true", help="print JSON")


def _state_dir_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir", metavar="DIR", help="where the sandbox keeps its files (default ~/.pymlsql/sandbox)"
    )


def _serve_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=0, help="HTTP port (default: a free one)")
    parser.add_argument("--region", default=DEFAULT_REGION, help="region to report (default %(default)s)")
    for name, default, meaning in (
        ("pending", _DEFAULTS.pending, "an instance stays Pending"),
        ("starting", _DEFAULTS.starting, "an instance stays Starting"),
        ("stopping", _DEFAULTS.stopping, "an instance stays Stopping"),
        ("boot", _DEFAULTS.boot, "SSH takes to come up after Running"),
    ):
        parser.add_argument(
            f"--{name}-delay", type=float, default=default, metavar="SECONDS",
            help=f"seconds {meaning} (default %(default)s)",
        )  # fmt: skip
    parser.add_argument(
        "--auto-release-lead", type=float, default=_DEFAULTS.auto_release_lead, metavar="SECONDS",
        help="how far ahead AutoReleaseTime must be, as ECS requires (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--bandwidth-caps", choices=("on", "off"), default="on",
        help="cap traffic through public addresses by each instance's InternetMaxBandwidthOut/In, "
             "as ECS does (default on; off for benchmarks that compare tools, not links)",
    )  # fmt: skip
    parser.add_argument(
        "--client-link", metavar="UP[/DOWN]", type=_client_link,
        help="model this machine's own link to public addresses, in Mbit/s, shared by all its "
             "connections (for example 20/100; default: not limited)",
    )  # fmt: skip


def _checked(parse: Callable[[str], object]) -> Callable[[str], str]:
    """An argparse type that keeps the text, refused as `parse` refuses it."""

    def check(text: str) -> str:
        try:
            parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        return text.strip()

    return check


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not seconds >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, got {text}")
    return seconds


def _client_link(text: str) -> tuple[float, float]:
    try:
        return parse_link(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def run(args: argparse.Namespace) -> int:
    """Carries out `pymlsql sandbox COMMAND` as `add_commands` parsed it; returns the exit status.

    Raises SandboxError when the command cannot be carried out.
    """
    state_dir = state_dir_or_default(args.state_dir)
    command = args.sandbox_command
    if command in ("start", "serve"):
        from ._hosts import find_sshd, full_fidelity  # the machine's tools: only to make instances

        find_sshd()
        if not full_fidelity():
            print(
                "pymlsql sandbox: not running as root, so instances are degraded: sshd runs as "
                "you on a high port (tag pymlsql:ssh-port), files and users are shared, and network "
                "rules are not enforced (private addresses answer from this machine, security groups "
                "and bandwidth caps are not applied).",
                file=sys.stderr,
            )
    if command == "start":
        info, started = _background.ensure_running(state_dir, port=args.port, serve_args=_serve_args(args))
        sys.stdout.write(info.exports())
        verb = "started" if started else "already running"
        print(f"pymlsql sandbox: {verb} at {info.endpoint} (state dir {state_dir})", file=sys.stderr)
        return 0
    if command == "serve":
        return _serve(args, state_dir)
    if command == "stop":
        stopped = _background.stop(state_dir)
        print(f"pymlsql sandbox: {'stopped' if stopped else 'not running'} ({state_dir})", file=sys.stderr)
        return 0
    running = _background.read_info(state_dir)
    if running is None:
        if command == "status":
            print(f"pymlsql sandbox: not running ({state_dir})")
            return 3
        raise SandboxControlError(f"no sandbox runs for {state_dir}.", hint="start one with `pymlsql sandbox start`.")
    if command == "status":
        return _print_status(_background.status(running), args.json)
    if command == "fault":
        return _fault(running, args)
    if command == "log":
        return _print_log(_background.log(running), args.json)
    if command == "run":
        return _run_inside(running, args)
    raise AssertionError(command)


def _serve_args(args: argparse.Namespace) -> list[str]:
    return [
        "--region", args.region,
        "--pending-delay", str(args.pending_delay),
        "--starting-delay", str(args.starting_delay),
        "--stopping-delay", str(args.stopping_delay),
        "--boot-delay", str(args.boot_delay),
        "--auto-release-lead", str(args.auto_release_lead),
        "--bandwidth-caps", args.bandwidth_caps,
        *(["--client-link", "{:g}/{:g}".format(*args.client_link)] if args.client_link else []),
    ]  # fmt: skip


def _serve(args: argparse.Namespace, state_dir: Path) -> int:
    from ._sandbox import Sandbox, SandboxWarning  # the whole sandbox, only to serve it
    if _background.read_info(state_dir) is not None:
        raise SandboxControlError(
            f"a sandbox already runs for {state_dir}.",
            hint="stop it with `pymlsql sandbox stop`, or pass another --state-dir.",
        )
    timings = Timings(
        pending=args.pending_delay,
        starting=args.starting_delay,
        stopping=args.stopping_delay,
        boot=args.boot_delay,
        auto_release_lead=args.auto_release_lead,
    )
    sandbox = Sandbox(
        state_dir, port=args.port, region_id=args.region, timings=timings,
        bandwidth_caps=args.bandwidth_caps == "on", client_link=args.client_link,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SandboxWarning)  # said above already
        sandbox.start()

    def close(signum: int, frame: object) -> None:
        sandbox.close()

    signal.signal(signal.SIGTERM, close)
    signal.signal(signal.SIGINT, close)
    sys.stdout.write(sandbox.info.exports())
    sys.stdout.flush()
    print(f"pymlsql sandbox: serving at {sandbox.endpoint}; Ctrl-C to stop", file=sys.stderr)
    sandbox.wait()
    return 0


def _run_inside(info: SandboxInfo, args: argparse.Namespace) -> int:
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        raise SandboxControlError("no command given.", hint="write it after --: pymlsql sandbox run ID -- hostname")
    if not info.full_fidelity:
        raise SandboxControlError(
            "this sandbox runs without root, so its instances have no network or files of their own to enter.",
            hint="start it as root (sudo) to run commands inside instances.",
        )
    from ._hosts import inside_command, machine_pid

    pid = machine_pid(info.state_dir, args.instance_id)
    if pid is None:
        raise SandboxControlError(
            f"{args.instance_id} has no machine running in {info.state_dir}.",
            hint="`pymlsql sandbox status` lists the instances and which are Running.",
        )
    # The command replaces this process: its output, exit status and Ctrl-C are its own.
    os.execvp("nsenter", inside_command(pid, args.user, argv, endpoint=info.endpoint))


def _fault(info: SandboxInfo, args: argparse.Namespace) -> int:
    order = FaultOrder(
        clear=args.clear,
        action=args.action or None,
        code=args.code,
        status=args.status,
        count=args.count,
        message=args.message or None,
        lose_response=args.lose_response,
        ssh_delay=args.ssh_delay,
        stuck=args.stuck,
        kill_ssh=args.kill_ssh or None,
        rotate_host_key=args.rotate_host_key or None,
        freeze=args.freeze or None,
        thaw=args.thaw or None,
        reclaim=args.reclaim or None,
        notice=args.notice,
        **{name: getattr(args, name) for name in QUIRKS},
        no_stock=tuple(args.no_stock or ()),
        stock=tuple(args.stock or ()),
    )
    if order.empty:
        raise SandboxControlError("no fault given.", hint="see `pymlsql sandbox fault --help` for the options.")
    _background.fault(info, order)
    return 0


def _print_status(status: dict[str, Any], as_json: bool) -> int:
    if as_json:
        print(json.dumps(status, indent=2))
        return 0
    mode = "full fidelity (root)" if status["full_fidelity"] else "degraded (not root)"
    print(f"running at {status['endpoint']} (pid {status['pid']}, {mode})")
    print(f"state dir {status['state_dir']}, region {status['region_id']}")
    for instance in status["instances"]:
        ssh = "ssh ready" if instance["SshReady"] else "no ssh"
        public = instance["PublicIpAddress"] or "-"
        private = instance["PrivateIpAddress"]
        print(f"{instance['InstanceId']}  {instance['Status']:<8}  {private:<15}  {public:<15}  {ssh}")
    return 0


def _print_log(log: dict[str, Any], as_json: bool) -> int:
    if as_json:
        print(json.dumps(log, indent=2))
        return 0
    for entry in log["requests"]:
        stamp = time.strftime("%H:%M:%S", time.localtime(entry["time"]))
        print(f"{stamp}  {entry['action']:<28} {entry['code']}")
    for instance_id, events in log["instances"].items():
        times = ", ".join(f"{name} {time.strftime('%H:%M:%S', time.localtime(at))}" for name, at in events.items())
        print(f"{instance_id}: {times}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m pymlsql_magics.sandbox COMMAND`, the same as `pymlsql sandbox COMMAND`."""
    parser = argparse.ArgumentParser(prog="pymlsql")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["sandbox", *(sys.argv[1:] if argv is None else argv)])
    try:
        return run(args)
    except SandboxError as error:
        print(f"pymlsql: error: {error}", file=sys.stderr)
        return 1
