"""Fault injection: one order type for `pymlsql sandbox fault`, `/_sandbox/fault` and `Sandbox.fault()`.

An order may ask for several faults at once; they are applied in the order of the fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from ._errors import HostError
from ._stock import Stock, parse_no_stock, parse_stock

if TYPE_CHECKING:
    from ._model import World

STUCK_STATUSES = ("Pending", "Starting", "Stopping")
@dataclass
class Quirks:
    """How ECS behaves right after a create; every field is seconds, 0 for "not at all"."""

    # DeleteInstance(s) of an instance younger than this answers IncorrectInstanceStatus.Initializing.
    initializing: float = 0.0
    # A RunInstances replayed with the same ClientToken within this of the first answers IdempotentProcessing.
    idempotent_processing: float = 0.0
    # A new instance appears in DescribeInstances only this long after its creation.
    describe_lag: float = 0.0
    # GetInstanceConsoleOutput stays empty until this long after an instance first ran.
    console_lag: float = 0.0


# The cloud's rough edges, each a number of seconds (0: off), as FaultOrder and Quirks spell them.
QUIRKS = tuple(item.name for item in fields(Quirks))


@dataclass
class Fault:
    """The next `count` calls of one action fail with this error, or lose their answer."""

    code: str
    status: int
    count: int
    message: str | None = None
    # Carry the call out, then drop the connection without an answer (a response lost on the way).
    lose_response: bool = False


@dataclass(frozen=True)
class FaultOrder:
    """Faults to inject into a running sandbox; see `pymlsql sandbox fault --help`.

    Example: `FaultOrder(action="RunInstances", code="Throttling.User", status=400, count=2)`.
    Raises ValueError for a `stuck` status instances cannot be stuck in.
    """

    clear: bool = False  # first remove every pending fault
    action: str | None = None  # ECS action whose next calls fail, or "*" for any
    code: str = "ServiceUnavailable"
    status: int = 503
    count: int = 1
    message: str | None = None
    lose_response: bool = False  # with `action`: carry the calls out but drop their answers
    ssh_delay: float | None = None  # SSH of instances started from now on comes up this much later
    stuck: str | None = None  # new instances never leave this status; "" undoes it
    kill_ssh: str | None = None  # instance ids, for the faults that act on one instance
    rotate_host_key: str | None = None
    freeze: str | None = None
    thaw: str | None = None
    reclaim: str | None = None  # a spot instance: ECS's reclaim notice, then released after `notice`
    notice: float = 5.0
    initializing: float | None = None  # seconds; see Quirks, 0 undoes it
    idempotent_processing: float | None = None
    describe_lag: float | None = None
    console_lag: float | None = None
    no_stock: tuple[str, ...] = ()  # TYPE or TYPE@ZONE: RunInstances of it there answers NoStock
    stock: tuple[str, ...] = ()  # TYPE@ZONE=N: only N more instances of TYPE fit in ZONE

    def __post_init__(self) -> None:
        object.__setattr__(self, "no_stock", tuple(self.no_stock))
        object.__setattr__(self, "stock", tuple(self.stock))
        if self.notice < 0:
            raise ValueError(f"notice must be 0 or more seconds, got {self.notice:g}")
        for name, parse in (("no_stock", parse_no_stock), ("stock", parse_stock)):
            for item in getattr(self, name):
                try:
                    parse(item)
                except ValueError as error:
                    raise ValueError(f"{name} {error}") from None
        if self.stuck is not None and self.stuck not in (*STUCK_STATUSES, ""):
            raise ValueError("stuck must be Pending, Starting or Stopping")
        for name, seconds in self.quirks().items():
            if seconds < 0:
                raise ValueError(f"{name} must be 0 or more seconds, got {seconds:g}")

    def quirks(self) -> dict[str, float]:
        """The quirks this order sets, by name."""
        return {name: getattr(self, name) for name in QUIRKS if getattr(self, name) is not None}

    @property
    def empty(self) -> bool:
        """Whether the order asks for nothing at all."""
        return not (
            self.clear
            or self.action
            or self.ssh_delay is not None
            or self.stuck is not None
            or bool(self.quirks())
            or bool(self.no_stock or self.stock)
            or any(instance_id for _, instance_id in self.instance_faults())
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FaultOrder:
        """The order a JSON object describes; an absent, empty or zero value means the default.

        Raises TypeError or ValueError for values of the wrong type.
        """
        if not isinstance(data, Mapping):
            raise TypeError("a fault order is a JSON object")
        defaults = cls()

        def text(name: str) -> str | None:
            value = data.get(name)
            return None if value is None else str(value)

        return cls(
            clear=bool(data.get("clear")),
            action=str(data["action"]) if data.get("action") else None,
            code=str(data.get("code") or defaults.code),
            status=int(data.get("status") or defaults.status),
            count=int(data.get("count") or defaults.count),
            message=text("message"),
            lose_response=bool(data.get("lose_response")),
            ssh_delay=None if data.get("ssh_delay") is None else float(data["ssh_delay"]),
            stuck=text("stuck"),
            kill_ssh=text("kill_ssh"),
            rotate_host_key=text("rotate_host_key"),
            freeze=text("freeze"),
            thaw=text("thaw"),
            reclaim=text("reclaim"),
            notice=float(data.get("notice") or defaults.notice),
            **{name: float(data[name]) for name in QUIRKS if data.get(name) is not None},
            no_stock=_texts(data.get("no_stock")),
            stock=_texts(data.get("stock")),
        )

    def instance_faults(self) -> list[tuple[str, str | None]]:
        """(kind, instance id) of the faults that act on one instance, given or not."""
        return [
            ("kill_ssh", self.kill_ssh),
            ("rotate_host_key", self.rotate_host_key),
            ("freeze", self.freeze),
            ("thaw", self.thaw),
            ("reclaim", self.reclaim),
        ]


def _texts(value: Any) -> tuple[str, ...]:
    """A JSON string or list of strings as a tuple; absent means none."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(str(item) for item in value)


def apply(world: World, order: FaultOrder) -> None:
    """Carries `order` out on `world`; raises ValueError for an instance that is not Running."""
    if order.clear:
        with world.lock:
            world.faults.clear()
            world.ssh_delay = 0.0
            world.stuck = None
            world.quirks = Quirks()
            world.stock = Stock()
    if order.action:
        fault = Fault(order.code, order.status, order.count, order.message, order.lose_response)
        with world.lock:
            world.faults.setdefault(order.action, []).append(fault)
    if order.ssh_delay is not None:
        with world.lock:
            world.ssh_delay = order.ssh_delay
    if order.stuck is not None:
        with world.lock:
            world.stuck = order.stuck or None
    with world.lock:
        for name, seconds in order.quirks().items():
            setattr(world.quirks, name, seconds)
        for item in order.no_stock:
            world.stock.limit(*parse_no_stock(item), 0)
        for item in order.stock:
            world.stock.limit(*parse_stock(item))
    for kind, instance_id in order.instance_faults():
        if not instance_id:
            continue
        with world.lock:
            instance = world.instances.get(instance_id)
            if instance is None or instance.status != "Running":
                raise ValueError(f"{instance_id} is not a Running instance of this sandbox")
        if kind == "reclaim":
            world.reclaim(instance_id, order.notice)
            continue
        if kind in ("kill_ssh", "rotate_host_key"):
            world.drop_ssh(instance_id, new_host_keys=kind == "rotate_host_key")
            continue
        try:
            world.hosts.freeze(instance_id, kind == "freeze")
        except HostError as error:
            raise ValueError(str(error)) from None
