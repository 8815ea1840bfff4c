"""The faces' fallback: with no Alibaba Cloud credentials anywhere, use the local sandbox."""

from __future__ import annotations

from collections.abc import Callable

from .core import EcsConfig
from .sandbox import default_state_dir
from .sandbox._control import start as start_sandbox


def with_sandbox_fallback(config: EcsConfig, say: Callable[[str], None]) -> EcsConfig:
    """`config` if it has credentials; otherwise one for the local sandbox, started if needed."""
    if config.has_credentials:
        return config
    state_dir = default_state_dir()
    info, started = start_sandbox(state_dir)
    say(
        "NO ALIBABA CLOUD CREDENTIALS FOUND: using the local ECS sandbox at "
        f"{info['endpoint']} ({'started it' if started else 'already running'}, state dir {state_dir}). "
        "Set ALIBABA_CLOUD_ACCESS_KEY_ID and ALIBABA_CLOUD_ACCESS_KEY_SECRET to use Alibaba Cloud."
    )
    return config.with_changes(
        endpoint=info["endpoint"],
        region_id=info["region_id"],
        access_key_id=info["access_key_id"],
        access_key_secret=info["access_key_secret"],
        credentials_source="local sandbox",
    )
