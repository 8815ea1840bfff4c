"""A copy to several instances: one upload per VPC through a relay tree, direct copies for the rest.

Instances are grouped by VPC and key pair (a hop logs in with the one key its seed's agent holds);
each group of two or more is copied to by one relayed upload (see _fanout), the groups at once.
Alone in its VPC, unreached by the relay, or in a group whose seed cannot relay, an instance is
copied to directly, and the Fleet's progress says why.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._errors import PymlsqlError
from ._fanout import can_relay, plan, upload_relayed
from ._results import CopyResult, Instance

if TYPE_CHECKING:
    from ._fleet import CopyProgress, Fleet
    from ._ssh import SshConnection

Outcomes = dict[str, "CopyResult | PymlsqlError"]
Guard = Callable[[Callable[[Instance], CopyResult]], Callable[[Instance], CopyResult]]


class RelayedCopy:
    """One copy of `source` to `target`, as Fleet.copy_to was asked for it."""

    def __init__(self, fleet: Fleet, source: str, target: str, *, user: str, key_pair_name: str | None,
                 public: bool | None, progress: CopyProgress | None, cancel: threading.Event,
                 compress: str = "auto") -> None:  # fmt: skip
        self.fleet, self.source, self.target, self.user = fleet, source, target, user
        self.key_pair_name, self.public, self.cancel, self.compress = key_pair_name, public, cancel, compress
        self.progress = progress or _no_progress

    def run(self, instances: list[Instance], direct: Callable[[Instance], CopyResult], guard: Guard) -> Outcomes:
        """Each instance's result or error; `direct` copies to one instance without a relay, and
        `guard` explains failures of reclaimed instances."""
        fleet = self.fleet
        sessions = fleet.parallel(instances, self._connect, cancel=self.cancel)
        outcomes: Outcomes = {i: error for i, error in sessions.items() if isinstance(error, PymlsqlError)}
        groups: dict[tuple[str, Path], list[Instance]] = {}
        for instance in instances:
            if instance.instance_id not in outcomes:
                key = fleet.key_path(instance, self.key_pair_name)
                groups.setdefault((instance.vpc_id, key), []).append(instance)
        alone = [group[0] for group in groups.values() if len(group) == 1]
        relayed = {group[0].instance_id: (key, group) for (_, key), group in groups.items() if len(group) > 1}

        def relay(seed: Instance) -> tuple[Outcomes, list[Instance]]:
            key, group = relayed[seed.instance_id]
            return self._relay(sessions[seed.instance_id], key, group)

        seeds = [group[0] for _, group in relayed.values()]
        unreached = list(alone)
        for seed_id, done in fleet.parallel(seeds, relay, cancel=self.cancel).items():
            if isinstance(done, PymlsqlError):  # such as a source that cannot be read: the same for every copy
                outcomes.update({member.instance_id: done for member in relayed[seed_id][1]})
                continue
            results, missed = done
            for instance_id, outcome in results.items():
                outcomes[instance_id] = _explained(guard, outcome, instance_id, instances)
            unreached += missed
        outcomes.update(fleet.parallel(unreached, direct, cancel=self.cancel))
        return {instance.instance_id: outcomes[instance.instance_id] for instance in instances}

    def _connect(self, instance: Instance) -> SshConnection:
        fleet = self.fleet
        fleet.require_running(instance)
        return fleet.connection(instance, fleet.key_path(instance, self.key_pair_name), public=self.public)

    def _relay(self, seed: SshConnection, key: Path, group: list[Instance]) -> tuple[Outcomes, list[Instance]]:
        """The relayed copy to `group` (seed first), and the instances it did not reach."""
        say = self.fleet.progress
        try:
            lacking = can_relay(seed)
        except PymlsqlError as error:
            lacking = str(error).splitlines()[0]
        if lacking is not None:
            say(f"{lacking}, so it cannot pass the copy on: copying to {len(group)} instances directly")
            return {}, group
        outcome = upload_relayed(seed, plan(group[0], group[1:]), self.fleet.known_hosts.pinned_lines,
                                 key.read_bytes(), self.source, self.target, user=self.user,
                                 progress=self.progress, cancel=self.cancel, compress=self.compress)  # fmt: skip
        by_reason: dict[str, list[str]] = {}
        for instance_id, reason in outcome.unreached.items():
            by_reason.setdefault(reason, []).append(instance_id)
        for reason, ids in by_reason.items():
            say(f"{reason}; copying to {', '.join(ids)} directly")
        return outcome.results, [member for member in group if member.instance_id in outcome.unreached]


def _explained(guard: Guard, outcome: CopyResult | PymlsqlError, instance_id: str,
               instances: list[Instance]) -> CopyResult | PymlsqlError:  # fmt: skip
    """A relayed outcome, its failure named for what it is when the instance was reclaimed."""
    if not isinstance(outcome, PymlsqlError):
        return outcome
    instance = next(i for i in instances if i.instance_id == instance_id)

    def fail(_: Instance) -> Any:
        raise outcome

    try:
        return guard(fail)(instance)
    except PymlsqlError as error:
        return error


def _no_progress(instance_id: str, done: int, total: int) -> None:
    pass
