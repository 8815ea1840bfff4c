"""Face: how the user in front calls the tool, so that a hint says what to type there."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Face:
    """The spelling of what hints name; start settings are spelled alike on every face (`--name`)."""

    list: str = "Fleet.find()"
    # How to start an existing instance again; {instance_id} is filled in.
    reuse: str = "Fleet.start(instance_ids=['{instance_id}'])"
    user_flag: str = "user="
    networks: str = "Fleet.networks()"
    # How to release instances by id; {instance_ids} is filled in, separated by spaces.
    release: str = "Fleet.stop(Fleet.get('{instance_ids}'.split()))"

    def reuse_hint(self, instance_id: str) -> str:
        return self.reuse.format(instance_id=instance_id)

    def release_hint(self, instance_ids: Sequence[str]) -> str:
        return self.release.format(instance_ids=" ".join(instance_ids))

    def unreachable_hint(self, then: str = "try again") -> str:
        return f"The instance may be down, busy or unreachable: check it with {self.list}, then {then}."

    def no_user_hint(self) -> str:
        return f"Create the user first (useradd), or pick another user ({self.user_flag})."


PYTHON = Face()
