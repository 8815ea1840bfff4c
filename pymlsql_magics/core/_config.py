"""EcsConfig: every setting of the core, merged from arguments, the environment and defaults."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ._errors import ConfigError

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


@dataclass(frozen=True)
class EcsConfig:
    """Settings of one session with ECS. Durations are float seconds.

    Credentials never appear in the repr. Build it with `EcsConfig.from_env(**overrides)`.
    """

    region_id: str = "cn-hangzhou"
    endpoint: str | None = None  # None: Alibaba Cloud's endpoint for region_id
    start_timeout: float = 600.0
    ssh_connect_timeout: float = 15.0
    # Silence on a connection for this long makes it check the server still answers (within half
    # as long again): a dead link fails the operation in at most 1.5 times this, never hangs it.
    keepalive_interval: float = 10.0
    max_parallel: int = 16
    known_hosts: str = "~/.pymlsql/known_hosts"
    key_dir: str = "~/.ssh"
    api_attempts: int = 6
    # Characters of each stream an ExecResult keeps per instance (the last ones): a script may
    # print gigabytes, which stream through but are not held in memory.
    exec_output_limit: int = 1 << 20
    access_key_id: str | None = field(default=None, repr=False)
    access_key_secret: str | None = field(default=None, repr=False)
    security_token: str | None = field(default=None, repr=False)
    credentials_source: str = "none"

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
        if "access_key_id" in given or "access_key_secret" in given:
            settings["credentials_source"] = "arguments"
        elif environ.get("ALIBABA_CLOUD_ACCESS_KEY_ID") and environ.get("ALIBABA_CLOUD_ACCESS_KEY_SECRET"):
            settings.update(
                access_key_id=environ["ALIBABA_CLOUD_ACCESS_KEY_ID"],
                access_key_secret=environ["ALIBABA_CLOUD_ACCESS_KEY_SECRET"],
                security_token=environ.get("ALIBABA_CLOUD_SECURITY_TOKEN") or None,
                credentials_source="environment",
            )
        elif environ.get("AK") and environ.get("AKS"):
            settings.update(
                access_key_id=environ["AK"], access_key_secret=environ["AKS"], credentials_source="AK/AKS"
            )
        elif _chain_may_have_credentials(environ):
            settings["credentials_source"] = "credential chain"
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

    @property
    def has_credentials(self) -> bool:
        return self.credentials_source != "none"

    def with_changes(self, **changes: Any) -> EcsConfig:
        return replace(self, **{name: value for name, value in changes.items() if value is not None})

    def known_hosts_path(self) -> Path:
        return Path(self.known_hosts).expanduser()

    def key_path(self, key_pair_name: str) -> Path:
        return Path(self.key_dir).expanduser() / key_pair_name


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
