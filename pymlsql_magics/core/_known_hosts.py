"""The tool's own known_hosts file: each instance's host keys, pinned under its instance id."""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import paramiko

from ._errors import HostKeyMismatchError
from ._results import Instance
from ._ssh_keys import parse_public_key, public_key_line

# The fingerprints an instance is known to have before the first connection, or None if unknown.
ExpectedKeys = Callable[[], "set[str] | None"]


class KnownHosts:
    """The tool's own known_hosts file: host keys pinned per instance id.

    A new instance's key is checked against the fingerprints its console shows when it shows
    some, so first contact is not blind trust; keys known in advance (cloud-config ssh_keys) are
    pinned before any connection.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._keys: paramiko.HostKeys | None = None
        self._read_as: tuple[int, int, int] | None = None  # the file's inode, mtime and size then

    def check(self, instance: Instance, address: str, offered: paramiko.PKey,
              expected: ExpectedKeys | None = None) -> None:  # fmt: skip
        """Pins `offered` for a new instance; raises HostKeyMismatchError if it differs from the pin,
        or, on first contact, if it is not among the fingerprints `expected()` gives."""
        with self._lock:
            pinned = self._load().lookup(instance.instance_id)
        if pinned is not None and offered.get_name() in pinned:
            if pinned[offered.get_name()] != offered:
                self._refuse(instance, address, pinned[offered.get_name()], offered)
            return
        if pinned:
            # Pinned with another key type: only the pinned types are offered, so this is a server
            # that holds none of them.
            self._refuse(instance, address, next(iter(pinned.values())), offered)
        shown = expected() if expected is not None else None
        if shown is not None and offered.fingerprint not in shown:
            raise HostKeyMismatchError(
                f"the SSH host key {offered.fingerprint} offered by {instance.instance_id} ({address}) is not "
                "one its console output shows; refusing to connect",
                host=address,
                hint="Someone may be impersonating the instance. Compare the keys in the ECS console "
                "(GetInstanceConsoleOutput) with the instance before trusting it.",
            )
        self.pin(instance.instance_id, [public_key_line(offered)])

    def pin(self, instance_id: str, public_lines: list[str]) -> None:
        """Pins keys known without connecting, such as those a cloud-config gave the instance."""
        parsed = [parse_public_key(line) for line in public_lines]  # a bad line changes nothing
        with self._lock:
            keys = self._load()
            new = instance_id not in keys and self._read_as is not None
            for key in parsed:
                keys.add(instance_id, key.get_name(), key)
            if new:
                # A first pin is a line at the end: rewriting the whole file for each of a hundred
                # instances being started costs more than their handshakes.
                self._append(keys, [f"{instance_id} {key.get_name()} {key.get_base64()}\n"
                                    for key in keys[instance_id].values()])  # fmt: skip
            else:
                self._save(keys)

    def pinned_types(self, instance_id: str) -> list[str]:
        with self._lock:
            pinned = self._load().lookup(instance_id)
        return list(pinned.keys()) if pinned else []

    def pinned_lines(self, instance_id: str) -> list[str]:
        """The keys pinned for the instance, as `type base64` lines."""
        with self._lock:
            pinned = self._load().lookup(instance_id)
        return [public_key_line(key) for key in pinned.values()] if pinned else []

    def forget(self, instance_ids: list[str]) -> None:
        with self._lock:
            keys = self._load()
            for instance_id in instance_ids:
                if instance_id in keys:
                    del keys[instance_id]
            self._save(keys)

    def _refuse(self, instance: Instance, address: str, pinned: paramiko.PKey, offered: paramiko.PKey) -> None:
        raise HostKeyMismatchError(
            f"the SSH host key of {instance.instance_id} ({address}) changed: pinned "
            f"{pinned.fingerprint}, offered {offered.fingerprint}; refusing to connect",
            host=address,
            hint=(
                "If the instance was re-created or its host keys were replaced on purpose, remove the "
                f"line for {instance.instance_id} from {self.path}; otherwise someone may be impersonating it."
            ),
        )

    def _load(self) -> paramiko.HostKeys:
        """The pinned keys, parsed again only when the file changed (another process may pin too):
        a start of a hundred instances reads them three times per instance."""
        now = self._signature()
        if self._keys is None or now != self._read_as:
            keys = paramiko.HostKeys()
            if now is not None:
                keys.load(str(self.path))
            self._keys, self._read_as = keys, now
        return self._keys

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            status = self.path.stat()
        except FileNotFoundError:
            return None
        return status.st_ino, status.st_mtime_ns, status.st_size

    def _append(self, keys: paramiko.HostKeys, lines: list[str]) -> None:
        before, self._keys = self._read_as, None  # changed in memory: read again unless the file holds it
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND)  # never created here: _save makes it 0600
        except FileNotFoundError:
            self._save(keys)
            return
        with os.fdopen(fd, "r+b") as file:
            # A line removed by hand may have taken the last newline with it.
            ends_a_line = file.seek(0, os.SEEK_END) == 0 or os.pread(fd, 1, file.tell() - 1) == b"\n"
            text = ("" if ends_a_line else "\n") + "".join(lines)
            file.write(text.encode("ascii"))
        after = self._signature()
        if before is not None and after is not None and after[0] == before[0] and after[2] == before[2] + len(text):
            self._keys, self._read_as = keys, after  # nobody else wrote meanwhile

    def _save(self, keys: paramiko.HostKeys) -> None:
        self._keys = None  # changed in memory: read again unless the file now holds the change
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".known_hosts.")
        os.close(fd)
        keys.save(temporary)
        os.chmod(temporary, 0o600)
        os.replace(temporary, self.path)
        self._keys, self._read_as = keys, self._signature()
