"""What operations return: instances as ECS describes them, and per-instance outcomes."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


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
    """What a script did on one instance, shaped like subprocess.CompletedProcess."""

    instance_id: str
    command: str
    exit_status: int
    stdout: str
    stderr: str
    duration: float

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


class FleetResult(Mapping[str, object]):
    """Each instance id mapped to its result, or to the exception that instance failed with."""

    def __init__(self, outcomes: Mapping[str, object]) -> None:
        self._outcomes = dict(outcomes)

    def __getitem__(self, instance_id: str) -> object:
        return self._outcomes[instance_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._outcomes)

    def __len__(self) -> int:
        return len(self._outcomes)

    def __repr__(self) -> str:
        return f"FleetResult({len(self.succeeded)} succeeded, {len(self.failed)} failed)"

    @property
    def succeeded(self) -> dict[str, object]:
        return {
            key: value
            for key, value in self._outcomes.items()
            if not isinstance(value, BaseException) and getattr(value, "ok", True)
        }

    @property
    def failed(self) -> dict[str, object]:
        return {key: value for key, value in self._outcomes.items() if key not in self.succeeded}
