"""Copying files and directories to and from an instance as one tar stream, whole or not at all.

A tree of thousands of small files moves as one stream instead of a request per file, and a big
file moves at the speed of the stream (see _streams). Placement follows scp: a target that is
an existing directory receives the source under its own name; otherwise the target is the new
name. Everything is first unpacked under a hidden name next to its destination, modes kept and
ownership given to the user, then renamed into place; after a failure or interrupt the hidden
part is removed, so a target is never left half-written.
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ._errors import PymlsqlError, SshError
from ._results import CopyResult
from ._ssh import NO_USER_HINT
from ._streams import RemoteStream, open_stream

Progress = Callable[[int, int], None]

_NO_USER = 125
_BLOCK = 512
_BUFFER = 1 << 16
_FINISH_TIMEOUT = 120.0
# _Checked does the checking; Pythons that know extraction filters must not apply theirs again.
_TRUSTED: dict[str, Any] = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}

# Unpacks the tar stream on stdin next to the destination, then renames it into place. The
# placement is decided here, on the instance, so a copy is one round trip however many files.
_UPLOAD = r"""
u={user}; t={target}; n={name}; kind={kind}; token={token}
h=$(getent passwd "$u" | cut -d: -f6)
[ -n "$h" ] || {{ echo "pymlsql: no user $u" >&2; exit {no_user}; }}
case $t in /*) ;; *) t=$h/$t ;; esac
if [ -d "$t" ]; then d=${{t%/}}/$n; else d=${{t%/}}; fi
p=$(dirname -- "$d")
[ -d "$p" ] || {{ echo "pymlsql: the folder $p does not exist" >&2; exit 3; }}
if [ "$kind" = d ] && [ -e "$d" ]; then echo "pymlsql: $d already exists" >&2; exit 4; fi
s=$p/.$(basename -- "$d").pymlsql-$token
e=$(mkdir -m 700 -- "$s" 2>&1) || {{ echo "pymlsql: cannot write in the folder $p: ${{e##*: }}" >&2; exit 5; }}
trap 'rm -rf -- "$s"' EXIT
trap 'exit 130' HUP INT TERM PIPE
tar -x -p --no-same-owner -C "$s" -f - || exit 6
# The archive's last member: without it the stream was cut short, whatever tar thought of it.
[ -e "$s/.pymlsql-complete-$token" ] || {{ echo "pymlsql: the copy was cut short" >&2; exit 9; }}
chown -R -- "$u": "$s/$n" || exit 7
mv -T -- "$s/$n" "$d" || exit 8
printf '%s\n' "$d"
"""
# What a download will move: "kind files bytes estimated-stream-size" then the resolved path.
_PROBE = r"""
u={user}; s={source}
h=$(getent passwd "$u" | cut -d: -f6)
[ -n "$h" ] || {{ echo "pymlsql: no user $u" >&2; exit {no_user}; }}
case $s in /*) ;; *) s=$h/$s ;; esac
[ -e "$s" ] || {{ echo "pymlsql: $s does not exist" >&2; exit 3; }}
r=$(readlink -f -- "$s")
if [ -d "$r" ]; then k=d; else k=f; fi
find "$r" -printf '%y %s\n' 2>/dev/null | awk -v k="$k" '
  $1 == "f" {{ n += 1; b += $2; e += 512 + int(($2 + 511) / 512) * 512; next }}
  {{ e += 512 }}
  END {{ printf "%s %d %d %d\n", k, n, b, e + 1024 }}'
printf '%s' "$r"
"""
_HINTS = {
    3: "Check the path (--source, --target), or create the folder first.",
    4: "Remove it first, or copy into a new target.",
    5: "Pick a target folder the user can write, such as its home.",
}


class CopyError(PymlsqlError):
    """A copy could not be done; nothing partial was left at the target."""


def _noop(done: int, total: int) -> None:
    pass


class _Meter:
    """Turns bytes of tar stream into bytes of file content for the progress callback."""

    def __init__(self, total: int, estimate: int, progress: Progress, cancel: threading.Event | None) -> None:
        self.total, self._estimate, self._progress, self._cancel = total, max(estimate, 1), progress, cancel
        self._streamed = 0

    def count(self, size: int) -> None:
        if self._cancel is not None and self._cancel.is_set():
            raise KeyboardInterrupt
        self._streamed += size
        self._progress(min(self.total, self._streamed * self.total // self._estimate), self.total)


class _Writer:
    def __init__(self, stream: RemoteStream, meter: _Meter) -> None:
        self._stream, self._meter = stream, meter

    def write(self, data: bytes) -> int:
        self._stream.write(data)
        self._meter.count(len(data))
        return len(data)


class _Reader:
    def __init__(self, stream: RemoteStream, meter: _Meter) -> None:
        self._stream, self._meter = stream, meter

    def read(self, size: int = _BUFFER) -> bytes:
        data = self._stream.read(size if size and size > 0 else _BUFFER)
        self._meter.count(len(data))
        return data


def upload(connection: Any, source: str, target: str, *, user: str, progress: Progress = _noop,
           cancel: threading.Event | None = None) -> CopyResult:  # fmt: skip
    """Copies a local file or directory to `target` on the instance, owned by `user`."""
    started = time.monotonic()
    instance_id = connection.instance.instance_id
    local = Path(source).expanduser()
    if not local.exists():
        raise CopyError(f"the local path {source} does not exist", hint="Check the source path (--source).")
    entries = _local_entries(local)
    files = sum(1 for path in entries if path.is_file() and not path.is_symlink())
    total = sum(path.stat().st_size for path in entries if path.is_file() and not path.is_symlink())
    estimate = sum(_BLOCK + _padded(path.lstat().st_size) if stat.S_ISREG(path.lstat().st_mode) else _BLOCK
                   for path in entries) + 2 * _BLOCK  # fmt: skip
    token = uuid.uuid4().hex[:12]
    script = _UPLOAD.format(user=shlex.quote(user), target=shlex.quote(target), name=shlex.quote(local.name),
                            kind="d" if local.is_dir() else "f", token=token, no_user=_NO_USER)  # fmt: skip
    meter = _Meter(total, estimate, progress, cancel)
    stream = open_stream(connection, script, size=total)
    broken: BaseException | None = None
    try:
        try:
            with tarfile.open(fileobj=_Writer(stream, meter), mode="w|", format=tarfile.PAX_FORMAT,  # type: ignore[call-overload]
                              bufsize=_BUFFER, copybufsize=_BUFFER) as archive:  # fmt: skip
                for path in entries:
                    _add(archive, local, path)
                archive.addfile(tarfile.TarInfo(f".pymlsql-complete-{token}"))
        except (OSError, SshError) as error:
            broken = error  # the command ended early: its status says why
        stream.close_input()
        output = _read_all(stream)
        status, errors = stream.finish(_FINISH_TIMEOUT)
    except BaseException:
        _settle(stream)
        raise
    if status != 0:
        raise _failure(status, errors, instance_id, user, f"copying {source} to {instance_id}:{target}", broken)
    if broken is not None:
        raise CopyError(f"copying {source} to {instance_id}:{target} failed: {broken}")
    progress(total, total)
    destination = output.decode(errors="replace").strip()
    return CopyResult(instance_id, source, destination, files, total, time.monotonic() - started)


def download(connection: Any, source: str, target: str, *, user: str, progress: Progress = _noop,
             cancel: threading.Event | None = None) -> CopyResult:  # fmt: skip
    """Copies a file or directory of the instance (relative paths from `user`'s home) to `target`."""
    started = time.monotonic()
    instance_id = connection.instance.instance_id
    status, output = connection.command(_PROBE.format(user=shlex.quote(user), source=shlex.quote(source),
                                                      no_user=_NO_USER))  # fmt: skip
    if status != 0:
        raise _failure(status, output, instance_id, user, f"copying {instance_id}:{source}", None)
    head, _, remote = output.partition("\n")
    kind, files, total, estimate = head.split()
    name = remote.rstrip("/").rsplit("/", 1)[-1]
    local_target = Path(target).expanduser()
    requested = source.rstrip("/").rsplit("/", 1)[-1] or name
    destination = local_target / requested if local_target.is_dir() else local_target
    if not destination.parent.is_dir():
        what = "is not a folder" if destination.parent.exists() else "does not exist"
        raise CopyError(f"the local folder {destination.parent} {what}", hint="Create it first, or check --target.")
    if kind == "d" and destination.exists():
        raise CopyError(f"{destination} already exists", hint="Remove it first, or pick a new target.")
    parent = remote.rsplit("/", 1)[0] or "/"
    meter = _Meter(int(total), int(estimate), progress, cancel)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.pymlsql-", dir=destination.parent))
    except OSError as error:
        raise CopyError(
            f"cannot write in the local folder {destination.parent}: {error.strerror or error}",
            hint="Pick a target folder you can write.",
        ) from None
    try:
        command = f"cd -- {shlex.quote(parent)} && exec tar -c -f - {shlex.quote('./' + name)}"
        stream = open_stream(connection, command, size=int(total))
        try:
            with tarfile.open(fileobj=_Reader(stream, meter), mode="r|", bufsize=_BUFFER,  # type: ignore[call-overload]
                              copybufsize=_BUFFER) as archive:  # fmt: skip
                archive.extractall(staging, members=_Checked(archive), **_TRUSTED)
            _read_all(stream)
            status, errors = stream.finish(_FINISH_TIMEOUT)
        except BaseException:
            stream.abort()
            raise
        if status != 0:
            raise CopyError(f"copying {instance_id}:{source} failed: {errors.strip() or f'tar exit {status}'}")
        os.replace(staging / name, destination)
    except (OSError, tarfile.TarError) as error:
        raise CopyError(f"copying {instance_id}:{source} to {target} failed: {error}") from None
    finally:
        _remove_tree(staging)
    progress(int(total), int(total))
    return CopyResult(instance_id, source, str(destination), int(files), int(total), time.monotonic() - started)


def _local_entries(top: Path) -> list[Path]:
    """`top` and, for a directory, everything under it (symlinks kept as links, not followed)."""
    if not top.is_dir():
        return [top]
    found = [top]
    for folder, directories, names in os.walk(top):
        directories.sort()
        for name in sorted(directories + names):
            path = Path(folder) / name
            if path.is_symlink() or path.is_dir() or path.is_file():
                found.append(path)
    return found


def _add(archive: tarfile.TarFile, top: Path, path: Path) -> None:
    name = top.name if path == top else f"{top.name}/{path.relative_to(top).as_posix()}"
    # Built from lstat rather than gettarinfo, which looks up user and group names for every file:
    # owners are set on the instance, and local names are no business of the instance.
    status = path.lstat()
    info = tarfile.TarInfo(name)
    info.mode, info.mtime = stat.S_IMODE(status.st_mode), int(status.st_mtime)
    if stat.S_ISREG(status.st_mode):
        info.size = status.st_size
        with path.open("rb") as data:
            archive.addfile(info, data)
        return
    if stat.S_ISDIR(status.st_mode):
        info.type = tarfile.DIRTYPE
    else:
        info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
    archive.addfile(info)


class _Checked:
    """The members of a downloaded archive, refused if they could land outside the destination.

    Cheaper than tarfile's filters, which resolve every path on disk: names must be relative
    without `..`, only files, directories and symlinks are taken, and nothing may be written
    through a symlink of the archive itself. Modes are kept without setuid/setgid/sticky bits, and
    the files are the local user's.
    """

    def __init__(self, archive: tarfile.TarFile) -> None:
        self._archive = archive
        self._links: set[str] = set()

    def __iter__(self) -> Iterator[tarfile.TarInfo]:
        for member in self._archive:
            parts = [part for part in member.name.split("/") if part not in ("", ".")]
            if member.name.startswith("/") or ".." in parts or not parts:
                raise CopyError(f"refusing the archive member {member.name!r}: outside the destination")
            if any("/".join(parts[:depth]) in self._links for depth in range(1, len(parts) + 1)):
                raise CopyError(f"refusing the archive member {member.name!r}: it goes through a symlink")
            if not (member.isreg() or member.isdir() or member.issym()):
                continue
            if member.issym():
                self._links.add("/".join(parts))
            member.mode &= 0o777
            member.uid, member.gid, member.uname, member.gname = os.getuid(), os.getgid(), "", ""
            yield member


def _settle(stream: RemoteStream) -> None:
    """Ends an upload cut short: at the end of its input the command removes what it unpacked."""
    try:
        stream.close_input()
        stream.finish(10.0)
    except (PymlsqlError, OSError):
        stream.abort()


def _padded(size: int) -> int:
    return (size + _BLOCK - 1) // _BLOCK * _BLOCK


def _read_all(stream: RemoteStream) -> bytes:
    output = bytearray()
    while chunk := stream.read(_BUFFER):
        output += chunk
    return bytes(output)


def _failure(status: int, errors: str, instance_id: str, user: str, what: str,
             broken: BaseException | None) -> PymlsqlError:  # fmt: skip
    lines = [line for line in errors.strip().splitlines() if line.strip()]
    said = next((line.removeprefix("pymlsql: ") for line in lines if line.startswith("pymlsql: ")), None)
    if status == _NO_USER:
        return SshError(
            f"there is no user {user!r} on {instance_id}",
            hint=NO_USER_HINT,
        )
    if said is not None:
        return CopyError(f"{said} on {instance_id}", hint=_HINTS.get(status))
    detail = lines[-1] if lines else (str(broken) if broken else f"exit status {status}")
    return CopyError(f"{what} failed: {detail}")


def _remove_tree(path: Path) -> None:
    if not path.exists():
        return
    # Copied folders keep their modes, which may forbid deleting what is inside them.
    for folder in [path, *(p for p in path.rglob("*") if p.is_dir() and not p.is_symlink())]:
        folder.chmod(0o700)
    shutil.rmtree(path)
