"""User data, as cloud-init runs it: turns it into shell steps for an instance's first boot.

Supported: a `#!` script (run as root once SSH is up, as cloud-final does) and `#cloud-config`
with `ssh_keys`, `ssh_authorized_keys`, `users`, `write_files` (also `defer`) and `runcmd`.
Other cloud-config keys are reported on the console and ignored.
"""

from __future__ import annotations

import base64
import gzip
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ._errors import UserDataError

_HOST_KEY_TYPES = ("rsa", "ecdsa", "ed25519")
_SUPPORTED = {"ssh_keys", "ssh_authorized_keys", "users", "write_files", "runcmd", "ssh_deletekeys"}


@dataclass
class FirstBoot:
    """Shell steps: `init` runs before sshd starts, `final` in the background once it has."""

    init: list[str] = field(default_factory=list)
    final: list[str] = field(default_factory=list)
    root_keys: list[str] = field(default_factory=list)


def plan(user_data: bytes | None, staging: Path, *, inside: Path | None = None) -> FirstBoot:
    """Reads user data and writes the files it carries under `staging`.

    `inside` is where the instance sees `staging` (the steps name files by that path).
    """
    boot = FirstBoot()
    if inside is not None and inside != staging:
        boot = plan(user_data, staging)
        outer, inner = str(staging), str(inside)
        boot.init = [step.replace(outer, inner) for step in boot.init]
        boot.final = [step.replace(outer, inner) for step in boot.final]
        return boot
    if not user_data:
        return boot
    staging.mkdir(parents=True, exist_ok=True)
    if user_data.startswith(b"#!"):
        script = staging / "user-data-script"
        script.write_bytes(user_data)
        script.chmod(0o700)
        boot.final.append(shlex.quote(str(script)))
        return boot
    if user_data.startswith(b"#cloud-config"):
        try:
            config = yaml.safe_load(user_data.decode()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise UserDataError(f"#cloud-config is not valid YAML: {exc}") from None
        if not isinstance(config, dict):
            raise UserDataError("#cloud-config must be a mapping")
        _plan_config(config, staging, boot)
        return boot
    boot.init.append("echo 'cloud-init: user data is neither #! nor #cloud-config; ignored'")
    return boot


def _plan_config(config: dict[str, Any], staging: Path, boot: FirstBoot) -> None:
    for key in sorted(set(config) - _SUPPORTED):
        boot.init.append(f"echo {shlex.quote(f'cloud-init: {key} is not supported here; ignored')}")
    later: list[str] = []
    for index, entry in enumerate(config.get("write_files") or []):
        steps = _write_file(entry, staging / f"file-{index}")
        (later if entry.get("defer") else boot.init).extend(steps)
    for user in config.get("users") or []:
        boot.init.extend(_add_user(user, staging))
    ssh_keys = config.get("ssh_keys") or {}
    for kind in _HOST_KEY_TYPES:
        private = ssh_keys.get(f"{kind}_private")
        if not private:
            continue
        target = f"/etc/ssh/ssh_host_{kind}_key"
        source = staging / f"ssh_host_{kind}_key"
        source.write_text(private if private.endswith("\n") else private + "\n")
        source.chmod(0o600)
        boot.init.append(f"install -m 600 {shlex.quote(str(source))} {target}")
        public = ssh_keys.get(f"{kind}_public")
        if public:
            (staging / f"ssh_host_{kind}_key.pub").write_text(public.strip() + "\n")
            boot.init.append(f"install -m 644 {shlex.quote(str(source))}.pub {target}.pub")
        else:
            boot.init.append(f"ssh-keygen -y -f {target} > {target}.pub")
    boot.root_keys.extend(str(key).strip() for key in config.get("ssh_authorized_keys") or [])
    boot.final.extend(later)
    for command in config.get("runcmd") or []:
        if isinstance(command, list):
            boot.final.append(shlex.join(str(part) for part in command))
        else:
            boot.final.append(str(command))


def _write_file(entry: dict[str, Any], source: Path) -> list[str]:
    path = entry.get("path")
    if not path:
        raise UserDataError("write_files: every entry needs a path")
    content = entry.get("content", "")
    data = content.encode() if isinstance(content, str) else bytes(content)
    encoding = str(entry.get("encoding", "")).lower()
    if encoding in ("b64", "base64", "gz+b64", "gzip+base64", "gz+base64", "gzip+b64"):
        data = base64.b64decode(data)
    if encoding.startswith("gz"):
        data = gzip.decompress(data)
    source.write_bytes(data)
    mode = str(entry.get("permissions", "0644"))
    target = shlex.quote(str(path))
    staged = shlex.quote(str(source))
    steps = [f"mkdir -p \"$(dirname {target})\""]
    if entry.get("append"):
        steps.append(f"cat {staged} >> {target}")
    else:
        steps.append(f"cp {staged} {target}")
    steps.append(f"chmod {shlex.quote(mode)} {target}")
    steps.append(f"chown {shlex.quote(str(entry.get('owner', 'root:root')))} {target}")
    return steps


def _add_user(user: Any, staging: Path) -> list[str]:
    if user == "default":
        return []
    if isinstance(user, str):
        user = {"name": user}
    name = user.get("name")
    if not name:
        raise UserDataError("users: every entry needs a name")
    quoted = shlex.quote(str(name))
    command = ["useradd", "-m", "-s", str(user.get("shell", "/bin/bash"))]
    if user.get("homedir"):
        command += ["-d", str(user["homedir"])]
    if user.get("uid") is not None:
        command += ["-u", str(user["uid"])]
    if user.get("gecos"):
        command += ["-c", str(user["gecos"])]
    groups = user.get("groups")
    if groups:
        names = groups if isinstance(groups, list) else str(groups).split(",")
        command += ["-G", ",".join(part.strip() for part in names)]
    steps = [f"id {quoted} >/dev/null 2>&1 || {shlex.join(command + [str(name)])}"]
    sudo = user.get("sudo")
    if sudo:
        rules = sudo if isinstance(sudo, list) else [sudo]
        rules_file = staging / f"sudoers-{name}"
        rules_file.write_text("".join(f"{name} {rule}\n" for rule in rules))
        steps.append(f"install -D -m 440 {shlex.quote(str(rules_file))} /etc/sudoers.d/90-{name}")
    keys = [str(key).strip() for key in user.get("ssh_authorized_keys") or []]
    if keys:
        keys_file = staging / f"authorized_keys-{name}"
        keys_file.write_text("".join(key + "\n" for key in keys))
        home = f"$(getent passwd {quoted} | cut -d: -f6)"
        steps += [
            f'install -d -m 700 -o {quoted} "{home}/.ssh"',
            f'install -m 600 -o {quoted} {shlex.quote(str(keys_file))} "{home}/.ssh/authorized_keys"',
        ]
    return steps
