"""Face: how the user in front calls the tool, so that a hint says what to type there."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Face:
    """The spelling of the commands a hint may name; flags are spelled alike on both faces."""

    start: str = "Fleet.start"
    list: str = "Fleet.find"
    user_flag: str = "user="

    def reuse(self, instance_id: str) -> str:
        """How to start an existing instance again."""
        if self.start == "Fleet.start":
            return f"Fleet.start(instance_ids=[{instance_id!r}])"
        return f"{self.start} --instance-id {instance_id}"


PYTHON = Face()
