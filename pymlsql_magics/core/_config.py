"""EcsConfig: every setting of the core, merged from arguments, the environment and defaults."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from pathlib import Path
from typing import Any

from ._errors import ConfigError
from ._whereabouts import METADATA_ENDPOINT, metadata_base, metadata_value

# Files and variables through which the credential chain of alibabacloud-credentials can find
# keys. Without any of them the chain has nothing to find but an ECS RAM role, whose probe of the
# metadata service only makes sense on an ECS instance (ALIBABA_CLOUD_ECS_METADATA names the role).
_CHAIN_VARIABLES = (
    "ALIBABA_CLOUD_CREDENTIALS_FILE",
    "ALIBABA_CLOUD_OIDC_TOKEN_FILE",
    "ALIBABA_CLOUD_ECS_METADATA",
    "ALIBABA_CLOUD_CREDENTIALS_URI",
)
_CHAIN_FILES = (".aliyun/config.json", ".alibabacloud/credentials.ini")


class CredentialsSource(str, Enum):
    """Where the credentials of a session come from."""

    NONE = "none"
    ARGUMENTS = "arguments"
    ENVIRONMENT = "environment"
    AK_AKS = "AK/AKS"
    CHAIN = "credential chain"  # alibabacloud-credentials finds them (a profile, a role, an OIDC token)
    ECS_RAM_ROLE = "ECS RAM role"  # on an ECS instance with a role: STS credentials from its metadata
    SANDBOX = "local sandbox"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


def _setting(default: Any, help: str) -> Any:
    """A setting users may change: it is also a `%config EcsMagics` trait with this help."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class EcsConfig:
    """Settings of one session with ECS. Durations are float seconds.

    Credentials never appear in the repr. Build it with `EcsConfig.from_env(**overrides)`.
    """

    region_id: str = _setting("cn-hangzhou", "Region of the instances (on an ECS instance, its own).")
    endpoint: str | None = None  # None: Alibaba Cloud's endpoint for region_id
    start_timeout: float = _setting(600.0, "Seconds a start waits for Running and SSH.")
    ssh_connect_timeout: float = _setting(15.0, "Seconds to connect over SSH.")
    # Silence on a connection for this long makes it check the server still answers (within half
    # as long again): a dead link fails the operation in at most 1.5 times this, never hangs it.
    keepalive_interval: float = _setting(10.0, "Seconds of silence before checking a connection still answers.")
    max_parallel: int = _setting(16, "Instances worked on at once.")
    known_hosts: str = _setting("~/.pymlsql/known_hosts", "Where host keys are pinned.")
    key_dir: str = _setting("~/.ssh", "Folder of private keys, one file per key pair.")
    api_attempts: int = _setting(6, "Tries of a throttled or failing API call.")
    # Characters of each stream an ExecResult keeps per instance (the last ones): a script may
    # print gigabytes, which stream through but are not held in memory.
    exec_output_limit: int = _setting(1 << 20, "Characters of each stream kept in -o results (the last ones).")
    # SSH is key-only with pinned host keys, so the port may be open to all; narrow it to your
    # address (e.g. 203.0.113.7/32) where policy asks for it.
    ssh_source_cidr: str = _setting("0.0.0.0/0", "Addresses the security group this tool makes lets SSH in from.")
    # The instance metadata service, asked (where this client runs) only on an ECS instance, or
    # where set: PYMLSQL_METADATA_ENDPOINT, "off" never to ask.
    metadata_endpoint: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    access_key_secret: str | None = field(default=None, repr=False)
    security_token: str | None = field(default=None, repr=False)
    credentials_source: CredentialsSource = CredentialsSource.NONE
    ram_role_name: str | None = None  # the instance's RAM role, when credentials_source is ECS_RAM_ROLE

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> EcsConfig:
        """Explicit arguments first, then ALIBABA_CLOUD_* and PYMLSQL_ECS_ENDPOINT, then AK / AKS.

        Arguments that are None mean "not given". Raises ConfigError for an unknown setting.
        """
        environ = os.environ if environ is None else environ
        known = {item.name for item in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        given = {name: value for name, value in overrides.items() if value is not None}
        settings: dict[str, Any] = {}
        if environ.get("ALIBABA_CLOUD_REGION_ID"):
            settings["region_id"] = environ["ALIBABA_CLOUD_REGION_ID"]
        if environ.get("PYMLSQL_ECS_ENDPOINT"):
            settings["endpoint"] = environ["PYMLSQL_ECS_ENDPOINT"]
        if environ.get("PYMLSQL_METADATA_ENDPOINT"):
            settings["metadata_endpoint"] = environ["PYMLSQL_METADATA_ENDPOINT"]
        if "access_key_id" in given or "access_key_secret" in given:
            settings["credentials_source"] = CredentialsSource.ARGUMENTS
        elif environ.get("ALIBABA_CLOUD_ACCESS_KEY_ID") and environ.get("ALIBABA_CLOUD_ACCESS_KEY_SECRET"):
            settings.update(
                access_key_id=environ["ALIBABA_CLOUD_ACCESS_KEY_ID"],
                access_key_secret=environ["ALIBABA_CLOUD_ACCESS_KEY_SECRET"],
                security_token=environ.get("ALIBABA_CLOUD_SECURITY_TOKEN") or None,
                credentials_source=CredentialsSource.ENVIRONMENT,
            )
        elif environ.get("AK") and environ.get("AKS"):
            settings.update(
                access_key_id=environ["AK"],
                access_key_secret=environ["AKS"],
                credentials_source=CredentialsSource.AK_AKS,
            )
        elif _chain_may_have_credentials(environ):
            settings["credentials_source"] = CredentialsSource.CHAIN
        settings.update(_from_instance_metadata(given.get("metadata_endpoint") or settings.get("metadata_endpoint"),
                                                need_region="region_id" not in {**settings, **given},
                                                need_credentials="credentials_source" not in {**settings, **given}))
        config = cls(**{**settings, **given})
        config.check()
        return config

    def check(self) -> None:
        """Raises ConfigError when settings contradict each other or are out of range."""
        if bool(self.access_key_id) != bool(self.access_key_secret):
            raise ConfigError(
                "an AccessKey needs both its id and its secret",
                hint="Set both ALIBABA_CLOUD_ACCESS_KEY_ID and ALIBABA_CLOUD_ACCESS_KEY_SECRET.",
            )
        if self.max_parallel < 1:
            raise ConfigError("max_parallel must be at least 1")
        if self.start_timeout <= 0 or self.ssh_connect_timeout <= 0 or self.keepalive_interval <= 0:
            raise ConfigError("timeouts must be positive")
        if self.api_attempts < 1:
            raise ConfigError("api_attempts must be at least 1")
        if self.exec_output_limit < 0:
            raise ConfigError("exec_output_limit must be 0 or more")
        check_cidr(self.ssh_source_cidr, "ssh_source_cidr")

    @property
    def has_credentials(self) -> bool:
        return self.credentials_source is not CredentialsSource.NONE

    def with_changes(self, **changes: Any) -> EcsConfig:
        return replace(self, **{name: value for name, value in changes.items() if value is not None})

    def known_hosts_path(self) -> Path:
        return Path(self.known_hosts).expanduser()

    def key_path(self, key_pair_name: str) -> Path:
        return Path(self.key_dir).expanduser() / key_pair_name


def _from_instance_metadata(setting: str | None, *, need_region: bool, need_credentials: bool) -> dict[str, Any]:
    """On an ECS instance, what nothing else gave: its region, and its RAM role's credentials.

    Elsewhere nothing is asked (see _whereabouts). The role is used through alibabacloud-credentials,
    which asks the metadata service at its one address, so only there.
    """
    base = metadata_base(setting) if need_region or need_credentials else None
    if base is None:
        return {}
    found: dict[str, Any] = {}
    region = metadata_value(base, "region-id") if need_region else None
    if region:
        found["region_id"] = region
    ask_role = need_credentials and base == METADATA_ENDPOINT
    roles = metadata_value(base, "ram/security-credentials/") if ask_role else None
    if roles:
        found.update(credentials_source=CredentialsSource.ECS_RAM_ROLE, ram_role_name=roles.splitlines()[0].strip())
    return found


def _chain_may_have_credentials(environ: Mapping[str, str]) -> bool:
    if any(environ.get(name) for name in _CHAIN_VARIABLES):
        return True
    if environ.get("ALIBABA_CLOUD_ROLE_ARN") and environ.get("ALIBABA_CLOUD_OIDC_PROVIDER_ARN"):
        return True
    home = Path(environ.get("HOME") or Path.home())
    return any((home / name).is_file() for name in _CHAIN_FILES)


_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?$")


def parse_duration(text: str) -> float:
    """Seconds from `3600`, `90m`, `2h`, `1d` or `1h30m`; raises ConfigError otherwise."""
    match = _DURATION.match(text.strip())
    if not text.strip() or not match or not any(match.groups()):
        raise ConfigError(f"expected a duration like 30m, 2h or 1d, got {text!r}")
    days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return float(days * 86400 + hours * 3600 + minutes * 60 + seconds)


def check_cidr(value: str, name: str) -> None:
    """Raises ConfigError unless `value` is an IPv4 block such as 203.0.113.7/32 or 0.0.0.0/0."""
    try:
        ipaddress.IPv4Network(value, strict=False)
        well_formed = "/" in value
    except ValueError:
        well_formed = False
    if not well_formed:
        raise ConfigError(f"{name} must be an IPv4 address block, got {value!r}",
                          hint="e.g. --ssh-cidr 203.0.113.7/32 for one address, or 0.0.0.0/0 for any.")  # fmt: skip
