"""EcsMagics: %ecs_start, %%ecs_exec, %ecs_copy, %ecs_stop, %ecs_list, %ecs_sandbox.

Each magic parses its flags, builds the config, calls the core and renders a view. Errors a
user can cause become one UsageError message in the cell; anything else keeps its traceback.
"""

from __future__ import annotations

import re
import shlex
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from traitlets import Int, Unicode

from . import sandbox
from ._embedded import in_sandbox, with_sandbox_fallback
from ._traits import CONFIG_TRAITS, START_TRAITS, Settings
from .core import (
    ConfigError,
    ConsoleSink,
    CredentialsSource,
    EcsConfig,
    ExecResult,
    Face,
    Fleet,
    FleetError,
    FleetResult,
    Instance,
    InstanceList,
    LogSink,
    PymlsqlError,
    TeeSink,
    ToolNetwork,
    launch_spec,
    naming,
    network_line,
    parse_pairs,
    start_arguments,
)
from .sandbox import SandboxError, default_state_dir
from .widgets import CopyView, ExecView, StartView, has_widget_frontend

_FACE = Face(list="%ecs_list", reuse="%ecs_start --instance-id {instance_id}", user_flag="--user",
             networks="%ecs_network list", release="%ecs_stop {instance_ids}")  # fmt: skip
_REMOTE = re.compile(r"^(?P<target>[A-Za-z_][\w.\-]*|i-[\w]+):(?P<path>.*)$")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextmanager
def _as_usage_error() -> Iterator[None]:
    try:
        yield
    except FleetError as error:
        raise UsageError(str(error)) from None
    except (PymlsqlError, SandboxError) as error:
        raise UsageError(str(error)) from None


def _parse(magic: Any, line: str) -> Any:
    """Flags split as a POSIX shell splits them, so `--env "K=a b"` and `--env K='a b'` both work."""
    try:
        words = shlex.split(line)
    except ValueError as error:
        raise UsageError(f"cannot read the flags: {error}") from None
    return magic.parser.parse_args(words)


def _start_flags(magic: Any) -> Any:
    """%ecs_start's flags, made from the core's table of start settings."""
    for options, keywords in reversed(start_arguments("magics")):
        magic = argument(*options, **keywords)(magic)
    return magic


@magics_class
class EcsMagics(Magics, Settings):
    """Start, use and release Alibaba Cloud ECS instances from a notebook.

    Its `%config` traits are the core's settings (made in `_traits.py`) plus the three below.
    """

    if TYPE_CHECKING:  # made from the core's table in _traits.py; read here to log in
        key_pair_name: str | None

    default_user = Unicode("root", help="User that %%ecs_exec and %ecs_copy act as.").tag(config=True)
    output_lines = Int(200, help="Lines of output kept on screen per instance.").tag(config=True)
    log_dir = Unicode("~/.pymlsql/logs", help="Where the full output of %%ecs_exec is written.").tag(config=True)

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)
        self._fleet: Fleet | None = None
        self._fleet_config: EcsConfig | None = None
        self._announced = ""

    # -- configuration ---------------------------------------------------------------------

    def _config(self, **flags: Any) -> EcsConfig:
        return with_sandbox_fallback(self._settings(**flags), self._announce)

    def _settings(self, **flags: Any) -> EcsConfig:
        # Only settings given through %config (or ipython_config.py) beat the environment; a trait
        # still at its default must not hide ALIBABA_CLOUD_REGION_ID and the like.
        settings = {
            name: getattr(self, name) for name in CONFIG_TRAITS if getattr(self, name) != self.trait_defaults(name)
        }
        return EcsConfig.from_env(**{**settings, **{k: v for k, v in flags.items() if v is not None}})

    def report_leftovers(self) -> None:
        """Says which instances this tool created are still there, from an earlier kernel say.

        Runs when the extension loads. It never starts a sandbox, and a failure to look is one line.
        """
        try:
            config = self._settings(api_attempts=1)
            if not config.has_credentials:
                info = sandbox.read_info(default_state_dir())
                if info is None:
                    return
                config = in_sandbox(config, info)
            with Fleet(config) as fleet:
                left = fleet.find()
                costs = fleet.costs(left)
        except PymlsqlError as error:
            print(f"pymlsql: could not look for instances left running: {str(error).splitlines()[0]}", file=sys.stderr)
            return
        if not left:
            return
        shown = ", ".join(f"{i.instance_id} ({i.status}{', ' + i.name if i.name else ''})" for i in left[:10])
        more = f" and {len(left) - 10} more" if len(left) > 10 else ""
        where = " in the local sandbox" if config.credentials_source is CredentialsSource.SANDBOX else ""
        per_hour = InstanceList(left, costs=costs).per_hour
        cost = f", costing {per_hour}" if per_hour else ""
        print(
            f"pymlsql: {len(left)} instance(s) this tool created are still there{where}{cost}: {shown}{more}.\n"
            "Release them with %ecs_stop --all (or %ecs_stop NAME); %ecs_list shows them.",
            file=sys.stderr,
        )

    def _announce(self, message: str) -> None:
        # Loud once per sandbox, not on every magic.
        if message != self._announced:
            self._announced = message.replace("started it", "already running")
            print(message, file=sys.stderr)

    def _session(self, **flags: Any) -> Fleet:
        config = self._config(**flags)
        if self._fleet is None or self._fleet_config != config:
            if self._fleet is not None:
                self._fleet.close()
            # What the fleet says on the way (a copy it could not relay, a price it could not get) goes
            # where the CLI puts it: stderr, which the notebook shows beside the cell's output.
            self._fleet = Fleet(config, face=_FACE, progress=_say)
            self._fleet_config = config
        return self._fleet

    @property
    def _sandboxed(self) -> bool:
        return self._fleet_config is not None and self._fleet_config.credentials_source is CredentialsSource.SANDBOX

    def _resolve(self, fleet: Fleet, words: list[str]) -> list[Instance]:
        """A fleet variable, instance ids, or a name given with %ecs_start --name."""
        if not words:
            raise ConfigError("no target given", hint="Name a fleet variable, instance ids, or an instance name.")
        found: list[Instance] = []
        ids: list[str] = []
        for word in words:
            value = self.shell.user_ns.get(word) if self.shell is not None else None
            if isinstance(value, Instance):
                found.append(value)
            elif isinstance(value, (InstanceList, list, tuple)) and value and all(
                isinstance(item, Instance) for item in value
            ):
                found.extend(value)
            elif word.startswith("i-"):
                ids.append(word)
            else:
                named = fleet.find(word)
                if not named:
                    raise ConfigError(
                        f"{word!r} is neither a fleet variable, an instance id, nor the name of instances",
                        hint="Use the variable %ecs_start returned (nodes = %ecs_start ...), or %ecs_list.",
                    )
                found.extend(named)
        if ids:
            found.extend(fleet.get(ids))
        # Fresh state (addresses, status) for variables kept from earlier cells.
        return fleet.get([instance.instance_id for instance in found])

    # -- magics ----------------------------------------------------------------------------

    @line_magic
    @magic_arguments()
    @argument("--region", help="Region (default: EcsMagics.region_id).")
    @_start_flags
    def ecs_start(self, line: str) -> InstanceList:
        """Start ECS instances and wait until SSH works; returns them as a fleet.

        nodes = %ecs_start --image-id ubuntu_22_04_x64_20G_alibase_20240926.vhd --count 2 --name demo \
                           --key-pair-name demo --init-ssh-key --ttl 2h

        With no --vswitch-id / --security-group it finds or makes its network (%ecs_network list), and
        from outside the instances' VPC it gives them public addresses and reaches them there.
        """
        args = _parse(self.ecs_start, line)
        with _as_usage_error():
            spec = launch_spec(vars(args), {name: getattr(self, name) for name in START_TRAITS})
            fleet = self._session(region_id=args.region)
            view = StartView(sandbox=self._sandboxed, live=has_widget_frontend())

            def watch(instances: list[Instance], ssh_ready: set[str]) -> None:
                view.update(instances, ssh_ready, {i.instance_id: fleet.reach(i) for i in instances})

            instances = fleet.start(spec, watch=watch)
            view.finish()
        return InstanceList(instances, via={i.instance_id: fleet.reach(i) for i in instances},
                            costs=fleet.costs(instances))  # fmt: skip

    @cell_magic
    @magic_arguments()
    @argument("target", nargs="+", help="A fleet variable, instance ids, or a name.")
    @argument("--user", help="Run as this user, like `su - USER` (default: EcsMagics.default_user).")
    @argument("--timeout", type=float, help="Stop the script after this many seconds.")
    @argument("--env", action="append", metavar="KEY=VALUE", help="Environment variable; repeatable.")
    @argument("--allow-fail", action="store_true", help="Keep the cell green when a script exits non-zero.")
    @argument("-o", "--out", metavar="NAME", help="Store the results (instance id -> result) in this variable.")
    @argument("--public", action="store_const", const=True, default=None,
              help="Connect through the public IPs (default: public from outside the instances' VPC, "
                   "private inside it).")  # fmt: skip
    @argument("--pty", action="store_true", help="Run on a terminal (for programs that need one); merges stderr.")
    @argument("--once", action="store_true", help="Skip instances where this exact cell (with its --user and "
              "--env) already succeeded; a re-run after a failure runs it only where it failed.")
    @argument("--force", action="store_true", help="Run it even where --once would skip it; record the success.")
    def ecs_exec(self, line: str, cell: str) -> None:
        """Run the cell as a bash script on each instance, streaming its output live."""
        args = _parse(self.ecs_exec, line)
        with _as_usage_error():
            env = parse_pairs("--env", args.env)
            fleet = self._session()
            instances = self._resolve(fleet, args.target)
            stamp = time.strftime("%Y%m%d-%H%M%S")
            log_path = Path(self.log_dir).expanduser() / f"exec-{stamp}-{instances[0].instance_id}.log"
            live = has_widget_frontend()
            view = ExecView([i.instance_id for i in instances], max_lines=self.output_lines, log_path=log_path,
                            sandbox=self._sandboxed, live=live)  # fmt: skip
            log = LogSink(log_path)
            # Without widgets the output is printed as it comes; the view keeps the saved record.
            sink = TeeSink(log, view) if live else TeeSink(log, view, ConsoleSink(headers=len(instances) > 1))
            cancel = threading.Event()
            result: FleetResult[ExecResult] | None = None
            try:
                result = fleet.exec(instances, cell, user=args.user or self.default_user, sink=sink,
                                    timeout=args.timeout, check=False, key_pair_name=self.key_pair_name or None,
                                    public=args.public, cancel=cancel, pty=args.pty, env=env, once=args.once,
                                    force=args.force)  # fmt: skip
            except KeyboardInterrupt:
                view.finish(None, interrupted=True)
                raise
            finally:
                log.close()
            view.finish(result)
            if args.out and self.shell is not None:
                self.shell.user_ns[args.out] = result
            if result.failed and not args.allow_fail:
                raise FleetError(result.summary("the script", inline=True), result=result, hint=result.first_hint)

    @line_magic
    @magic_arguments()
    @argument("source", help="Local path, or TARGET:/path on instances.")
    @argument("target", help="Local path, or TARGET:/path on instances.")
    @argument("--user", help="Owner of copies on instances; relative remote paths start at their home.")
    @argument("--compress", choices=("auto", "on", "off"), default="auto",
              help="Compress the stream (zstd, else gzip): auto (default) when a sample of the data shrinks.")
    @argument("--public", action="store_const", const=True, default=None,
              help="Connect through the public IPs (default: public from outside the instances' VPC, "
                   "private inside it).")  # fmt: skip
    def ecs_copy(self, line: str) -> None:
        """Copy files or directories, scp-style: %ecs_copy ./conf nodes:/home/webuser --user webuser"""
        args = _parse(self.ecs_copy, line)
        user = args.user or self.default_user
        with _as_usage_error():
            fleet = self._session()
            remote_source, remote_target = _REMOTE.match(args.source), _REMOTE.match(args.target)
            if bool(remote_source) == bool(remote_target):
                raise ConfigError(
                    "exactly one side of %ecs_copy must be remote, written TARGET:/path",
                    hint="e.g. %ecs_copy ./data nodes:/root/data, or %ecs_copy nodes:/root/out.txt ./",
                )
            key = self.key_pair_name or None
            if remote_target:
                instances = self._resolve(fleet, [remote_target["target"]])
                view = CopyView([i.instance_id for i in instances], description=f"{args.source} -> {args.target}",
                                sandbox=self._sandboxed, live=has_widget_frontend())  # fmt: skip
                result = fleet.copy_to(instances, args.source, remote_target["path"] or ".", user=user,
                                       key_pair_name=key, public=args.public, progress=view.progress,
                                       check=False, compress=args.compress)  # fmt: skip
            else:
                assert remote_source is not None
                instances = self._resolve(fleet, [remote_source["target"]])
                view = CopyView([i.instance_id for i in instances], description=f"{args.source} -> {args.target}",
                                sandbox=self._sandboxed, live=has_widget_frontend())  # fmt: skip
                result = fleet.copy_from(instances, remote_source["path"] or ".", args.target, user=user,
                                         key_pair_name=key, public=args.public, progress=view.progress,
                                         check=False, compress=args.compress)  # fmt: skip
            view.finish(dict(result))
            if result.failed:
                reasons = "; ".join(naming(i, e) for i, e in result.failed.items())
                raise FleetError(f"the copy failed on {reasons}", result=result, hint=result.first_hint)

    @line_magic
    @magic_arguments()
    @argument("target", nargs="?", help="A fleet variable, an instance id, or a name (one instance).")
    @argument("remote_port", nargs="?", type=int, help="The port on the instance (or on --remote-host).")
    @argument("--local-port", type=int, help="The local port on 127.0.0.1 (default: a free one).")
    @argument("--remote-host", default="127.0.0.1",
              help="Where the instance connects to (default: itself; a peer's private address reaches it).")
    @argument("-o", "--out", metavar="NAME", help="Store the forward (.local_port, .url, .close()) in this variable.")
    @argument("--list", action="store_true", help="Show the forwards open now.")
    @argument("--stop", nargs="?", type=int, const=0, metavar="PORT", help="Close the forward on this local port "
              "(every forward when no port is given).")  # fmt: skip
    @argument("--public", action="store_const", const=True, default=None,
              help="Connect through the public IP (default: public from outside the instance's VPC).")
    def ecs_forward(self, line: str) -> Any:
        """Reach a port of an instance at http://127.0.0.1:N/ through its SSH connection (no rule opened):
        %ecs_forward scheduler 8787 -o dashboard"""
        args = _parse(self.ecs_forward, line)
        with _as_usage_error():
            fleet = self._session()
            if args.list or args.stop is not None:
                open_now = fleet.forwards()
                if args.stop is not None:
                    stopping = [f for f in open_now if args.stop in (0, f.local_port)]
                    if args.stop and not stopping:
                        raise ConfigError(f"no forward listens on local port {args.stop}",
                                          hint="%ecs_forward --list shows the forwards open now.")  # fmt: skip
                    for forward in stopping:
                        forward.close()
                    print(f"closed {len(stopping)} forward(s)")
                    return None
                for forward in open_now:
                    print(f"{forward.url} -> {forward.instance_id} {forward.remote_host}:{forward.remote_port}")
                return None
            if args.target is None or args.remote_port is None:
                raise ConfigError("%ecs_forward needs an instance and a port",
                                  hint="e.g. %ecs_forward nodes 8787, or %ecs_forward --list")  # fmt: skip
            instances = self._resolve(fleet, [args.target])
            if len(instances) != 1:
                raise ConfigError(f"{args.target!r} names {len(instances)} instances; a forward goes to one",
                                  hint="name one of them, e.g. nodes[0] or its instance id.")  # fmt: skip
            forward = fleet.forward(instances[0], args.remote_port, args.local_port, remote_host=args.remote_host,
                                    key_pair_name=self.key_pair_name or None, public=args.public)  # fmt: skip
            print(f"forward: {forward.url} -> {forward.instance_id} {forward.remote_host}:{forward.remote_port}")
            if args.out and self.shell is not None:
                self.shell.user_ns[args.out] = forward
            return _Link(forward.url)

    @line_magic
    @magic_arguments()
    @argument("target", nargs="*", help="A fleet variable, instance ids, or a name.")
    @argument("--all", action="store_true", help="Every instance this tool created.")
    @argument("--keep-disk", action="store_true", help="Only stop them; keep their disks.")
    def ecs_stop(self, line: str) -> None:
        """Stop and release instances: %ecs_stop nodes, %ecs_stop demo, %ecs_stop --all"""
        args = _parse(self.ecs_stop, line)
        with _as_usage_error():
            fleet = self._session()
            if args.all:
                instances = fleet.find()
            else:
                instances = self._resolve(fleet, args.target)
            stopped = {i.instance_id for i in instances}
            for forward in fleet.forwards():
                if forward.instance_id in stopped:
                    forward.close()
            fleet.stop(instances, keep_disk=args.keep_disk)
            verb = "stopped" if args.keep_disk else "released"
            print(f"{verb} {len(instances)} instance(s)" + (" [sandbox]" if self._sandboxed else ""))

    @line_magic
    @magic_arguments()
    @argument("--name", help="Only the instances of this name.")
    def ecs_list(self, line: str) -> InstanceList:
        """The instances this tool created, found again by tag (also after a kernel restart)."""
        args = _parse(self.ecs_list, line)
        with _as_usage_error():
            fleet = self._session()
            found = fleet.find(args.name)
            return InstanceList(found, via={i.instance_id: fleet.reach(i) for i in found}, costs=fleet.costs(found))

    @line_magic
    @magic_arguments()
    @argument("command", choices=["list", "delete"], help="Show, or delete, the network this tool made.")
    @argument("--vpc-id", help="delete: only what this tool made in this VPC.")
    def ecs_network(self, line: str) -> list[ToolNetwork] | None:
        """The VPC, vSwitches and security group %ecs_start made (it makes them when given none).

        They cost nothing while idle and stay after %ecs_stop; `delete` removes them, refused
        while instances use them.
        """
        args = _parse(self.ecs_network, line)
        with _as_usage_error():
            fleet = self._session()
            if args.command == "delete":
                deleted = fleet.delete_networks(args.vpc_id)
                print(f"deleted {len(deleted)} network resource(s)" if deleted else "no network to delete")
                return None
            networks = fleet.networks()
            for network in networks:
                print(network_line(network))
            if not networks:
                print("this tool has made no network in this region yet")
            return networks

    @line_magic
    @magic_arguments()
    @argument("command", choices=["start", "stop", "status"], help="What to do with the local sandbox.")
    def ecs_sandbox(self, line: str) -> None:
        """Start, stop or show the local ECS sandbox that the magics use without credentials."""
        args = _parse(self.ecs_sandbox, line)
        state_dir = default_state_dir()
        with _as_usage_error():
            if args.command == "start":
                info, started = sandbox.ensure_running(state_dir)
                print(f"sandbox {'started' if started else 'already running'} at {info.endpoint}")
            elif args.command == "stop":
                if self._fleet is not None:
                    self._fleet.close()
                    self._fleet = self._fleet_config = None
                stopped = sandbox.stop(state_dir)
                print("sandbox stopped" if stopped else "no sandbox was running")
            else:
                running = sandbox.read_info(state_dir)
                if running is None:
                    print("no sandbox is running")
                else:
                    status = sandbox.status(running)
                    print(f"sandbox at {status['endpoint']}: {len(status['instances'])} instance(s)")


class _Link:
    """A clickable link in the notebook, the plain URL elsewhere."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __repr__(self) -> str:
        return self.url

    def _repr_html_(self) -> str:
        return f'<a href="{self.url}" target="_blank">{self.url}</a>'
