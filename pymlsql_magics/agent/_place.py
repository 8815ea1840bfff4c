"""Where an agent lives, and which clients it may serve.

An agent serves the clients whose environment it was started with: the same credentials,
endpoint, region, home, PATH and settings, the same Python and the same version of this package.
Its socket is named after a keyed digest of those values, so a client finds the agent of its own
environment, and a change (another AccessKey, `export PYMLSQL_ECS_ENDPOINT=...`, an upgrade)
starts another one. The values themselves never leave the client: the digest is keyed with a
random key kept in the agent folder, which only the user can open.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

# Commands that call ECS: the ones worth a warm path. `sandbox` and `agent` run in the client.
COMMANDS = frozenset({"start", "stop", "exec-shell", "copy-from-local", "copy-to-local", "list", "forward",
                      "network"})  # fmt: skip
# A Unix socket's path holds at most 107 bytes; a longer home would need a folder elsewhere.
_MAX_SOCKET_PATH = 107

_PREFIXES = ("ALIBABA_CLOUD_", "ALICLOUD_", "ALIYUN_", "PYMLSQL_", "MLSQL_", "LC_")
_NAMES = ("AK", "AKS", "HOME", "PATH", "LANG", "LANGUAGE", "TZ", "TMPDIR", "PYTHONPATH", "SSL_CERT_FILE",
          "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
          "NO_PROXY", "http_proxy", "https_proxy", "all_proxy", "no_proxy")  # fmt: skip
# Files the credential chain reads: a new profile there is a new environment.
_CREDENTIAL_FILES = (".aliyun/config.json", ".alibabacloud/credentials.ini")


def enabled(environ: Mapping[str, str]) -> bool:
    return environ.get("PYMLSQL_AGENT", "1").strip().lower() not in ("0", "off", "no", "false")


def folder(environ: Mapping[str, str]) -> Path:
    return Path(environ.get("HOME") or Path.home()) / ".pymlsql" / "agent"


def private_folder(environ: Mapping[str, str]) -> Path | None:
    """The agent folder, made 0700 if missing; None if it is not this user's alone (then no agent)."""
    path = folder(environ)
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        status = path.stat()
    except OSError:
        return None
    if status.st_uid != os.getuid() or status.st_mode & 0o077:
        return None
    return path


def socket_path(environ: Mapping[str, str], place: Path) -> Path | None:
    """The socket of the agent for this environment, or None if its path would be too long."""
    path = place / f"{_digest(environ, place)}.sock"
    return path if len(os.fsencode(path)) <= _MAX_SOCKET_PATH else None


def _digest(environ: Mapping[str, str], place: Path) -> str:
    relevant = {name: value for name, value in environ.items()
                if (name in _NAMES or name.startswith(_PREFIXES)) and name != "PYMLSQL_AGENT"}  # fmt: skip
    home = Path(environ.get("HOME") or Path.home())
    files = [home / name for name in _CREDENTIAL_FILES]
    if environ.get("ALIBABA_CLOUD_CREDENTIALS_FILE"):
        files.append(Path(environ["ALIBABA_CLOUD_CREDENTIALS_FILE"]))
    identity = {
        "environment": relevant,
        "files": {str(path): _stamp(path) for path in files},
        "python": sys.executable,
        "code": _code_stamp(),
        "uid": os.getuid(),
    }
    text = json.dumps(identity, sort_keys=True).encode()
    return hmac.new(_key(place), text, hashlib.sha256).hexdigest()[:16]


def _stamp(path: Path) -> list[int] | None:
    try:
        status = path.stat()
    except OSError:
        return None
    return [status.st_mtime_ns, status.st_size]


def _code_stamp() -> list[int]:
    """When this package's code last changed, so an agent never runs code older than its client's."""
    newest, count = 0, 0
    for top, _, names in os.walk(Path(__file__).resolve().parents[1]):
        for name in names:
            if name.endswith(".py"):
                newest = max(newest, os.stat(os.path.join(top, name)).st_mtime_ns)
                count += 1
    return [newest, count]


def _key(place: Path) -> bytes:
    path = place / "digest.key"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    key = os.urandom(32)
    temporary = place / f".digest.key.{os.getpid()}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(key)
    try:
        os.link(temporary, path)  # the first writer's key wins; never replace a key in use
    except FileExistsError:
        pass
    finally:
        os.unlink(temporary)
    return path.read_bytes()
