"""What the agent remembers of instances between its lives, and the Fleet that uses it.

A new worker of the agent has not loaded the SDK: loading it costs more than a whole `ssh`
command. It loads it in the background after its first command, and until it has, a command may
skip ECS: an instance the agent saw Running at its last DescribeInstances (in this file, per
endpoint and region) is taken as it was if it still answers SSH at that address with the host key
pinned for its id, which nothing but that instance holds. Anything else (an instance not
remembered, a spot instance, which needs ECS to watch for its reclaim, an address that no longer
answers, another key) is asked of ECS as always, and once the SDK is loaded every command asks ECS.
"""

from __future__ import annotations

import importlib
import json
import os
import tempfile
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..core import Fleet, Instance, PymlsqlError
from ..core._launch import SPOT_MARKETS

_SDK = "pymlsql_magics.core._ecs"
# Set once this process has loaded the SDK: from then on every command asks ECS.
_SDK_LOADED = threading.Event()
_loading: threading.Thread | None = None


def load_sdk_meanwhile() -> None:
    """Loads the SDK in a thread of its own, once per process, while the worker waits for work."""
    global _loading
    if _loading is None and not _SDK_LOADED.is_set():
        _loading = threading.Thread(target=_load_sdk, name="pymlsql-agent-sdk", daemon=True)
        _loading.start()


def _load_sdk() -> None:
    importlib.import_module(_SDK)
    _SDK_LOADED.set()


class InstanceMemory:
    """Instances as ECS last described them, kept in a file only the user can read."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def recall(self, place: str, ids: Sequence[str]) -> list[Instance] | None:
        """The instances with these ids, if all of them are remembered Running; else None."""
        known = self._read().get(place, {})
        if not ids or any(instance_id not in known for instance_id in ids):
            return None
        return [_instance(known[instance_id]) for instance_id in ids]

    def remember(self, place: str, instances: Sequence[Instance], *, forget: Sequence[str] = ()) -> None:
        everything = self._read()
        known = everything.setdefault(place, {})
        for instance in instances:
            if instance.status == "Running" and instance.spot_strategy not in SPOT_MARKETS:
                known[instance.instance_id] = _fields(instance)
            else:
                known.pop(instance.instance_id, None)
        for instance_id in forget:
            known.pop(instance_id, None)
        self._write(everything)

    def _read(self) -> dict[str, dict[str, dict[str, Any]]]:
        try:
            found = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return found if isinstance(found, dict) else {}

    def _write(self, everything: dict[str, Any]) -> None:
        fd, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".instances.")
        with os.fdopen(fd, "w") as file:
            json.dump(everything, file)
        os.replace(temporary, self.path)


def _fields(instance: Instance) -> dict[str, Any]:
    found = {item.name: getattr(instance, item.name) for item in fields(Instance)}
    return {**found, "tags": dict(instance.tags)}


def _instance(fields: dict[str, Any]) -> Instance:
    return Instance(**{**fields, "tags": MappingProxyType(dict(fields["tags"])),
                       "security_group_ids": tuple(fields["security_group_ids"]),
                       "lock_reasons": tuple(fields["lock_reasons"])})  # fmt: skip


class RememberingFleet(Fleet):
    """A Fleet that writes what ECS says of instances to the memory, and while its process has not
    loaded the SDK, reads it back (see the module's docstring)."""

    memory: InstanceMemory | None = None  # set by the worker before its first command

    def get(self, instance_ids: Sequence[str]) -> list[Instance]:
        recalled = self._recall(instance_ids)
        if recalled is not None:
            return recalled
        found = super().get(instance_ids)
        _SDK_LOADED.set()  # asking ECS loaded it
        self._remember(found)
        return found

    def start(self, *args: Any, **kwargs: Any) -> list[Instance]:
        started = super().start(*args, **kwargs)
        self._remember(started)
        return started

    def stop(self, instances: Sequence[Instance], *, keep_disk: bool = False, wait: bool = True) -> None:
        if self.memory is not None:
            self.memory.remember(self._place, [], forget=[instance.instance_id for instance in instances])
        super().stop(instances, keep_disk=keep_disk, wait=wait)

    @property
    def _place(self) -> str:
        return f"{self.config.endpoint or 'alibabacloud'} {self.config.region_id}"

    def _remember(self, instances: Sequence[Instance]) -> None:
        if self.memory is not None:
            self.memory.remember(self._place, instances)

    def _recall(self, instance_ids: Sequence[str]) -> list[Instance] | None:
        if self.memory is None or _SDK_LOADED.is_set() or "ecs" in self.__dict__:
            return None
        recalled = self.memory.recall(self._place, instance_ids)
        if recalled is None:
            return None
        with ThreadPoolExecutor(max_workers=min(len(recalled), self.config.max_parallel)) as pool:
            if all(pool.map(self._answers, recalled)):
                return recalled
        return None

    def _answers(self, instance: Instance) -> bool:
        """Whether the instance answers SSH where it was, with its pinned host key; the connection
        stays open for the command."""
        try:
            # Probing: an address that went to nobody may drop packets rather than refuse them.
            self.connection(instance, self.key_path(instance, None), probing=True)
        except PymlsqlError:
            return False
        return True
