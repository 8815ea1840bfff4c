"""The faces' fallback: with no Alibaba Cloud credentials anywhere, use the local sandbox."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .core import ConfigError, CredentialsSource, EcsConfig
from .sandbox import SandboxError, SandboxInfo, default_state_dir, ensure_running


def with_sandbox_fallback(config: EcsConfig, say: Callable[[str], None]) -> EcsConfig:
    """`config` if it has credentials; otherwise one for the local sandbox, started if needed."""
    if config.has_credentials:
        return config
    state_dir = default_state_dir()
    try:
        info, started = ensure_running(state_dir)
    except (OSError, SandboxError) as error:
        raise ConfigError(
            f"no Alibaba Cloud credentials found, and the local sandbox cannot start in {state_dir}: "
            + _reason(error, state_dir),
            hint="Set ALIBABA_CLOUD_ACCESS_KEY_ID and ALIBABA_CLOUD_ACCESS_KEY_SECRET (or configure the aliyun "
            "CLI) to use Alibaba Cloud, or set PYMLSQL_SANDBOX_DIR to a folder you can write.",
        ) from None
    say(
        "NO ALIBABA CLOUD CREDENTIALS FOUND: using the local ECS sandbox at "
        f"{info.endpoint} ({'started it' if started else 'already running'}, state dir {state_dir}). "
        "Set ALIBABA_CLOUD_ACCESS_KEY_ID and ALIBABA_CLOUD_ACCESS_KEY_SECRET to use Alibaba Cloud."
    )
    return in_sandbox(config, info)


def in_sandbox(config: EcsConfig, info: SandboxInfo) -> EcsConfig:
    """`config` pointed at the running sandbox `info` describes, with its credentials."""
    return config.with_changes(
        endpoint=info.endpoint,
        region_id=info.region_id,
        access_key_id=info.access_key_id,
        access_key_secret=info.access_key_secret,
        credentials_source=CredentialsSource.SANDBOX,
        metadata_endpoint="off",
    )


def _reason(error: Exception, state_dir: Path) -> str:
    if isinstance(error, OSError):
        return f"{error.strerror or error} ({error.filename})" if error.filename else str(error.strerror or error)
    # The control error quotes the sandbox's log below its first line; the log stays on disk.
    first = str(error).splitlines()[0].rstrip(":")
    return first if "server.log" in first else f"{first} (see {state_dir / 'server.log'})"
