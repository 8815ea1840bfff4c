"""LaunchSpec: what a start asks ECS for, and the one table of start settings.

Each field of LaunchSpec carries its row of the table (help, flag, aliases, how its text is read).
Both faces build their flags from it, the magics their `%config` traits, and `_ecs.py` maps the
spec to RunInstances: a new start setting is written once, here.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

from ._config import check_cidr, parse_duration
from ._errors import ConfigError

FaceName = Literal["magics", "cli"]
Kind = Literal["text", "int", "number", "seconds", "duration", "flag", "file", "pairs", "list", "choice"]
SPOT_STRATEGIES = ("NoSpot", "SpotWithPriceLimit", "SpotAsPriceGo")
SPOT_MARKETS = SPOT_STRATEGIES[1:]  # the strategies of spot instances, which ECS may reclaim
MAX_BANDWIDTH = 100  # Mbit/s, as RunInstances allows
DEFAULT_BANDWIDTH = 10


@dataclass(frozen=True)
class Setting:
    """One row of the table: how the faces offer a LaunchSpec field."""

    name: str
    kind: Kind
    help: str
    flag: str
    metavar: str | None = None
    choices: tuple[str, ...] = ()
    aliases: Mapping[FaceName, tuple[str, ...]] = field(default_factory=dict)
    # Also a `%config EcsMagics.<name>` trait: a default a notebook sets once for every start.
    configurable: bool = False

    def options(self, face: FaceName) -> list[str]:
        return [self.flag, *self.aliases.get(face, ())]


def _setting(default: Any, kind: Kind, help: str, *, flag: str = "", factory: Any = None, **options: Any) -> Any:
    row = {"kind": kind, "help": help, "flag": flag, **options}
    if factory is not None:
        return field(default_factory=factory, metadata={"setting": row})
    return field(default=default, metadata={"setting": row})


@dataclass(frozen=True)
class LaunchSpec:
    """What a start creates or reuses. Every field has its flag of the same name on both faces."""

    image_id: str | None = _setting(None, "text", "image to create instances from", configurable=True, metavar="ID")
    instance_type: str = _setting("ecs.g7.large", "text", "instance type; A,B tries B where A has no stock left",
                                  configurable=True, metavar="TYPE[,TYPE...]")  # fmt: skip
    count: int = _setting(1, "int", "how many instances")
    name: str | None = _setting(None, "text", "name them; a start with a name finds what an earlier one made "
                                "and creates only what is missing")  # fmt: skip
    instance_ids: tuple[str, ...] = _setting((), "list", "reuse this instance (started if Stopped); repeatable",
                                             flag="--instance-id", metavar="ID")  # fmt: skip
    key_pair_name: str | None = _setting(None, "text", "key pair to authorize for root; its private key is "
                                         "~/.ssh/NAME", configurable=True, metavar="NAME")  # fmt: skip
    init_ssh_key: bool = _setting(False, "flag", "create the key pair (or import ~/.ssh/NAME) and save its "
                                  "private key to ~/.ssh/NAME")  # fmt: skip
    need_public_ip: bool | None = _setting(None, "flag", "give the instances public IPs (default: when this client "
                                           "runs outside their VPC, which then reaches them only so)",
                                           configurable=True)  # fmt: skip
    bandwidth: int | None = _setting(None, "int", f"outbound internet bandwidth of each public IP in Mbit/s, "
                                     f"1-{MAX_BANDWIDTH} (default {DEFAULT_BANDWIDTH})", metavar="MBIT",
                                     configurable=True)  # fmt: skip
    security_group: str | None = _setting(None, "text", "security group id (default: the one this tool makes, "
                                          "SSH open to --ssh-cidr)", configurable=True, metavar="ID")  # fmt: skip
    vswitch_id: str | None = _setting(None, "text", "vSwitch id (default: the one this tool makes in its VPC)",
                                      configurable=True, metavar="ID", aliases={"cli": ("--vswitch",)})  # fmt: skip
    zone: str | None = _setting(None, "text", "zone id (default: one that offers the instance type)",
                                configurable=True, metavar="ZONE")  # fmt: skip
    ssh_source_cidr: str | None = _setting(None, "text", "addresses the security group this tool makes lets SSH "
                                           "in from (default: the ssh_source_cidr setting, 0.0.0.0/0)",
                                           metavar="CIDR",
                                           aliases={"cli": ("--ssh-cidr",), "magics": ("--ssh-cidr",)})  # fmt: skip
    tags: Mapping[str, str] = _setting(None, "pairs", "tag; repeatable", flag="--tag", metavar="KEY=VALUE",
                                       factory=dict)  # fmt: skip
    user_data: str | None = _setting(None, "file", "user data file (#! script or #cloud-config)", metavar="FILE",
                                     aliases={"cli": ("--user-data-file",)})  # fmt: skip
    spot_strategy: str | None = _setting(None, "choice", "spot pricing", choices=SPOT_STRATEGIES, configurable=True)
    spot: bool = _setting(False, "flag", "spot instances at the market price (SpotAsPriceGo), often a tenth of "
                          "the price; ECS may reclaim them with 5 minutes' notice", configurable=True)  # fmt: skip
    spot_price_limit: float | None = _setting(None, "number", "spot instances that cost at most this much per "
                                              "hour each (SpotWithPriceLimit)", metavar="PRICE",
                                              configurable=True)  # fmt: skip
    max_price_per_hour: float | None = _setting(None, "number", "refuse a start whose instances would cost more "
                                                "than this per hour in all, before creating any", metavar="PRICE",
                                                configurable=True)  # fmt: skip
    ram_role: str | None = _setting(None, "text", "RAM role of the instances: programs on them get its STS "
                                    "credentials from the metadata service, with no key", configurable=True,
                                    metavar="NAME")  # fmt: skip
    system_disk_size: int | None = _setting(None, "int", "system disk size in GiB", metavar="GIB", configurable=True)
    system_disk_category: str | None = _setting(None, "text", "system disk category, e.g. cloud_essd",
                                                configurable=True, metavar="CATEGORY")  # fmt: skip
    ttl: float | None = _setting(None, "duration", "release automatically after this long (ECS AutoReleaseTime), "
                                 "e.g. 2h", metavar="DURATION")  # fmt: skip
    start_timeout: float | None = _setting(None, "seconds", "give up waiting for Running and SSH after this long "
                                           "(default: the start_timeout setting)", metavar="SECONDS",
                                           aliases={"magics": ("--timeout",)})  # fmt: skip
    keep_on_failure: bool = _setting(False, "flag", "keep what a failed start created")

    @property
    def instance_types(self) -> tuple[str, ...]:
        """The types of `instance_type` ("A,B"), in the order they are tried."""
        return tuple(item.strip() for item in self.instance_type.split(","))

    @property
    def spot_mode(self) -> str | None:
        """The SpotStrategy RunInstances gets: --spot-price-limit, --spot or --spot-strategy says it."""
        if self.spot_price_limit is not None:
            return "SpotWithPriceLimit"
        if self.spot:
            return "SpotAsPriceGo"
        return self.spot_strategy

    def __post_init__(self) -> None:
        if not all(self.instance_types):
            raise ConfigError(f"--instance-type {self.instance_type!r} has an empty type",
                              hint="Pass one type, or several with commas: ecs.g7.large,ecs.g6.large")  # fmt: skip
        # --spot and --spot-price-limit say the strategy; a different --spot-strategy contradicts them.
        if (self.spot or self.spot_price_limit is not None) and self.spot_strategy not in (None, self.spot_mode):
            given = "--spot-price-limit" if self.spot_price_limit is not None else "--spot"
            raise ConfigError(f"--spot-strategy {self.spot_strategy} contradicts {given}",
                              hint="Drop --spot-strategy: --spot and --spot-price-limit say it.")  # fmt: skip
        for flag, price in (("--spot-price-limit", self.spot_price_limit), ("--max-price-per-hour",
                                                                             self.max_price_per_hour)):  # fmt: skip
            if price is not None and not price > 0:
                raise ConfigError(f"{flag} must be a price above 0, got {price:g}", hint=f"e.g. {flag} 0.5")
        if self.count < 1:
            raise ConfigError(f"count must be at least 1, got {self.count}", hint="Pass --count 1 or more.")
        if self.spot_strategy is not None and self.spot_strategy not in SPOT_STRATEGIES:
            raise ConfigError(f"unknown spot strategy {self.spot_strategy!r}",
                              hint=f"Pass --spot-strategy with one of {', '.join(SPOT_STRATEGIES)}.")  # fmt: skip
        if self.bandwidth is not None:
            if not 1 <= self.bandwidth <= MAX_BANDWIDTH:
                raise ConfigError(
                    f"--bandwidth must be 1 to {MAX_BANDWIDTH} Mbit/s, got {self.bandwidth}",
                    hint=f"ECS allows 1-{MAX_BANDWIDTH}; e.g. --bandwidth {DEFAULT_BANDWIDTH}.",
                )
            if self.need_public_ip is False:
                raise ConfigError("--bandwidth is the bandwidth of public IPs, and --need-public-ip is false",
                                  hint="Drop one of the two.")  # fmt: skip
        if self.ssh_source_cidr is not None:
            check_cidr(self.ssh_source_cidr, "--ssh-cidr")
        object.__setattr__(self, "tags", MappingProxyType(dict(self.tags)))
        object.__setattr__(self, "instance_ids", tuple(self.instance_ids))


def _row(item: Field[Any]) -> Setting:
    row = dict(item.metadata["setting"])
    row["flag"] = row["flag"] or "--" + item.name.replace("_", "-")
    return Setting(name=item.name, **row)


SETTINGS: tuple[Setting, ...] = tuple(_row(item) for item in fields(LaunchSpec))
DEFAULTS = LaunchSpec()


class GivenFile(NamedTuple):
    """A file named on the command line, with the flag it was given with (for the message if unreadable)."""

    path: str
    flag: str


class _FileFlag(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:  # fmt: skip
        setattr(namespace, self.dest, GivenFile(str(values), option_string or self.option_strings[0]))


def parse_flag(text: str) -> bool:
    """PyMLSQL's booleans: `--need-public-ip true`; a flag given alone means true."""
    value = text.strip().lower()
    if value in ("true", "yes", "1", "on"):
        return True
    if value in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def start_arguments(face: FaceName) -> list[tuple[list[str], dict[str, Any]]]:
    """(option strings, `add_argument` keywords) of every start setting, in the face's spelling.

    Every flag defaults to None, "not given": the configured value or the spec's default applies.
    """
    arguments = []
    for setting in SETTINGS:
        default = getattr(DEFAULTS, setting.name)
        shown = f" (default {default})" if default not in (None, False, (), {}) else ""
        if face == "magics" and setting.configurable:
            shown += f"; %%config EcsMagics.{setting.name} sets it for the notebook"  # argparse expands %
        keywords: dict[str, Any] = {"dest": setting.name, "default": None, "help": setting.help + shown}
        if setting.metavar:
            keywords["metavar"] = setting.metavar
        if setting.kind in ("int", "seconds", "number"):
            keywords["type"] = int if setting.kind == "int" else float
        elif setting.kind == "flag":
            keywords.update(nargs="?", const=True, type=parse_flag, metavar="true|false")
        elif setting.kind == "file":
            keywords["action"] = _FileFlag
        elif setting.kind in ("pairs", "list"):
            keywords["action"] = "append"
        elif setting.kind == "choice":
            keywords["choices"] = setting.choices
        arguments.append((setting.options(face), keywords))
    return arguments


def launch_spec(flags: Mapping[str, Any], configured: Mapping[str, Any] | None = None) -> LaunchSpec:
    """The spec of a start's parsed flags (None: not given), over the face's configured defaults.

    Raises ConfigError naming the flag of a value that cannot be read.
    """
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        given = flags.get(setting.name)
        if given is None and configured is not None:
            given = configured.get(setting.name)
        if given is None:
            continue
        values[setting.name] = _read(setting, given)
    return LaunchSpec(**values)


def _read(setting: Setting, given: Any) -> Any:
    if setting.kind == "file":
        return _read_file(given if isinstance(given, GivenFile) else GivenFile(str(given), setting.flag))
    if setting.kind == "duration" and isinstance(given, str):
        try:
            return parse_duration(given)
        except ConfigError as error:
            raise ConfigError(f"{setting.flag}: {error}", hint=f"e.g. {setting.flag} 2h") from None
    if setting.kind == "pairs" and isinstance(given, Sequence) and not isinstance(given, str):
        return parse_pairs(setting.flag, given)
    if setting.kind == "list":
        return tuple(given)
    return given


def parse_pairs(flag: str, items: Sequence[str] | None) -> dict[str, str]:
    """`KEY=VALUE` items of a repeatable flag as a dict; raises ConfigError naming the flag and a bad item."""
    pairs = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} must be KEY=VALUE, got {item!r}", hint=f"e.g. {flag} team=ml")
        pairs[key] = value
    return pairs


def _read_file(given: GivenFile) -> str:
    try:
        return Path(given.path).expanduser().read_text()
    except OSError as error:
        raise ConfigError(f"cannot read the user data file {given.path}: {error.strerror}",
                          hint=f"Check {given.flag}.") from None  # fmt: skip


_MAX_TAGS = 20  # per instance, the tool's own included


def check_tags(own: Mapping[str, str], tags: Mapping[str, str]) -> None:
    """Refuses tags ECS would refuse, before anything is created (ECS checks them only at RunInstances)."""
    for key, value in tags.items():
        if not key:
            problem = "is empty"
        elif key.startswith(("aliyun", "acs:")):
            problem = "starts with aliyun or acs:, which ECS reserves for its own tags"
        elif "http://" in key or "https://" in key:
            problem = "contains http:// or https://, which ECS refuses"
        elif len(key) > 128:
            problem = "is longer than the 128 characters ECS allows"
        elif value.startswith("acs:") or "http://" in value or "https://" in value or len(value) > 128:
            raise ConfigError(
                f"the value of the tag {key!r} is not allowed by ECS",
                hint="Tag values have at most 128 characters, do not start with acs: and contain no http(s)://.",
            )
        else:
            continue
        raise ConfigError(f"the tag key {key!r} {problem}", hint="Pick another key for --tag KEY=VALUE.")
    if len({**own, **tags}) > _MAX_TAGS:
        raise ConfigError(
            f"ECS allows {_MAX_TAGS} tags per instance; with the {len(own)} this tool adds, {len(tags)} are too many",
            hint="Pass fewer --tag flags.",
        )
