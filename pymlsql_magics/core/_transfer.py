"""Copying files and directories to and from an instance over SFTP, whole or not at all.

Placement follows scp: a target that is an existing directory receives the source under its
own name; otherwise the target is the new name. Everything is first written under a hidden
temporary name next to its destination, modes set and ownership given to the user, then
renamed into place; after a failure or interrupt the temporary parts are removed.
"""

from __future__ import annotations

import os
import posixpath
import shlex
import shutil
import stat
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._errors import PymlsqlError, SshError
from ._results import CopyResult

Progress = Callable[[int, int], None]


class CopyError(PymlsqlError):
    """A copy could not be done; nothing partial was left at the target."""


def _noop(done: int, total: int) -> None:
    pass


def upload(connection: Any, source: str, target: str, *, user: str, progress: Progress = _noop) -> CopyResult:
    """Copies a local file or directory to `target` on the instance, owned by `user`."""
    started = time.monotonic()
    local = Path(source).expanduser()
    if not local.exists():
        raise CopyError(f"the local path {source} does not exist", hint="Check --source.")
    files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file() or p.is_dir())
    total = local.stat().st_size if local.is_file() else sum(p.stat().st_size for p in files if p.is_file())
    instance_id = connection.instance.instance_id
    sftp = connection.sftp()
    try:
        home = _home(connection, user)
        remote_target = target if target.startswith("/") else posixpath.join(home, target)
        destination = _place(sftp, remote_target, local.name)
        parent = posixpath.dirname(destination) or "/"
        if not _exists(sftp, parent):
            raise CopyError(
                f"the folder {parent} does not exist on {instance_id}", hint="Create it first, or check --target."
            )
        staging = posixpath.join(parent, f".{posixpath.basename(destination)}.pymlsql-{uuid.uuid4().hex[:8]}")
        done = 0

        def counted(sent: int, size: int) -> None:
            progress(done + sent, total)

        if local.is_dir() and _exists(sftp, destination):
            raise CopyError(
                f"{destination} already exists on {instance_id}",
                hint="Remove it first, or copy into a new --target.",
            )

        try:
            if local.is_file():
                sftp.put(str(local), staging, callback=counted, confirm=True)
                sftp.chmod(staging, stat.S_IMODE(local.stat().st_mode))
                count = 1
            else:
                sftp.mkdir(staging, stat.S_IMODE(local.stat().st_mode))
                count = 0
                for path in files:
                    remote = posixpath.join(staging, path.relative_to(local).as_posix())
                    mode = stat.S_IMODE(path.stat().st_mode)
                    if path.is_dir():
                        sftp.mkdir(remote, mode)
                        sftp.chmod(remote, mode)
                        continue
                    sftp.put(str(path), remote, callback=counted, confirm=True)
                    sftp.chmod(remote, mode)
                    done += path.stat().st_size
                    count += 1
                sftp.chmod(staging, stat.S_IMODE(local.stat().st_mode))
            _as_root(connection, f"chown -R {shlex.quote(user)}: {shlex.quote(staging)}", instance_id)
            sftp.posix_rename(staging, destination)
        except BaseException:
            _as_root(connection, f"rm -rf -- {shlex.quote(staging)}", instance_id, check=False)
            raise
    except OSError as error:
        raise CopyError(f"copying {source} to {instance_id}:{target} failed: {error}") from None
    finally:
        sftp.close()
    progress(total, total)
    return CopyResult(instance_id, source, destination, count, total, time.monotonic() - started)


def download(connection: Any, source: str, target: str, *, user: str, progress: Progress = _noop) -> CopyResult:
    """Copies a file or directory of the instance (relative paths from `user`'s home) to `target`."""
    started = time.monotonic()
    instance_id = connection.instance.instance_id
    sftp = connection.sftp()
    try:
        home = _home(connection, user)
        remote = source if source.startswith("/") else posixpath.join(home, source)
        try:
            top = sftp.stat(remote)
        except FileNotFoundError:
            raise CopyError(f"{remote} does not exist on {instance_id}", hint="Check --source.") from None
        entries = _walk(sftp, remote) if stat.S_ISDIR(top.st_mode or 0) else [("", top)]
        total = sum(attrs.st_size or 0 for _, attrs in entries if not stat.S_ISDIR(attrs.st_mode or 0))
        local_target = Path(target).expanduser()
        destination = local_target / posixpath.basename(remote.rstrip("/")) if local_target.is_dir() else local_target
        if not destination.parent.is_dir():
            raise CopyError(f"the local folder {destination.parent} does not exist", hint="Create it first.")
        if stat.S_ISDIR(top.st_mode or 0) and destination.exists():
            raise CopyError(f"{destination} already exists", hint="Remove it first, or pick a new --target.")
        staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.pymlsql-", dir=destination.parent))
        done = 0
        try:
            count = 0
            for relative, attrs in entries:
                mode = stat.S_IMODE(attrs.st_mode or 0o644)
                local = staging / "item" / relative if relative else staging / "item"
                if stat.S_ISDIR(attrs.st_mode or 0):
                    local.mkdir(parents=True, exist_ok=True)
                    continue
                local.parent.mkdir(parents=True, exist_ok=True)
                remote_path = posixpath.join(remote, relative) if relative else remote
                sftp.get(remote_path, str(local), callback=lambda sent, size, base=done: progress(base + sent, total))
                os.chmod(local, mode)
                done += attrs.st_size or 0
                count += 1
            for relative, attrs in reversed(entries):
                if stat.S_ISDIR(attrs.st_mode or 0):
                    folder = staging / "item" / relative if relative else staging / "item"
                    os.chmod(folder, stat.S_IMODE(attrs.st_mode or 0o755))
            os.replace(staging / "item", destination)
        finally:
            _remove_tree(staging)
    except OSError as error:
        raise CopyError(f"copying {instance_id}:{source} to {target} failed: {error}") from None
    finally:
        sftp.close()
    progress(total, total)
    return CopyResult(instance_id, source, str(destination), count, total, time.monotonic() - started)


def _walk(sftp: Any, top: str) -> list[tuple[str, Any]]:
    """Every entry under `top` as (relative path, attributes), directories before their content."""
    top_attrs = sftp.stat(top)
    entries = [("", top_attrs)]
    pending = [""]
    while pending:
        relative = pending.pop()
        for attrs in sftp.listdir_attr(posixpath.join(top, relative) if relative else top):
            child = posixpath.join(relative, attrs.filename) if relative else attrs.filename
            entries.append((child, attrs))
            if stat.S_ISDIR(attrs.st_mode or 0):
                pending.append(child)
    return entries


def _place(sftp: Any, target: str, name: str) -> str:
    try:
        if stat.S_ISDIR(sftp.stat(target).st_mode or 0):
            return posixpath.join(target, name)
    except FileNotFoundError:
        pass
    return target.rstrip("/") or "/"


def _exists(sftp: Any, path: str) -> bool:
    try:
        sftp.stat(path)
        return True
    except FileNotFoundError:
        return False


def _home(connection: Any, user: str) -> str:
    status, output = connection.command(f"getent passwd {shlex.quote(user)} | cut -d: -f6")
    home = output.strip()
    if status != 0 or not home:
        raise SshError(
            f"there is no user {user!r} on {connection.instance.instance_id}",
            hint="Create the user first (useradd), or pick another --execute-user.",
        )
    return home


def _as_root(connection: Any, command: str, instance_id: str, *, check: bool = True) -> None:
    status, output = connection.command(command)
    if check and status != 0:
        raise CopyError(f"on {instance_id}, `{command}` failed: {output.strip()}")


def _remove_tree(path: Path) -> None:
    if not path.exists():
        return
    # Copied folders keep their modes, which may forbid deleting what is inside them.
    for folder in [path, *(p for p in path.rglob("*") if p.is_dir() and not p.is_symlink())]:
        folder.chmod(0o700)
    shutil.rmtree(path)
