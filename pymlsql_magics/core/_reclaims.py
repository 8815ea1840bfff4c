"""Spot reclaims seen while scripts and copies run: one DescribeInstances for all spot instances
every few seconds, a line in each reclaimed instance's output, and its failure named for what it is."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from ._errors import PymlsqlError
from ._launch import SPOT_MARKETS
from ._output import NullSink, OutputSink
from ._results import ExecResult, Instance

if TYPE_CHECKING:
    from ._ecs import EcsClient

# ECS gives 5 minutes' notice: a look every few seconds sees it long before the instance goes.
POLL_INTERVAL = 5.0
Outcome = TypeVar("Outcome")


class InstanceReclaimedError(PymlsqlError):
    """ECS reclaimed a spot instance while something ran on it."""


class ReclaimWatch:
    """While open, watches the spot instances among `instances` for ECS's reclaim notice."""

    def __init__(self, ecs: Callable[[], EcsClient], instances: Sequence[Instance], *,
                 sink: OutputSink | None = None, interval: float = POLL_INTERVAL) -> None:  # fmt: skip
        self._ecs = ecs  # made only once a spot instance needs watching
        self._spot = [i.instance_id for i in instances if i.spot_strategy in SPOT_MARKETS]
        self._sink = sink or NullSink()
        self._interval = interval
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.noticed: dict[str, float] = {}  # instance id -> when the notice was first seen
        for instance in instances:
            if instance.reclaim_notice:
                self._notice(instance.instance_id)

    def __enter__(self) -> ReclaimWatch:
        if self._spot:
            self._thread = threading.Thread(target=self._watch, name="pymlsql-reclaims", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._interval + 1)

    def guarded(self, work: Callable[[Instance], Outcome]) -> Callable[[Instance], Outcome]:
        """`work`, whose failure on a reclaimed instance says it was reclaimed."""

        def run(instance: Instance) -> Outcome:
            try:
                outcome = work(instance)
            except PymlsqlError as error:
                if not self._seen(instance.instance_id):
                    raise
                raise self._reclaimed(instance.instance_id) from error
            if isinstance(outcome, ExecResult) and not outcome.ok and self._seen(instance.instance_id):
                raise self._reclaimed(instance.instance_id)
            return outcome

        return run

    def _reclaimed(self, instance_id: str) -> InstanceReclaimedError:
        when = time.strftime("%H:%M:%S", time.localtime(self.noticed[instance_id]))
        return InstanceReclaimedError(
            f"{instance_id} was reclaimed at {when} (ECS reclaims spot instances with 5 minutes' notice): "
            "what ran on it ended with it",
            hint="Start the fleet again with the same --name and --count to replace it, or without "
            "--spot for instances ECS does not reclaim.",
        )

    def _seen(self, instance_id: str) -> bool:
        if instance_id not in self._spot:
            return False
        with self._lock:
            if instance_id in self.noticed:
                return True
        self._look()
        with self._lock:
            return instance_id in self.noticed

    def _watch(self) -> None:
        while not self._stop.wait(self._interval):
            self._look()

    def _look(self) -> None:
        try:
            found = self._ecs().describe(self._spot)
        except PymlsqlError:
            return  # a missed look is made up at the next one
        listed = {instance.instance_id for instance in found}
        for instance in found:
            if instance.reclaim_notice:
                self._notice(instance.instance_id)
        with self._lock:
            # Released after its notice: the notice was given, even if no look caught it.
            gone = [instance_id for instance_id in self._spot if instance_id not in listed]
        for instance_id in gone:
            self._notice(instance_id)

    def _notice(self, instance_id: str) -> None:
        with self._lock:
            if instance_id in self.noticed:
                return
            self.noticed[instance_id] = time.time()
        when = time.strftime("%H:%M:%S", time.localtime(self.noticed[instance_id]))
        self._sink.write(instance_id, "stderr", f"pymlsql: reclaimed at {when}: ECS is taking this spot instance "
                                                "back (5 minutes' notice)\n")  # fmt: skip
