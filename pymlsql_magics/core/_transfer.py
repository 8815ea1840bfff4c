"""Copying files and directories to and from an instance as one tar stream, whole or not at all.

A tree of thousands of small files moves as one stream instead of a request per file, and a big
file moves at the speed of the stream (see _streams). Placement follows scp: a target that is
an existing directory receives the source under its own name; otherwise the target is the new
name. Everything is first unpacked under a hidden name next to its destination, modes kept and
ownership given to the user, then renamed into place; after a failure or interrupt the hidden
part is removed, so a target is never left half-written.
"""

from __future__ import annotations

import io
import os
import shlex
import shutil
import stat
import subprocess
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from . import _remote as remote
from ._compression import COMPRESS, DECOMPRESS, REMOTE_CODECS, WORTH, codecs_in, pick, sample_ratio
from ._errors import CopyError, PymlsqlError, SshError
from ._face import Face
from ._results import CopyResult
from ._ssh import SshConnection
from ._streams import RemoteStream, open_stream

Progress = Callable[[int, int], None]

_BLOCK = 512
_BUFFER = 1 << 16
_FINISH_TIMEOUT = 120.0


def _noop(done: int, total: int) -> None:
    pass


class Meter:
    """Turns bytes of tar stream into bytes of file content for the progress callback."""

    def __init__(self, total: int, estimate: int, progress: Progress, cancel: threading.Event | None) -> None:
        self.total, self._estimate, self._progress, self._cancel = total, max(estimate, 1), progress, cancel
        self._streamed = 0

    def count(self, size: int) -> None:
        if self._cancel is not None and self._cancel.is_set():
            raise KeyboardInterrupt
        self._streamed += size
        self._progress(min(self.total, self._streamed * self.total // self._estimate), self.total)


def upload(connection: SshConnection, source: str, target: str, *, user: str, progress: Progress = _noop,
           cancel: threading.Event | None = None, compress: str = "auto") -> CopyResult:  # fmt: skip
    """Copies a local file or directory to `target` on the instance, owned by `user`; `compress`
    is auto, on or off (see _compression)."""
    started = time.monotonic()
    instance_id = connection.instance.instance_id
    local = local_source(source)
    files, total, estimate = inventory(local)
    token = uuid.uuid4().hex[:12]
    codec, ratio = upload_codec(connection, local, compress)
    script = remote.unpack(user, target, local.name, directory=local.is_dir(), token=token, codec=codec)
    meter = Meter(total, int(estimate * ratio), progress, cancel)
    sent = send(connection, script, local, source, meter, token=token, codec=codec)
    if sent.status != 0:
        raise copy_failure(sent.status, sent.errors, instance_id, connection.face, user,
                           f"copying {source} to {instance_id}:{target}", sent.broken)  # fmt: skip
    if sent.broken is not None:
        raise CopyError(f"copying {source} to {instance_id}:{target} failed: {sent.broken}")
    progress(total, total)
    destination = sent.output.decode(errors="replace").strip()
    return CopyResult(instance_id, source, destination, files, total, time.monotonic() - started)


def upload_codec(connection: SshConnection, local: Path, compress: str) -> tuple[str | None, float]:
    """The codec an upload of `local` uses (None: none), and how far it is expected to shrink the stream."""
    if compress == "off":
        return None, 1.0
    ratio = sample_ratio(local)
    if compress == "auto" and ratio > WORTH:
        return None, 1.0
    status, output = connection.command(REMOTE_CODECS)
    codec = pick(compress, codecs_in(output), ratio)
    return codec, ratio if codec else 1.0


def local_source(source: str) -> Path:
    local = Path(source).expanduser()
    if not local.exists():
        raise CopyError(f"the local path {source} does not exist", hint="Check the source path (--source).")
    return local


@dataclass(frozen=True)
class Sent:
    """How the command that received an upload's stream ended, and why the stream stopped early if it did."""

    status: int
    output: bytes
    errors: str
    broken: BaseException | None


def send(connection: SshConnection, command: str, local: Path, source: str, meter: Meter, *, token: str,
         prefix: bytes = b"", codec: str | None = None) -> Sent:  # fmt: skip
    """Streams `local` as tar, then the completion mark of `token`, into `command` on the instance,
    after `prefix` (what the command reads before the archive); compressed with `codec` if given."""
    # A symlink given as the source is copied as what it points to, as scp does.
    follow = ["-h"] if local.is_symlink() else []
    mark = _completion_mark(token)
    packer = _LocalTar([*follow, "-c", "-f", "-", "-C", str(local.parent), f"./{local.name}"], codec=codec,
                       then=mark)  # fmt: skip
    stream = open_stream(connection, command, size=meter.total)
    broken: BaseException | None = None
    try:
        try:
            if prefix:
                stream.write(prefix)
            # The local tar in C feeds the stream; the mark that completes it follows, as a second
            # archive, only once that tar says it read every file (inside the compressed stream,
            # when there is one).
            stream.pour(cast(io.BufferedReader, packer.process.stdout), meter.count)
            if packer.process.wait() != 0:
                raise CopyError(f"cannot read {source}: {packer.complaint()}",
                                hint="Check that every file under it is readable.")  # fmt: skip
            if codec is None:
                stream.write(mark)
        except (OSError, SshError) as error:
            broken = error  # the command ended early: its status says why
        stream.close_input()
        output = _read_all(stream)
        status, errors = stream.finish(_FINISH_TIMEOUT)
    except BaseException:
        _settle(stream)
        raise
    finally:
        packer.close()
    return Sent(status, output, errors, broken)


def download(connection: SshConnection, source: str, target: str, *, user: str, progress: Progress = _noop,
             cancel: threading.Event | None = None, compress: str = "auto") -> CopyResult:  # fmt: skip
    """Copies a file or directory of the instance (relative paths from `user`'s home) to `target`;
    `compress` is auto, on or off (see _compression)."""
    started = time.monotonic()
    instance_id = connection.instance.instance_id
    status, output = connection.command(remote.probe(user, source))
    if status != 0:
        raise copy_failure(status, output, instance_id, connection.face, user, f"copying {instance_id}:{source}", None)
    found = remote.parse_probe(output)
    name = found.path.rstrip("/").rsplit("/", 1)[-1]
    local_target = Path(target).expanduser()
    requested = source.rstrip("/").rsplit("/", 1)[-1] or name
    destination = local_target / requested if local_target.is_dir() else local_target
    if not destination.parent.is_dir():
        what = "is not a folder" if destination.parent.exists() else "does not exist"
        raise CopyError(f"the local folder {destination.parent} {what}", hint="Create it first, or check --target.")
    if found.directory and destination.exists():
        raise CopyError(f"{destination} already exists", hint="Remove it first, or pick a new target.")
    parent = found.path.rsplit("/", 1)[0] or "/"
    codec = pick(compress, set(found.codecs), found.ratio)
    meter = Meter(found.total, int(found.estimate * (found.ratio if codec else 1.0)), progress, cancel)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.pymlsql-", dir=destination.parent))
    except OSError as error:
        raise CopyError(
            f"cannot write in the local folder {destination.parent}: {error.strerror or error}",
            hint="Pick a target folder you can write.",
        ) from None
    try:
        stream = open_stream(connection, remote.pack(parent, name, codec), size=found.total)
        unpacker = unpacker_into(staging, codec)
        try:
            relay(stream, unpacker, meter)
            status, errors = stream.finish(_FINISH_TIMEOUT)
            if unpacker.process.returncode != 0:
                raise CopyError(f"copying {instance_id}:{source} failed: {unpacker.complaint()}")
        except BaseException:
            stream.abort()
            raise
        finally:
            unpacker.close()
        if status != 0:
            raise CopyError(f"copying {instance_id}:{source} failed: {errors.strip() or f'tar exit {status}'}")
        os.replace(staging / name, destination)
    except OSError as error:
        raise CopyError(f"copying {instance_id}:{source} to {target} failed: {error}") from None
    finally:
        _remove_tree(staging)
    progress(found.total, found.total)
    return CopyResult(instance_id, source, str(destination), found.files, found.total, time.monotonic() - started)


def inventory(top: Path) -> tuple[int, int, int]:
    """(regular files, their bytes, the size of their tar stream) of `top`, symlinks not followed."""
    files = total = 0
    estimate = _BLOCK
    pending = [top] if top.is_dir() and not top.is_symlink() else []
    if not pending:
        size = top.stat().st_size
        return 1, size, estimate + _BLOCK + _padded(size) + 2 * _BLOCK
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                status = entry.stat(follow_symlinks=False)
                estimate += _BLOCK
                if stat.S_ISREG(status.st_mode):
                    files, total = files + 1, total + status.st_size
                    estimate += _padded(status.st_size)
                elif stat.S_ISDIR(status.st_mode):
                    pending.append(Path(entry.path))
    return files, total, estimate + 2 * _BLOCK


class _LocalTar:
    """The local tar program, in C; Python only relays the stream and counts it.

    Its messages go to a temporary file: a pipe nobody reads could fill and block it.
    """

    def __init__(self, arguments: list[str], *, reading: bool = False, codec: str | None = None,
                 then: bytes = b"") -> None:  # fmt: skip
        program = shutil.which("tar")
        if program is None:
            raise CopyError("copies need the tar program, which is not installed", hint="Install GNU tar or bsdtar.")
        self._errors = tempfile.TemporaryFile()
        self._then = tempfile.NamedTemporaryFile(prefix="pymlsql-mark-") if then and codec else None
        argv = [program, *arguments]
        if codec is not None:
            # A pipeline in bash, in C end to end; pipefail: a tar that fails is the pipeline's failure.
            if reading:
                pipeline = f'{DECOMPRESS[codec]} | "$0" "$@"'
            else:
                assert self._then is not None
                self._then.write(then)
                self._then.flush()
                pipeline = f'{{ "$0" "$@" && cat {shlex.quote(self._then.name)}; }} | {COMPRESS[codec]}'
            argv = ["bash", "-o", "pipefail", "-c", pipeline, *argv]
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if reading else subprocess.DEVNULL,
            stdout=subprocess.DEVNULL if reading else subprocess.PIPE,
            stderr=self._errors,
            umask=0 if reading else -1,
        )

    def complaint(self) -> str:
        self._errors.seek(0)
        lines = [line for line in self._errors.read().decode(errors="replace").splitlines() if line.strip()]
        return lines[-1] if lines else f"tar exit status {self.process.returncode}"

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None and not pipe.closed:
                try:
                    pipe.close()
                except BrokenPipeError:
                    pass
        self._errors.close()
        if self._then is not None:
            self._then.close()


def unpacker_into(folder: Path, codec: str | None = None) -> _LocalTar:
    """The local tar that unpacks what an instance sends: it is not trusted.

    umask 0 with --no-same-permissions keeps the modes it had there, minus setuid and setgid bits;
    GNU tar strips leading slashes, refuses `..`, and never writes through a symlink it unpacked.
    """
    return _LocalTar(["-x", "-f", "-", "-C", str(folder), "--no-same-owner", "--no-same-permissions"], reading=True,
                     codec=codec)  # fmt: skip


def relay(stream: RemoteStream, unpacker: _LocalTar, meter: Meter) -> None:
    """Feeds the instance's tar stream to the local tar until both ends are done."""
    into = unpacker.process.stdin
    assert into is not None
    try:
        stream.drain(cast(io.BufferedWriter, into), meter.count)
        into.close()
    except BrokenPipeError:
        pass  # the local tar gave up; its exit status and message say why
    unpacker.process.wait()


def _settle(stream: RemoteStream) -> None:
    """Ends an upload cut short: at the end of its input the command removes what it unpacked."""
    try:
        stream.close_input()
        stream.finish(10.0)
    except (PymlsqlError, OSError):
        stream.abort()


def _completion_mark(token: str) -> bytes:
    """A tar archive of one empty file, the mark that the stream before it is complete."""
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w", format=tarfile.GNU_FORMAT) as writer:
        mark = tarfile.TarInfo(f"./.pymlsql-complete-{token}")
        mark.mtime, mark.mode = int(time.time()), 0o600
        writer.addfile(mark)
    return archive.getvalue()


def _padded(size: int) -> int:
    return (size + _BLOCK - 1) // _BLOCK * _BLOCK


def _read_all(stream: RemoteStream) -> bytes:
    output = bytearray()
    while chunk := stream.read(_BUFFER):
        output += chunk
    return bytes(output)


def copy_failure(status: int, errors: str, instance_id: str, face: Face, user: str, what: str,
                 broken: BaseException | None) -> PymlsqlError:  # fmt: skip
    """What an unpack's or a probe's exit status and stderr mean, said to the user."""
    if status == remote.NO_USER_STATUS:
        return remote.no_user_error(user, instance_id, face=face)
    if (said := remote.complaint(errors)) is not None:
        return CopyError(f"{said} on {instance_id}", hint=remote.COPY_HINTS.get(status))
    lines = [line for line in errors.strip().splitlines() if line.strip()]
    detail = lines[-1] if lines else (str(broken) if broken else f"exit status {status}")
    return CopyError(f"{what} failed: {detail}")


def _remove_tree(path: Path) -> None:
    if not path.exists():
        return
    # Copied folders keep their modes, which may forbid deleting what is inside them.
    for folder in [path, *(p for p in path.rglob("*") if p.is_dir() and not p.is_symlink())]:
        folder.chmod(0o700)
    shutil.rmtree(path)
