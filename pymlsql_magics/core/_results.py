"""What operations return: instances as ECS describes them, and per-instance outcomes."""

from __future__ import annotations

import html
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Generic, TypeVar

from ._errors import PymlsqlError

if TYPE_CHECKING:
    from ._costs import Cost


@dataclass(frozen=True)
class Instance:
    """One ECS instance as DescribeInstances reported it."""

    instance_id: str
    status: str
    name: str = ""
    hostname: str = ""
    private_ip: str = ""
    public_ip: str = ""
    key_pair_name: str = ""
    image_id: str = ""
    instance_type: str = ""
    zone_id: str = ""
    tags: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    vpc_id: str = ""
    vswitch_id: str = ""
    security_group_ids: tuple[str, ...] = ()
    spot_strategy: str = ""
    creation_time: str = ""  # as ECS gives it, e.g. 2026-12-03T08:15Z
    lock_reasons: tuple[str, ...] = ()  # OperationLocks: "Recycling" once ECS is to reclaim a spot instance

    @property
    def reclaim_notice(self) -> bool:
        """Whether ECS has said it will reclaim this spot instance."""
        return "Recycling" in self.lock_reasons

    @property
    def ssh_port(self) -> int:
        """22, or the port a local sandbox without root reports in the tag `pymlsql:ssh-port`."""
        return int(self.tags.get("pymlsql:ssh-port", 22))

    @property
    def ssh_login(self) -> str:
        """root, or the user a local sandbox without root reports in the tag `pymlsql:ssh-user`."""
        return self.tags.get("pymlsql:ssh-user", "root")

    def address(self, *, public: bool = False) -> str:
        return self.public_ip if public and self.public_ip else self.private_ip


@dataclass(frozen=True)
class ExecResult:
    """What a script did on one instance, shaped like subprocess.CompletedProcess.

    `stdout` and `stderr` hold the last `EcsConfig.exec_output_limit` characters of each stream;
    `truncated` says the script printed more than that (all of it went to the output sink).
    """

    instance_id: str
    command: str
    exit_status: int
    stdout: str
    stderr: str
    duration: float
    truncated: bool = False
    # With --once: when this exact script had already succeeded there (it was not run again).
    done_at: str | None = None

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


@dataclass(frozen=True)
class CopyResult:
    """What one copy moved to or from one instance."""

    instance_id: str
    source: str
    target: str
    files: int
    bytes: int
    duration: float
    via: str = ""  # the instance that passed the bytes on to this one; "" when the client sent them


Outcome = TypeVar("Outcome", ExecResult, CopyResult)


class FleetResult(Mapping[str, "Outcome | PymlsqlError"], Generic[Outcome]):
    """Each instance id mapped to its result, or to the error that instance failed with."""

    def __init__(self, outcomes: Mapping[str, Outcome | PymlsqlError]) -> None:
        self._outcomes: dict[str, Outcome | PymlsqlError] = dict(outcomes)

    def __getitem__(self, instance_id: str) -> Outcome | PymlsqlError:
        return self._outcomes[instance_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._outcomes)

    def __len__(self) -> int:
        return len(self._outcomes)

    def __repr__(self) -> str:
        return f"FleetResult({len(self.succeeded)} succeeded, {len(self.failed)} failed)"

    @property
    def succeeded(self) -> dict[str, Outcome]:
        return {key: value for key, value in self._outcomes.items() if not isinstance(value, PymlsqlError)
                and (not isinstance(value, ExecResult) or value.ok)}  # fmt: skip

    @property
    def failed(self) -> dict[str, Outcome | PymlsqlError]:
        succeeded = self.succeeded  # once: it is a new dict at every access
        return {key: value for key, value in self._outcomes.items() if key not in succeeded}

    @property
    def errors(self) -> dict[str, PymlsqlError]:
        """The instances that could not do it at all (as opposed to a script that exited non-zero)."""
        return {key: value for key, value in self._outcomes.items() if isinstance(value, PymlsqlError)}

    @property
    def first_hint(self) -> str | None:
        """The hint of the first failure that has one: failures of one operation tend to share a cause."""
        return next((error.hint for error in self.errors.values() if error.hint), None)

    def summary(self, what: str, *, inline: bool = False) -> str:
        """`what failed on N of M instance(s):` and each failure; on one line with `inline`."""
        failed = self.failed
        head = f"{what} failed on {len(failed)} of {len(self)} instance(s):"
        if inline:
            return f"{head} " + ", ".join(
                f"{key} exit {value.exit_status}" if isinstance(value, ExecResult) else naming(key, value)
                for key, value in failed.items()
            )
        details: list[str] = [
            f"{key}: exit status {value.exit_status}" if isinstance(value, ExecResult) else naming(key, value)
            for key, value in failed.items()
        ]
        if len(details) == 1:
            return f"{head} {details[0]}"
        return "\n".join([head, *(f"  {detail}" for detail in details)])


def naming(instance_id: str, error: object) -> str:
    """The first line of an instance's error, led by its id unless the error already starts with it."""
    line = str(error).splitlines()[0]
    return line if line.startswith(instance_id) else f"{instance_id}: {line}"


class InstanceList(Sequence[Instance]):
    """A fleet of instances, as %ecs_start returns it: indexable, iterable, shown as a table."""

    def __init__(self, instances: Iterable[Instance], *, via: Mapping[str, str] | None = None,
                 costs: Mapping[str, Cost] | None = None) -> None:  # fmt: skip
        self._instances = tuple(instances)
        # instance id -> how this client reaches it (public, private, none), shown as "ssh via"
        self._via = dict(via or {})
        # instance id -> its hourly price and cost so far, shown as "per_hour" and "so_far"
        self.costs: dict[str, Cost] = dict(costs or {})

    def __getitem__(self, index):  # type: ignore[no-untyped-def]
        if isinstance(index, slice):
            return InstanceList(self._instances[index], via=self._via, costs=self.costs)
        return self._instances[index]

    def __len__(self) -> int:
        return len(self._instances)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, InstanceList):
            return self._instances == other._instances
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._instances)

    @property
    def ids(self) -> list[str]:
        return [instance.instance_id for instance in self._instances]

    _COLUMNS = ("instance_id", "name", "status", "private_ip", "public_ip", "hostname")

    def _table(self) -> list[tuple[str, ...]]:
        columns = self._COLUMNS + (("ssh_via",) if self._via else ())
        rows = [tuple(str(getattr(i, c) or "-") for c in self._COLUMNS) for i in self._instances]
        if self._via:
            rows = [row + (self._via.get(i.instance_id, "-"),) for row, i in zip(rows, self._instances, strict=True)]
        if self.costs:
            columns += ("per_hour", "so_far")
            pairs = zip(rows, self._instances, strict=True)
            rows = [row + _cost_cells(self.costs.get(i.instance_id)) for row, i in pairs]
        return [columns, *rows]

    @property
    def per_hour(self) -> str:
        """What the instances cost per hour in all, e.g. `1.000 CNY/hour`, or "" when not known."""
        known = [self.costs[i.instance_id] for i in self._instances if i.instance_id in self.costs]
        if not known:
            return ""
        return f"{sum(cost.per_hour for cost in known):.3f} {known[0].currency}/hour"

    def __repr__(self) -> str:
        rows = self._table()
        total = f", {self.per_hour} in all" if self.per_hour else ""
        widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
        return f"{len(self._instances)} instance(s){total}\n" + "\n".join(lines)

    def _repr_html_(self) -> str:
        head, *rows = self._table()
        cells = ("".join(f"<td>{html.escape(cell)}</td>" for cell in row) for row in rows)
        body = "".join(f"<tr>{row}</tr>" for row in cells)
        heads = "".join(f"<th>{html.escape(column)}</th>" for column in head)
        return f"<table><thead><tr>{heads}</tr></thead><tbody>{body}</tbody></table>"


def _cost_cells(cost: Cost | None) -> tuple[str, str]:
    if cost is None:
        return "-", "-"
    return f"{cost.per_hour:.3f} {cost.currency}", f"{cost.so_far:.3f} {cost.currency}"
