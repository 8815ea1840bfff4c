"""The tool's known_hosts file, shared by processes that each keep it parsed in memory."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from pymlsql_magics.core import HostKeyMismatchError, Instance
from pymlsql_magics.core._known_hosts import KnownHosts
from pymlsql_magics.core._ssh_keys import public_key_line


def new_key() -> paramiko.PKey:
    public = ed25519.Ed25519PrivateKey.generate().public_key()
    kind, blob = public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).split()
    return paramiko.PKey.from_type_string(kind.decode(), base64.b64decode(blob))


def test_pins_made_by_one_process_are_seen_by_another_that_already_read_the_file(tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    mine, theirs = KnownHosts(path), KnownHosts(path)
    keys = {name: new_key() for name in ("i-one", "i-two", "i-three")}

    mine.pin("i-one", [public_key_line(keys["i-one"])])  # creates the file
    assert theirs.pinned_types("i-one") == ["ssh-ed25519"]
    theirs.pin("i-two", [public_key_line(keys["i-two"])])  # a line appended
    mine.pin("i-three", [public_key_line(keys["i-three"])])  # appended after a change it had not read

    for reader in (mine, theirs, KnownHosts(path)):
        assert all(reader.pinned_types(name) == ["ssh-ed25519"] for name in keys)
    assert len(path.read_text().splitlines()) == 3
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    # OpenSSH reads the same file (the copies through it check these pins).
    found = subprocess.run(["ssh-keygen", "-F", "i-two", "-f", str(path)], capture_output=True, text=True)
    assert found.returncode == 0 and keys["i-two"].get_base64() in found.stdout


def test_an_appended_pin_is_enforced_and_forgetting_rewrites_the_file(tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    pins = KnownHosts(path)
    first, second, impostor = new_key(), new_key(), new_key()
    pins.pin("i-first", [public_key_line(first)])
    pins.check(Instance("i-second", "Running"), "127.0.0.9", second)  # first contact: pinned, appended

    with pytest.raises(HostKeyMismatchError):
        KnownHosts(path).check(Instance("i-second", "Running"), "127.0.0.9", impostor)
    pins.check(Instance("i-second", "Running"), "127.0.0.9", second)

    pins.forget(["i-first"])
    assert KnownHosts(path).pinned_types("i-first") == []
    assert KnownHosts(path).pinned_types("i-second") == ["ssh-ed25519"]


def test_a_pin_after_a_hand_edit_that_dropped_the_last_newline_starts_a_line_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    first, second = new_key(), new_key()
    KnownHosts(path).pin("i-first", [public_key_line(first)])
    path.write_text(path.read_text().rstrip("\n"))

    KnownHosts(path).pin("i-second", [public_key_line(second)])

    assert KnownHosts(path).pinned_types("i-first") == KnownHosts(path).pinned_types("i-second") == ["ssh-ed25519"]
    assert len(path.read_text().splitlines()) == 2
