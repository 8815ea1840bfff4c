"""Scripts that run once per instance: a record on the instance of each exact script that succeeded.

The record lives in the running user's home on the instance (`~/.pymlsql/once/KEY`, holding the
time it succeeded), so it survives kernel restarts and notebook copies, and a re-created instance
has none. KEY is a digest of the script with its user and environment: any change runs it again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

from ._errors import PymlsqlError
from ._output import NullSink
from ._ssh import SshConnection

FOLDER = ".pymlsql/once"


class OnceRecordError(PymlsqlError):
    """The script succeeded, but its record could not be written: a later --once would run it again."""


def once_key(script: str, user: str, env: Mapping[str, str]) -> str:
    text = json.dumps({"script": script, "user": user, "env": sorted(env.items())}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def done_at(connection: SshConnection, key: str, user: str) -> str | None:
    """When this script last succeeded on the instance as `user`, or None if it never did."""
    path = f'"$HOME"/{FOLDER}/{key}'
    status, stdout, _, _ = connection.run(f"[ -f {path} ] && cat {path}\nexit 0\n", user=user, sink=NullSink(),
                                          keep=4096)  # fmt: skip
    when = stdout.strip()
    return when if status == 0 and when else None


def record(connection: SshConnection, key: str, user: str) -> None:
    """Notes on the instance that this script succeeded now; raises OnceRecordError if it cannot."""
    folder = f'"$HOME"/{FOLDER}'
    script = (f"mkdir -p {folder} && date -u +%Y-%m-%dT%H:%M:%SZ > {folder}/{key}.part && "
              f"mv -f {folder}/{key}.part {folder}/{key}\n")  # fmt: skip
    status, stdout, stderr, _ = connection.run(script, user=user, sink=NullSink(), keep=4096)
    if status != 0:
        reason = (stderr or stdout).strip().splitlines()[-1:] or [f"exit status {status}"]
        raise OnceRecordError(
            f"the script succeeded on {connection.instance.instance_id}, but its --once record in "
            f"~{user}/{FOLDER} could not be written ({reason[0]}): a later --once would run it again",
            hint=f"Make ~{user}/{FOLDER} writable by {user} on the instance, or run without --once.",
        )
