"""Bandwidth limits on the sandbox's public addresses, as ECS applies them."""

from __future__ import annotations

import threading
import time

# A link may run this far ahead of its rate: TCP's own bursts pass, a transfer of a few
# seconds still averages the rate within a few per cent.
_BURST_SECONDS = 0.05


class Link:
    """A rate in Mbit/s (10**6 bits) shared by every connection that spends on it."""

    def __init__(self, mbit_per_second: float) -> None:
        self.mbit_per_second = mbit_per_second
        self.bytes_per_second = mbit_per_second * 1e6 / 8
        self._lock = threading.Lock()
        self._free_at = time.monotonic()
        self.carried = 0  # bytes, since the link was made

    def __repr__(self) -> str:
        return f"Link({self.mbit_per_second:g} Mbit/s)"

    @property
    def chunk(self) -> int:
        """How many bytes to carry at once so that waits stay short."""
        return max(4096, int(self.bytes_per_second * _BURST_SECONDS))

    def spend(self, count: int) -> None:
        """Waits until `count` more bytes fit in the rate since the link was last idle."""
        with self._lock:
            now = time.monotonic()
            self.carried += count
            self._free_at = max(self._free_at, now) + count / self.bytes_per_second
            wait = self._free_at - now - _BURST_SECONDS
        if wait > 0:
            time.sleep(wait)


def parse_link(text: str) -> tuple[float, float]:
    """`UP[/DOWN]` in Mbit/s (DOWN defaults to UP), as `--client-link` takes it."""
    up_text, _, down_text = text.partition("/")
    try:
        up = float(up_text)
        down = float(down_text) if down_text else up
    except ValueError:
        raise ValueError(f"--client-link {text!r} is not UP[/DOWN] in Mbit/s (for example 20/100)") from None
    if up <= 0 or down <= 0:
        raise ValueError(f"--client-link {text!r}: rates must be above 0 Mbit/s")
    return up, down
