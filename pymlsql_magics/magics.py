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
from dataclasses import fields
from pathlib import Path
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from traitlets import Float, Int, Unicode

from . import sandbox
from ._embedded import with_sandbox_fallback
from .core import (
    ConfigError,
    EcsConfig,
    Fleet,
    FleetError,
    FleetResult,
    Instance,
    InstanceList,
    PymlsqlError,
    parse_duration,
)
from .sandbox import SandboxError, default_state_dir
from .widgets import CopyView, ExecView, StartView, has_widget_frontend

_DEFAULTS = EcsConfig()
_REMOTE = re.compile(r"^(?P<target>[A-Za-z_][\w.\-]*|i-[\w]+):(?P<path>.*)$")


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


def _duration(text: str | None) -> float | None:
    return None if text is None else parse_duration(text)


def _pairs(items: list[str] | None, what: str) -> dict[str, str]:
    pairs = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{what} must be KEY=VALUE, got {item!r}\nHint: e.g. {what} team=ml")
        pairs[key] = value
    return pairs


@magics_class
class EcsMagics(Magics):
    """Start, use and release Alibaba Cloud ECS instances from a notebook."""

    region_id = Unicode(_DEFAULTS.region_id, help="Region of the instances.").tag(config=True)
    start_timeout = Float(_DEFAULTS.start_timeout, help="Seconds to wait for Running and SSH.").tag(config=True)
    ssh_connect_timeout = Float(_DEFAULTS.ssh_connect_timeout, help="Seconds to connect over SSH.").tag(config=True)
    keepalive_interval = Float(
        _DEFAULTS.keepalive_interval, help="Seconds of silence before checking a connection still answers."
    ).tag(config=True)
    max_parallel = Int(_DEFAULTS.max_parallel, help="Instances worked on at once.").tag(config=True)
    known_hosts = Unicode(_DEFAULTS.known_hosts, help="Where host keys are pinned.").tag(config=True)
    key_dir = Unicode(_DEFAULTS.key_dir, help="Folder of private keys, one file per key pair.").tag(config=True)
    api_attempts = Int(_DEFAULTS.api_attempts, help="Tries of a throttled or failing API call.").tag(config=True)
    exec_output_limit = Int(
        _DEFAULTS.exec_output_limit, help="Characters of each stream kept in -o results (the last ones)."
    ).tag(config=True)
    key_pair_name = Unicode("", help="Key pair for new instances and for logging in.").tag(config=True)
    instance_type = Unicode("ecs.g7.large", help="Instance type of new instances.").tag(config=True)
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
            f.name: getattr(self, f.name)
            for f in fields(EcsConfig)
            if self.has_trait(f.name) and getattr(self, f.name) != self.trait_defaults(f.name)
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
                config = config.with_changes(endpoint=info.endpoint, region_id=info.region_id,
                                             access_key_id=info.access_key_id,
                                             access_key_secret=info.access_key_secret,
                                             credentials_source="local sandbox")  # fmt: skip
            with Fleet(config) as fleet:
                left = fleet.find()
        except PymlsqlError as error:
            print(f"pymlsql: could not look for instances left running: {str(error).splitlines()[0]}", file=sys.stderr)
            return
        if not left:
            return
        shown = ", ".join(f"{i.instance_id} ({i.status}{', ' + i.name if i.name else ''})" for i in left[:10])
        more = f" and {len(left) - 10} more" if len(left) > 10 else ""
        where = " in the local sandbox" if config.credentials_source == "local sandbox" else ""
        print(
            f"pymlsql: {len(left)} instance(s) this tool created are still there{where}: {shown}{more}.\n"
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
            self._fleet = Fleet(config)
            self._fleet_config = config
        return self._fleet

    @property
    def _sandboxed(self) -> bool:
        return self._fleet_config is not None and self._fleet_config.credentials_source == "local sandbox"

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
    @argument("--image-id", help="Image to create instances from.")
    @argument("--instance-type", help="Instance type (default: EcsMagics.instance_type).")
    @argument("--count", type=int, default=1, help="How many instances.")
    @argument("--name", help="Name them; a start with a name returns what an earlier one made.")
    @argument("--key-pair-name", help="Key pair to authorize for root (default: EcsMagics.key_pair_name).")
    @argument("--init-ssh-key", action="store_true", help="Create the key pair, saving its key to ~/.ssh/NAME.")
    @argument("--need-public-ip", action="store_true", help="Give the instances public IPs.")
    @argument("--security-group", help="Security group id.")
    @argument("--vswitch-id", help="vSwitch id.")
    @argument("--zone", help="Zone id.")
    @argument("--tag", action="append", metavar="KEY=VALUE", help="Tag; repeatable.")
    @argument("--user-data", metavar="FILE", help="User data file (#! script or #cloud-config).")
    @argument("--ttl", metavar="DURATION", help="Release automatically after this long, e.g. 2h.")
    @argument("--instance-id", action="append", metavar="ID", help="Reuse this instance; repeatable.")
    @argument("--timeout", type=float, help="Seconds to wait for Running and SSH.")
    @argument("--keep-on-failure", action="store_true", help="Keep what a failed start created.")
    @argument("--region", help="Region (default: EcsMagics.region_id).")
    def ecs_start(self, line: str) -> InstanceList:
        """Start ECS instances and wait until SSH works; returns them as a fleet.

        nodes = %ecs_start --image-id m-sandbox-webuser --count 2 --name demo --key-pair-name demo --init-ssh-key
        """
        args = _parse(self.ecs_start, line)
        with _as_usage_error():
            user_data = None
            if args.user_data:
                try:
                    user_data = Path(args.user_data).expanduser().read_text()
                except OSError as error:
                    raise ConfigError(
                        f"cannot read the user data file {args.user_data}: {error.strerror}", hint="Check --user-data."
                    ) from None
            fleet = self._session(start_timeout=args.timeout, region_id=args.region)
            view = StartView(sandbox=self._sandboxed, live=has_widget_frontend())
            instances = fleet.start(
                image_id=args.image_id,
                instance_type=args.instance_type or self.instance_type,
                count=args.count,
                name=args.name,
                instance_ids=args.instance_id,
                key_pair_name=args.key_pair_name or self.key_pair_name or None,
                init_ssh_key=args.init_ssh_key,
                need_public_ip=args.need_public_ip,
                security_group=args.security_group,
                vswitch=args.vswitch_id,
                zone=args.zone,
                tags=_pairs(args.tag, "--tag"),
                user_data=user_data,
                ttl=_duration(args.ttl),
                keep_on_failure=args.keep_on_failure,
                watch=view.update,
            )
            view.finish()
        return InstanceList(instances)

    @cell_magic
    @magic_arguments()
    @argument("target", nargs="+", help="A fleet variable, instance ids, or a name.")
    @argument("--user", help="Run as this user, like `su - USER` (default: EcsMagics.default_user).")
    @argument("--timeout", type=float, help="Stop the script after this many seconds.")
    @argument("--env", action="append", metavar="KEY=VALUE", help="Environment variable; repeatable.")
    @argument("--allow-fail", action="store_true", help="Keep the cell green when a script exits non-zero.")
    @argument("-o", "--out", metavar="NAME", help="Store the results (instance id -> result) in this variable.")
    @argument("--public", action="store_true", help="Connect through the public IPs.")
    @argument("--pty", action="store_true", help="Run on a terminal (for programs that need one); merges stderr.")
    def ecs_exec(self, line: str, cell: str) -> None:
        """Run the cell as a bash script on each instance, streaming its output live."""
        args = _parse(self.ecs_exec, line)
        env = _pairs(args.env, "--env")
        script = "".join(f"export {key}={shlex.quote(value)}\n" for key, value in env.items()) + cell
        with _as_usage_error():
            fleet = self._session()
            instances = self._resolve(fleet, args.target)
            stamp = time.strftime("%Y%m%d-%H%M%S")
            log_path = Path(self.log_dir).expanduser() / f"exec-{stamp}-{instances[0].instance_id}.log"
            view = ExecView([i.instance_id for i in instances], max_lines=self.output_lines, log_path=log_path,
                            sandbox=self._sandboxed, live=has_widget_frontend())  # fmt: skip
            cancel = threading.Event()
            result: FleetResult | None = None
            try:
                result = fleet.exec(instances, script, user=args.user or self.default_user, sink=view,
                                    timeout=args.timeout, check=False, key_pair_name=self.key_pair_name or None,
                                    public=args.public, cancel=cancel, pty=args.pty)  # fmt: skip
            except KeyboardInterrupt:
                view.finish(None, interrupted=True)
                raise
            view.finish(result)
            if args.out:
                self.shell.user_ns[args.out] = result
            if result.failed and not args.allow_fail:
                raise FleetError(_exec_failure(result), result=result, hint=_failure_hint(result))

    @line_magic
    @magic_arguments()
    @argument("source", help="Local path, or TARGET:/path on instances.")
    @argument("target", help="Local path, or TARGET:/path on instances.")
    @argument("--user", help="Owner of copies on instances; relative remote paths start at their home.")
    @argument("--public", action="store_true", help="Connect through the public IPs.")
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
                                       check=False)  # fmt: skip
            else:
                assert remote_source is not None
                instances = self._resolve(fleet, [remote_source["target"]])
                view = CopyView([i.instance_id for i in instances], description=f"{args.source} -> {args.target}",
                                sandbox=self._sandboxed, live=has_widget_frontend())  # fmt: skip
                result = self._download(fleet, instances, remote_source["path"], args.target, user, key,
                                        args.public, view)  # fmt: skip
            view.finish(dict(result))
            if result.failed:
                reasons = "; ".join(_naming(i, e) for i, e in result.failed.items())
                raise FleetError(f"the copy failed on {reasons}", result=result, hint=_failure_hint(result))

    def _download(self, fleet: Fleet, instances: list[Instance], source: str, target: str, user: str,
                  key: str | None, public: bool, view: CopyView) -> FleetResult:  # fmt: skip
        outcomes: dict[str, object] = {}
        for instance in instances:
            destination = target
            if len(instances) > 1:
                # From several instances: one sub-directory per instance.
                folder = Path(target).expanduser() / instance.instance_id
                folder.mkdir(parents=True, exist_ok=True)
                destination = str(folder)
            try:
                outcomes[instance.instance_id] = fleet.copy_from(instance, source or ".", destination, user=user,
                                                                 key_pair_name=key, public=public,
                                                                 progress=view.progress)  # fmt: skip
            except PymlsqlError as error:
                outcomes[instance.instance_id] = error
        return FleetResult(outcomes)

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
            return InstanceList(self._session().find(args.name))

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


def _exec_failure(result: FleetResult) -> str:
    parts = []
    for instance_id, outcome in result.failed.items():
        status = getattr(outcome, "exit_status", None)
        parts.append(f"{instance_id} exit {status}" if status is not None else _naming(instance_id, outcome))
    return f"the script failed on {len(parts)} of {len(result)} instance(s): " + ", ".join(parts)


def _naming(instance_id: str, error: object) -> str:
    """The first line of an instance's error, led by its id unless the error already starts with it."""
    line = str(error).splitlines()[0]
    return line if line.startswith(instance_id) else f"{instance_id}: {line}"


def _failure_hint(result: FleetResult) -> str | None:
    """The hint of the first failure that has one: failures of one cell tend to share a cause."""
    return next((o.hint for o in result.failed.values() if isinstance(o, PymlsqlError) and o.hint), None)
