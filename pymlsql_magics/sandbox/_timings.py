"""How long the sandbox's lifecycle transitions take."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Timings:
    """Seconds each transition takes; `auto_release_lead` is how far ahead AutoReleaseTime must be."""

    pending: float = 1.0
    starting: float = 1.0
    stopping: float = 1.0
    boot: float = 1.0
    auto_release_lead: float = 30 * 60
