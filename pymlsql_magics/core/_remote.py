"""The shell run on instances, as text: how scripts and copies start there, and what they print first.

Each function returns one command line for an exec channel, its arguments quoted. The commands
share one convention: a missing user ends them with NO_USER_STATUS, and a `pymlsql: ` line on
stderr says what went wrong in words (see complaint).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from ._compression import COMPRESS, DECOMPRESS, REMOTE_CODECS, REMOTE_SAMPLE, codecs_in
from ._errors import SshError
from ._face import PYTHON, Face

NO_USER_STATUS = 125
PID_MARK = b"pymlsql:pid="

# The user the script runs as must exist; `announce` is what stands before the complaint on stderr.
_USER_EXISTS = r"""
u={user}
if ! id -u "$u" >/dev/null 2>&1; then
  printf '{announce}pymlsql: no user %s\n' "$u" >&2
  exit {no_user}
fi
"""
# A copy needs the user's home (relative paths start there); without one there is no such user.
_USER_HOME = r"""
u={user}
h=$(getent passwd "$u" | cut -d: -f6)
[ -n "$h" ] || {{ echo "pymlsql: no user $u" >&2; exit {no_user}; }}
"""

# The login user's script is read straight from the channel (fd 3), with /dev/null as its stdin,
# by the login shell itself when that is bash and not in POSIX mode (as `ssh instance "$script"`
# runs it), else by /bin/bash: no wrapper process waits around it, on each of many instances at
# once. sshd made that shell a session and process-group leader, so its pid, announced first on
# stderr, names the group to kill. A signal that ends it arrives as "exit-signal" (see _exec).
_AS_LOGIN_USER = (
    'echo "pymlsql:pid=$$" >&2; cd ~ || exit; '
    'if [ -n "$BASH_VERSION" ] && ! shopt -qo posix; then . /dev/fd/3 3<&0 </dev/null; '
    "else exec /bin/bash /dev/fd/3 3<&0 </dev/null; fi"
)
# Another user's script runs like `su - USER` would, from a private temporary file (mktemp makes it
# 0600) removed however the script ends, in a session of its own whose id is announced first.
# `su -c` puts the user's shell in yet another session, so killing means the group of the
# announced process and the groups of its children (see _GROUPS). A missing user is announced as
# pid 0, so its complaint is not taken for the script's output.
_AS_OTHER_USER = (
    _USER_EXISTS
    + r"""f=$(mktemp /tmp/.pymlsql-script.XXXXXXXX) || exit 124
trap 'rm -f "$f"' EXIT
cat > "$f" && chown "$u" "$f" || exit 124
setsid su - "$u" -s /bin/bash -c "exec /bin/bash $f" </dev/null &
pid=$!
echo "pymlsql:pid=$pid" >&2
trap 'kill -TERM -- {groups} 2>/dev/null; rm -f "$f"; exit 130' HUP INT TERM
wait $pid
"""
)
# With a terminal the script cannot come on stdin: it is staged first (_STAGE), then run on the
# pty in the foreground, so it is the terminal's process group and gets its hangup.
_STAGE = (
    _USER_EXISTS
    + r"""f=$(mktemp /tmp/.pymlsql-script.XXXXXXXX) || exit 124
cat > "$f" || {{ rm -f "$f"; exit 124; }}
[ "${{USER:-$(id -un)}}" = "$u" ] || chown "$u" "$f" || {{ rm -f "$f"; exit 124; }}
printf '%s' "$f"
"""
)
_ON_TERMINAL = r"""
u={user}; f={path}
trap 'rm -f "$f"' EXIT
trap 'kill -TERM -- {groups} 2>/dev/null; rm -f "$f"; exit 130' HUP INT TERM
pid=$$
echo "pymlsql:pid=$pid"
if [ "$(id -un)" = "$u" ]; then
  cd ~ && /bin/bash "$f"
else
  su --pty - "$u" -s /bin/bash -c "exec /bin/bash $f"
fi
"""
# The process groups to signal for the announced process $pid: its own and each child's.
_GROUPS = "-$pid $(pgrep -P $pid | sed s/^/-/)"

# Unpacks the tar stream on stdin next to the destination, then renames it into place. The
# placement is decided here, on the instance, so a copy is one round trip however many files.
_UNPACK = (
    _USER_HOME
    + r"""t={target}; n={name}; kind={kind}; token={token}
case $t in /*) ;; *) t=$h/$t ;; esac
if [ -d "$t" ]; then d=${{t%/}}/$n; else d=${{t%/}}; fi
p=$(dirname -- "$d")
[ -d "$p" ] || {{ echo "pymlsql: the folder $p does not exist" >&2; exit 3; }}
if [ "$kind" = d ] && [ -e "$d" ]; then echo "pymlsql: $d already exists" >&2; exit 4; fi
s=$p/.$(basename -- "$d").pymlsql-$token
e=$(mkdir -m 700 -- "$s" 2>&1) || {{ echo "pymlsql: cannot write in the folder $p: ${{e##*: }}" >&2; exit 5; }}
trap 'rm -rf -- "$s"' EXIT
trap 'exit 130' HUP INT TERM PIPE
{decode}tar -x -i -p --no-same-owner -C "$s" -f - || exit 6
# The mark comes last, as an archive of its own (-i reads on past the first one's end): without it
# the stream was cut short or the local tar failed, whatever this tar thought of it.
[ -e "$s/.pymlsql-complete-$token" ] || {{ echo "pymlsql: the copy was cut short" >&2; exit 9; }}
chown -R -- "$u": "$s/$n" || exit 7
mv -T -- "$s/$n" "$d" || exit 8
printf '%s\n' "$d"
"""
)
# What a download will move: "kind files bytes estimated-stream-size" then the resolved path.
_PROBE = (
    _USER_HOME
    + r"""s={source}
case $s in /*) ;; *) s=$h/$s ;; esac
[ -e "$s" ] || {{ echo "pymlsql: $s does not exist" >&2; exit 3; }}
r=$(readlink -f -- "$s")
if [ -d "$r" ]; then k=d; else k=f; fi
find "$r" -printf '%y %s\n' 2>/dev/null | awk -v k="$k" '
  $1 == "f" {{ n += 1; b += $2; e += 512 + int(($2 + 511) / 512) * 512; next }}
  {{ e += 512 }}
  END {{ printf "%s %d %d %d", k, n, b, e + 1024 }}'
{sample}
c=$({codecs} | tr '\n' ,)
printf ' %s %s %s\n' "$raw" "$packed" "${{c:-none}}"
printf '%s' "$r"
"""
)
# What to do about the statuses of _UNPACK and _PROBE that a user can act on.
COPY_HINTS = {
    3: "Check the path (--source, --target), or create the folder first.",
    4: "Remove it first, or copy into a new target.",
    5: "Pick a target folder the user can write, such as its home.",
}


def as_login_user() -> str:
    """Runs the script that comes on stdin as the login user, in its home."""
    return _AS_LOGIN_USER


def as_other_user(user: str) -> str:
    """Runs the script that comes on stdin as `user`, with that user's login environment."""
    return _AS_OTHER_USER.format(
        user=shlex.quote(user), announce=r"pymlsql:pid=0\n", no_user=NO_USER_STATUS, groups=_GROUPS
    )


def stage(user: str) -> str:
    """Saves the script that comes on stdin to a private file `user` can read; prints its path."""
    return _STAGE.format(user=shlex.quote(user), announce="", no_user=NO_USER_STATUS)


def on_terminal(user: str, path: str) -> str:
    """Runs the staged script at `path` as `user` on the channel's pty, then removes it."""
    return _ON_TERMINAL.format(user=shlex.quote(user), path=shlex.quote(path), groups=_GROUPS)


def kill_groups(pid: int) -> str:
    """Ends the process groups of the announced `pid`: TERM, then KILL a second later."""
    # Children are listed before anything is signalled: once su is gone they are orphans.
    return (
        f'pid={pid}; groups="{_GROUPS}"; kill -TERM -- $groups 2>/dev/null; sleep 1; '
        "kill -KILL -- $groups 2>/dev/null; true"
    )


def unpack(user: str, target: str, name: str, *, directory: bool, token: str, codec: str | None = None) -> str:
    """Unpacks the tar stream on stdin (compressed with `codec`, if given) to `target` for `user`;
    prints where it went. The stream must end with the mark of `token` (see _transfer), or nothing
    is placed."""
    decode = f"{DECOMPRESS[codec]} | " if codec else ""
    return _UNPACK.format(user=shlex.quote(user), target=shlex.quote(target), name=shlex.quote(name),
                          kind="d" if directory else "f", token=token, no_user=NO_USER_STATUS,
                          decode=decode)  # fmt: skip


def probe(user: str, source: str) -> str:
    """Says what a download of `source` (relative to `user`'s home) would move; see parse_probe."""
    return _PROBE.format(user=shlex.quote(user), source=shlex.quote(source), no_user=NO_USER_STATUS,
                         sample=REMOTE_SAMPLE, codecs=REMOTE_CODECS)  # fmt: skip


def pack(folder: str, name: str, codec: str | None = None) -> str:
    """Writes `name` in `folder` to stdout as a tar stream, compressed with `codec` if given."""
    where, what = shlex.quote(folder), shlex.quote("./" + name)
    if codec is None:
        return f"cd -- {where} && exec tar -c -f - {what}"
    # Without pipefail a tar that fails midway would end in the compressor's success.
    piped = shlex.quote(f'tar -c -f - "$0" | {COMPRESS[codec]}')
    return f"cd -- {where} && exec bash -o pipefail -c {piped} {what}"


@dataclass(frozen=True)
class Probe:
    """What probe() found: a file or a directory, its regular files, their bytes, the tar stream's size."""

    directory: bool
    files: int
    total: int
    estimate: int
    path: str  # with symlinks resolved
    ratio: float  # how far gzip's fastest level shrinks a sample of it (1.0: not at all)
    codecs: frozenset[str]  # the compressors the instance has


def parse_probe(output: str) -> Probe:
    head, _, path = output.partition("\n")
    kind, files, total, estimate, raw, packed, found = head.split()
    ratio = int(packed) / int(raw) if int(raw) else 1.0
    return Probe(kind == "d", int(files), int(total), int(estimate), path, ratio,
                 frozenset(codecs_in(found.replace(",", "\n"))))  # fmt: skip


def complaint(errors: str) -> str | None:
    """What a command said was wrong, in its own words (the first `pymlsql: ` line), if it said."""
    lines = (line for line in errors.strip().splitlines() if line.strip())
    return next((line.removeprefix("pymlsql: ") for line in lines if line.startswith("pymlsql: ")), None)


def no_user_error(user: str, where: str, *, host: str = "", face: Face = PYTHON) -> SshError:
    """What NO_USER_STATUS means, said to the user."""
    return SshError(f"there is no user {user!r} on {where}", host=host, hint=face.no_user_hint())


class PidHeader:
    """The `pymlsql:pid=N` line a script's wrapper prints first: the process group to kill.

    `pid` stays 0 until that line is complete, and is 0 when the wrapper found no such user; it is
    -1 when the wrapper failed before announcing, and everything it printed is real output.
    """

    def __init__(self) -> None:
        self.pid = 0
        self._pending: bytearray | None = bytearray()

    def feed(self, chunk: bytes) -> bytes:
        """The part of `chunk` that is the script's output rather than the header."""
        if self._pending is None:
            # After a pid of 0 comes only the complaint, in as many chunks as the network cut it into.
            return chunk if self.pid != 0 else b""
        self._pending += chunk
        if b"\n" not in self._pending:
            return b""
        seen = bytes(self._pending)
        self._pending = None
        line, _, rest = seen.partition(b"\n")
        line = line.rstrip(b"\r")
        if not line.startswith(PID_MARK):
            self.pid = -1
            return seen
        self.pid = int(line[len(PID_MARK) :] or 0)
        # With pid 0 the rest is the wrapper's complaint that the user does not exist: an error, not output.
        return rest if self.pid != 0 else b""

    def leftover(self) -> bytes:
        """What came before the output ended without completing a line: output after all."""
        return bytes(self._pending or b"")
