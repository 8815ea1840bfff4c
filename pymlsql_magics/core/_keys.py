"""Key pairs: the ECS key pair and its private key file in ~/.ssh kept in step."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ._errors import ConfigError
from ._ssh_keys import load_private_key, public_key_line

if TYPE_CHECKING:
    from ._ecs import EcsClient


def ensure_key_pair(client: EcsClient, name: str, key_dir: Path, *, create: bool) -> Path:
    """Returns the private key file of key pair `name`, creating the pair first if `create`.

    With `create`, a missing key pair is created in ECS and its private key saved to
    `key_dir/name` (mode 600, the folder 700). An existing key file is never overwritten: if ECS
    lacks the pair, its public key is imported; if ECS holds a different key, that is an error.
    Raises ConfigError when the two cannot be reconciled.
    """
    path = key_dir / name
    remote = client.key_pair_public_key(name)
    if path.exists():
        local = public_key_line(load_private_key(path))
        if remote is None:
            if not create:
                raise ConfigError(
                    f"ECS has no key pair {name!r} in {client.region_id}",
                    hint=f"Pass --init-ssh-key true to import the key in {path}.",
                )
            client.import_key_pair(name, local)
            return path
        if remote and _blob(remote) != _blob(local):
            raise ConfigError(
                f"the key in {path} is not the key of the ECS key pair {name!r}",
                hint="Pick another --key-pair-name, or move the old key file away; it is never overwritten.",
            )
        return path
    if remote is not None:
        raise ConfigError(
            f"the key pair {name!r} exists in ECS but its private key is not in {path}",
            hint="Copy the private key there (mode 600), or pick another --key-pair-name with --init-ssh-key true.",
        )
    if not create:
        raise ConfigError(
            f"there is no key pair {name!r}: neither in ECS nor in {path}",
            hint="Pass --init-ssh-key true to create it.",
        )
    private_key = client.create_key_pair(name)
    _save_private(path, private_key)
    return path


def _save_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    temporary = path.with_name(f".{path.name}.partial")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text if text.endswith("\n") else text + "\n")
    os.replace(temporary, path)


def _blob(public_key: str) -> str:
    parts = public_key.split()
    return parts[1] if len(parts) > 1 else public_key
