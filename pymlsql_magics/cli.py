"""`pymlsql`: the command line face, compatible with PyMLSQL's flags and output.

`start` prints `instance_id:`, `public_ip:` and `intern_ip:` lines on stdout (progress goes to
stderr), so scripts that `grep '^instance_id:' | cut -d ':' -f2` keep working.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

from . import __version__, sandbox

# Only what every command needs, so `pymlsql --help` starts at once: the SDK, SSH and the rest of
# the core are imported by the commands that use them.
from .core import ConfigError, Face, FleetError, PymlsqlError, launch_spec, parse_flag, parse_pairs, start_arguments
from .sandbox import SandboxError

if TYPE_CHECKING:
    from .core import Cost, EcsConfig, Fleet, Instance

_FACE = Face(list="pymlsql list", reuse="pymlsql start --instance-id {instance_id}", user_flag="--execute-user",
             networks="pymlsql network list", release="pymlsql stop --instance-id {instance_ids}")  # fmt: skip


class _Parser(argparse.ArgumentParser):
    """Usage mistakes read like every other error: one line and a hint, not the whole usage text."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"pymlsql: error: {message}\nHint: `{self.prog} --help` lists what it takes.\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pymlsql",
        description="Run Alibaba Cloud ECS instances from shell scripts: start, exec-shell, copy, stop.",
        epilog="Credentials: ALIBABA_CLOUD_ACCESS_KEY_ID/SECRET, AK/AKS, the aliyun CLI's profile, or on an ECS "
        "instance its RAM role; with none, the local sandbox is used (pymlsql sandbox --help).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common, ssh = _common_flags(), _ssh_flags()
    _add_start(commands, common)
    _add_stop(commands, common)
    _add_exec_shell(commands, common, ssh)
    _add_copies(commands, common, ssh)
    _add_forward(commands, common, ssh)
    listing = commands.add_parser("list", parents=[common], help="list the instances this tool created")
    listing.add_argument("--name", help="only those of this name")
    listing.add_argument("--output", choices=["text", "json"], default="text")
    _add_network(commands, common)
    sandbox.add_commands(commands)
    _add_agent(commands)
    return parser


def _common_flags() -> _Parser:
    common = _Parser(add_help=False)
    common.add_argument(
        "--region", metavar="REGION",
        help="ECS region (default: ALIBABA_CLOUD_REGION_ID, on an ECS instance its own, else cn-hangzhou)",
    )
    common.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    return common


def _ssh_flags() -> _Parser:
    ssh = _Parser(add_help=False)
    ssh.add_argument("--key-pair-name", metavar="NAME",
                     help="key pair whose private key is ~/.ssh/NAME (default: MLSQL_KEY_PARE_NAME, "
                          "else the instance's own key pair)")  # fmt: skip
    ssh.add_argument("--need-public-ip", type=parse_flag, nargs="?", const=True, default=None, metavar="true|false",
                     help="true: connect through the public IP, false: the private IP (default: the public IP "
                          "from outside the instance's VPC, the private IP inside it)")  # fmt: skip
    return ssh


def _add_start(commands: argparse._SubParsersAction[_Parser], common: _Parser) -> None:
    start = commands.add_parser("start", parents=[common], help="start instances and wait until SSH works",
                                description="Create instances (or reuse them by id or name), wait until they "
                                "are Running and SSH accepts the key, print their addresses.")  # fmt: skip
    for options, keywords in start_arguments("cli"):
        start.add_argument(*options, **keywords)
    start.add_argument("--output", choices=["text", "json"], default="text", help="output format (default text)")


def _add_stop(commands: argparse._SubParsersAction[_Parser], common: _Parser) -> None:
    stop = commands.add_parser("stop", parents=[common], help="stop and release instances")
    stop.add_argument("--instance-id", action="append", default=[], metavar="ID", nargs="+",
                      help="instance(s) to release")  # fmt: skip
    stop.add_argument("--name", help="release the instances of this name")
    stop.add_argument("--all", action="store_true", help="release every instance this tool created")
    stop.add_argument("--keep-disk", action="store_true", help="only stop them; keep their disks")
    stop.add_argument("--key-pair-name", help="accepted for compatibility; not needed to stop")


def _add_exec_shell(commands: argparse._SubParsersAction[_Parser], common: _Parser, ssh: _Parser) -> None:
    exec_shell = commands.add_parser("exec-shell", parents=[common, ssh], help="run a script file on instances",
                                     description="Run a script with bash as the given user (like `su - USER`); "
                                     "its stdout goes to stdout as it runs, its stderr to stderr; exit with its "
                                     "exit status.")  # fmt: skip
    exec_shell.add_argument("--instance-id", action="append", required=True, metavar="ID", nargs="+",
                            help="instance(s) to run on")  # fmt: skip
    exec_shell.add_argument("--script-file", required=True, metavar="FILE", help="the script to run")
    exec_shell.add_argument("--execute-user", default="root", metavar="USER", help="run as this user (default root)")
    exec_shell.add_argument("--timeout", type=float, metavar="SECONDS", help="stop the script after this long")
    exec_shell.add_argument("--env", action="append", metavar="KEY=VALUE",
                            help="environment variable exported to the script; repeatable")  # fmt: skip
    exec_shell.add_argument("--once", action="store_true",
                            help="skip instances where this exact script (with its user and env) already "
                                 "succeeded, as recorded on the instance")  # fmt: skip
    exec_shell.add_argument("--force", action="store_true",
                            help="run it even where --once would skip it, and record the success")  # fmt: skip


def _add_copies(commands: argparse._SubParsersAction[_Parser], common: _Parser, ssh: _Parser) -> None:
    for name, what in (("copy-from-local", "copy a local file or directory to instances"),
                       ("copy-to-local", "copy a file or directory of an instance here")):  # fmt: skip
        copy = commands.add_parser(name, parents=[common, ssh], help=what,
                                   description=f"{what[0].upper()}{what[1:]}, like scp -r: a target that is an "
                                   "existing directory receives the source under its own name.")  # fmt: skip
        copy.add_argument("--instance-id", action="append", required=True, metavar="ID", nargs="+",
                          help="instance(s); from several, each one's copy lands in TARGET/INSTANCE_ID"
                          if name == "copy-to-local" else "instance(s)")  # fmt: skip
        copy.add_argument("--execute-user", default="root", metavar="USER",
                          help="owner of copied files; relative remote paths start at their home")  # fmt: skip
        copy.add_argument("--source", required=True, help="what to copy")
        copy.add_argument("--target", required=True, help="where to put it")
        copy.add_argument("--compress", choices=("auto", "on", "off"), default="auto",
                          help="compress the stream (zstd, else gzip): auto (default) when a sample of the data "
                          "shrinks, on, or off")  # fmt: skip


def _add_forward(commands: argparse._SubParsersAction[_Parser], common: _Parser, ssh: _Parser) -> None:
    forward = commands.add_parser(
        "forward", parents=[common, ssh], help="carry a local port to a port of an instance, until Ctrl-C",
        description="Listen on 127.0.0.1:LOCAL_PORT and carry each connection through the instance's SSH "
        "connection (pinned host key) to REMOTE_HOST:REMOTE_PORT as the instance sees it: no security-group "
        "rule, nothing listening but on this machine's loopback. Prints the URL, then runs until Ctrl-C.",
    )  # fmt: skip
    forward.add_argument("--instance-id", required=True, metavar="ID", help="the instance to go through")
    forward.add_argument("--remote-port", required=True, type=_port, metavar="PORT",
                         help="the port on the instance (or on --remote-host)")  # fmt: skip
    forward.add_argument("--local-port", type=_port, metavar="PORT", help="the local port (default: a free one)")
    forward.add_argument("--remote-host", default="127.0.0.1", metavar="HOST",
                         help="where the instance connects to (default: itself; a peer's private address "
                              "reaches that peer)")  # fmt: skip


def _port(text: str) -> int:
    try:
        return int(text)  # its range is the core's to check, as for %ecs_forward
    except ValueError:
        raise argparse.ArgumentTypeError(f"a port is a number from 1 to 65535, got {text!r}") from None


def _add_network(commands: argparse._SubParsersAction[_Parser], common: _Parser) -> None:
    network = commands.add_parser("network", help="show or delete the VPC, vSwitches and group this tool made",
                                  description="A start without --vswitch-id / --security-group uses the network "
                                  "this tool made in the region, or makes it. It costs nothing while idle and "
                                  "stays after `stop`; `network delete` removes it.")  # fmt: skip
    actions = network.add_subparsers(dest="network_command", metavar="ACTION", required=True)
    listing = actions.add_parser("list", parents=[common], help="what this tool made, and the instances in it")
    listing.add_argument("--output", choices=["text", "json"], default="text")
    delete = actions.add_parser("delete", parents=[common], help="delete it; refused while instances use it")
    delete.add_argument("--vpc-id", metavar="ID", help="only what this tool made in this VPC")


def _add_agent(commands: argparse._SubParsersAction[_Parser]) -> None:
    agent = commands.add_parser(
        "agent", help="the background agent that keeps commands warm",
        description="Commands that call ECS run in a per-user background agent that keeps the SDK loaded and "
        "SSH connections open between commands, as OpenSSH's ControlMaster does; it starts on first use and "
        "exits after PYMLSQL_AGENT_IDLE (default 10m) without work. PYMLSQL_AGENT=0 turns it off.",
    )  # fmt: skip
    actions = agent.add_subparsers(dest="agent_command", metavar="ACTION", required=True)
    actions.add_parser("status", help="the agents running for this user, and their workers")
    actions.add_parser("stop", help="stop them; a command running in one is interrupted, as by Ctrl-C")


class Fleets(Protocol):
    """Where a long-lived process (the agent) keeps its Fleets between commands."""

    def open(self, config: EcsConfig) -> Fleet: ...


def new_fleet(config: EcsConfig, kind: type[Fleet] | None = None) -> Fleet:
    """A Fleet as this command line uses it: progress on stderr, hints that name its commands."""
    from .core import Fleet

    return (kind or Fleet)(config, progress=_say, face=_FACE)


def main(argv: Sequence[str] | None = None, *, fleets: Fleets | None = None) -> int:
    """Runs `pymlsql ARGV` here and returns its exit status. `fleets`, when given, gives the Fleet
    and keeps it (and its SSH connections) for the next command, as the agent does."""
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    debug = getattr(args, "debug", False)
    try:
        if args.command == "sandbox":
            return sandbox.run(args)
        if args.command == "agent":
            from .agent import control

            return control.run(args.agent_command, _say)
        return _run(args, fleets)
    except KeyboardInterrupt:
        print("pymlsql: interrupted", file=sys.stderr)
        return 130
    except (PymlsqlError, SandboxError) as error:
        if debug:
            raise
        print(f"pymlsql: error: {error}", file=sys.stderr)
        return getattr(error, "exit_code", 1)


def _say(message: str) -> None:
    print(f"pymlsql: {message}", file=sys.stderr, flush=True)


def _run(args: argparse.Namespace, fleets: Fleets | None) -> int:
    from ._embedded import with_sandbox_fallback
    from .core import EcsConfig

    config = with_sandbox_fallback(EcsConfig.from_env(region_id=args.region), _say)
    handler = {
        "start": _start,
        "stop": _stop,
        "exec-shell": _exec_shell,
        "copy-from-local": _copy_from_local,
        "copy-to-local": _copy_to_local,
        "list": _list,
        "forward": _forward,
        "network": _network,
    }[args.command]
    if fleets is not None:
        return handler(fleets.open(config), args)
    with new_fleet(config) as fleet:
        return handler(fleet, args)


def _key_pair(args: argparse.Namespace) -> str | None:
    return args.key_pair_name or os.environ.get("MLSQL_KEY_PARE_NAME") or None


def _start(fleet: Fleet, args: argparse.Namespace) -> int:
    spec = launch_spec(vars(args), {"key_pair_name": _key_pair(args)})
    if not spec.image_id and not spec.instance_ids and not spec.name:
        raise ConfigError("nothing to start", hint="Pass --image-id (or --instance-id to reuse an instance).")
    instances = fleet.start(spec)
    if args.output == "json":
        costs = fleet.costs(instances)
        print(json.dumps([{**_as_json(i), **_cost_json(costs.get(i.instance_id))} for i in instances], indent=2))
        return 0
    _print_instances(instances)
    return 0


def _print_instances(instances: list[Instance]) -> None:
    for instance in instances:
        print(f"instance_id:{instance.instance_id}")
        print(f"public_ip:{instance.public_ip}")
        print(f"intern_ip:{instance.private_ip}")


def _as_json(instance: Instance) -> dict[str, Any]:
    return {
        "instance_id": instance.instance_id,
        "name": instance.name,
        "status": instance.status,
        "hostname": instance.hostname,
        "public_ip": instance.public_ip,
        "intern_ip": instance.private_ip,
        "key_pair_name": instance.key_pair_name,
        "instance_type": instance.instance_type,
        "zone_id": instance.zone_id,
        "spot_strategy": instance.spot_strategy,
        "tags": dict(instance.tags),
    }


def _stop(fleet: Fleet, args: argparse.Namespace) -> int:
    ids = [instance_id for group in args.instance_id for instance_id in group]
    if not ids and not args.name and not args.all:
        raise ConfigError("nothing to stop", hint="Pass --instance-id ID, --name NAME or --all.")
    targets = fleet.get(ids) if ids else []
    if args.name or args.all:
        targets += [i for i in fleet.find(args.name) if i.instance_id not in ids]
    if not targets:
        _say("no instances to stop")
        return 0
    verb = "stopping" if args.keep_disk else "releasing"
    _say(f"{verb} {', '.join(i.instance_id for i in targets)}")
    fleet.stop(targets, keep_disk=args.keep_disk)
    _say(f"{'stopped' if args.keep_disk else 'released'} {len(targets)} instance(s)")
    return 0


def _exec_shell(fleet: Fleet, args: argparse.Namespace) -> int:
    from .core import ConsoleSink, ExecResult, naming

    ids = [instance_id for group in args.instance_id for instance_id in group]
    try:
        script = Path(args.script_file).read_text()
    except OSError as error:
        raise ConfigError(
            f"cannot read the script file {args.script_file}: {error.strerror}", hint="Check --script-file."
        ) from None
    env = parse_pairs("--env", args.env)
    instances = fleet.get(ids)
    sink = ConsoleSink(label=len(instances) > 1)
    cancel = threading.Event()
    try:
        result = fleet.exec(
            instances,
            script,
            user=args.execute_user,
            sink=sink,
            timeout=args.timeout,
            check=False,
            key_pair_name=_key_pair(args),
            public=args.need_public_ip,
            cancel=cancel,
            env=env,
            once=args.once,
            force=args.force,
        )
    finally:
        sink.flush()
    for instance_id, outcome in result.items():
        if isinstance(outcome, ExecResult) and outcome.done_at:
            _say(f"{instance_id}: already done (at {outcome.done_at}); --force runs it again")
    if result.errors:
        reasons = "; ".join(naming(instance_id, error) for instance_id, error in result.errors.items())
        raise FleetError(reasons, result=result, hint=result.first_hint)
    statuses = [outcome.exit_status for outcome in result.values() if isinstance(outcome, ExecResult)]
    return next((status for status in statuses if status != 0), 0)


def _copy_from_local(fleet: Fleet, args: argparse.Namespace) -> int:
    ids = [instance_id for group in args.instance_id for instance_id in group]
    result = fleet.copy_to(
        fleet.get(ids),
        args.source,
        args.target,
        user=args.execute_user,
        key_pair_name=_key_pair(args),
        public=args.need_public_ip,
        compress=args.compress,
    )
    for outcome in result.succeeded.values():
        where = f"{outcome.instance_id}:{outcome.target}" + (f" (through {outcome.via})" if outcome.via else "")
        _say(f"copied {outcome.files} file(s), {outcome.bytes} bytes to {where}")
    return 0


def _copy_to_local(fleet: Fleet, args: argparse.Namespace) -> int:
    from .core import FleetResult

    ids = list(dict.fromkeys(instance_id for group in args.instance_id for instance_id in group))
    instances = fleet.get(ids)
    outcome = fleet.copy_from(instances[0] if len(instances) == 1 else instances, args.source, args.target,
                              user=args.execute_user, key_pair_name=_key_pair(args),
                              public=args.need_public_ip, compress=args.compress)  # fmt: skip
    for copied in outcome.succeeded.values() if isinstance(outcome, FleetResult) else [outcome]:
        _say(f"copied {copied.files} file(s), {copied.bytes} bytes to {copied.target}")
    return 0


def _list(fleet: Fleet, args: argparse.Namespace) -> int:
    from .core import InstanceList

    instances = fleet.find(args.name)
    costs = fleet.costs(instances)
    if args.output == "json":
        print(json.dumps([{**_as_json(i), "ssh_via": fleet.reach(i), **_cost_json(costs.get(i.instance_id))}
                          for i in instances], indent=2))  # fmt: skip
        return 0
    for instance in instances:
        name = instance.tags.get("pymlsql:name", "-")
        cost = costs.get(instance.instance_id)
        print(f"{instance.instance_id}  {instance.status:<8}  {name:<16}  {instance.private_ip:<15}  "
              f"{instance.public_ip or '-':<15}  ssh via {fleet.reach(instance):<7}  {cost or '-'}")  # fmt: skip
    per_hour = InstanceList(instances, costs=costs).per_hour
    if per_hour:
        _say(f"{len(instances)} instance(s), {per_hour} in all")
    return 0


def _cost_json(cost: Cost | None) -> dict[str, Any]:
    if cost is None:
        return {}
    return {"price_per_hour": round(cost.per_hour, 4), "cost_so_far": round(cost.so_far, 4),
            "currency": cost.currency}  # fmt: skip


def _forward(fleet: Fleet, args: argparse.Namespace) -> int:
    [instance] = fleet.get([args.instance_id])
    forward = fleet.forward(instance, args.remote_port, args.local_port, remote_host=args.remote_host,
                            key_pair_name=_key_pair(args), public=args.need_public_ip)  # fmt: skip
    print(forward.url, flush=True)  # on stdout, for a script to read
    where = "" if args.remote_host == "127.0.0.1" else f"{args.remote_host}:"
    _say(f"forwarding {forward.url} to {where}{args.remote_port} on {instance.instance_id}; Ctrl-C stops it")
    try:
        while not forward.closed:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass  # the way a foreground forward is meant to end
    finally:
        forward.close()
    _say("forward closed")
    return 0


def _network(fleet: Fleet, args: argparse.Namespace) -> int:
    from .core import network_as_json, network_line

    if args.network_command == "delete":
        deleted = fleet.delete_networks(args.vpc_id)
        _say(f"deleted {len(deleted)} network resource(s)" if deleted else "this tool has no network to delete")
        return 0
    networks = fleet.networks()
    if args.output == "json":
        print(json.dumps([network_as_json(network) for network in networks], indent=2))
        return 0
    for network in networks:
        print(network_line(network))
    if not networks:
        _say("this tool has made no network in this region yet")
    return 0


if __name__ == "__main__":
    sys.exit(main())
