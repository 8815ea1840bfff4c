"""Secrets stay secret: the AccessKey secret and private keys appear in no output, log, repr, notebook or file.

Both faces run here as a user without credentials runs them: the command and a notebook kernel
fall back to the sandbox under HOME/.pymlsql/sandbox, whose own credentials.json (mode 600) is
the one file allowed to hold the secret.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from alibabacloud_ecs20140526 import models as ecs
from IPython.core.error import UsageError
from nbclient import NotebookClient

from pymlsql_magics.core import EcsApiError, EcsConfig, Fleet
from pymlsql_magics.sandbox import Sandbox, SandboxInfo, ensure_running, stop

from .conftest import _USER_SETTINGS
from .helpers import creates_nothing, environment, hinted_error, magics_shell, new_client, pymlsql, unique

WEBUSER_IMAGE = "m-sandbox-webuser"
QUICK = ["--pending-delay", "0.3", "--starting-delay", "0.3", "--stopping-delay", "0.3", "--boot-delay", "0.3"]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("secrets-home")


@pytest.fixture(scope="module")
def fallback(home: Path) -> Iterator[SandboxInfo]:
    """The sandbox both faces fall back to without credentials, started ahead with quick timings."""
    state_dir = home / ".pymlsql" / "sandbox"
    info, started = ensure_running(state_dir, serve_args=QUICK)
    assert started
    assert info.state_dir == state_dir
    yield info
    stop(state_dir)


@pytest.fixture(scope="module")
def commands(fallback: SandboxInfo, home: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A session of `pymlsql` as a script runs it, every command with --debug, and two that fail."""
    env = environment(None, home)
    work = tmp_path_factory.mktemp("secrets-work")
    # The script shows its environment: nothing of the caller's may travel with it.
    (work / "script.sh").write_text("echo ran as $(whoami); env\n")
    key, ran = unique("secret-key"), []
    started = pymlsql(env, "start", "--image-id", WEBUSER_IMAGE, "--key-pair-name", key, "--init-ssh-key", "true",
                      "--name", unique("secret"), "--output", "json", "--debug")  # fmt: skip
    assert started.returncode == 0, started.stderr
    instance_id = json.loads(started.stdout)[0]["instance_id"]
    ran.append(started)
    for args in (
        ["exec-shell", "--instance-id", instance_id, "--script-file", str(work / "script.sh")],
        ["copy-from-local", "--instance-id", instance_id, "--source", str(work / "script.sh"), "--target", "/root"],
        ["copy-to-local", "--instance-id", instance_id, "--source", "/root/script.sh", "--target", str(work / "back")],
        ["list", "--output", "json"],
    ):
        done = pymlsql(env, *args, "--debug")
        assert done.returncode == 0, done.stderr
        ran.append(done)
    # What the instance holds on its disk (its /root, /home, /tmp, /etc changes, console) while it lives.
    disk = {path: path.read_bytes().decode(errors="replace") for path in files(fallback.state_dir / "instances")}
    stopped = pymlsql(env, "stop", "--instance-id", instance_id, "--debug")
    assert stopped.returncode == 0, stopped.stderr
    ran.append(stopped)
    unknown = pymlsql(env, "exec-shell", "--instance-id", "i-nosuchinstance", "--script-file", "x", "--debug")
    # The right secret with a key id the endpoint does not know: ECS refuses, the secret was sent.
    wrong_id = pymlsql({**env, "ALIBABA_CLOUD_ACCESS_KEY_ID": "LTAInosuchkeyid", "PYMLSQL_ECS_ENDPOINT":
                        fallback.endpoint, "ALIBABA_CLOUD_ACCESS_KEY_SECRET": fallback.access_key_secret},
                       "list", "--debug")  # fmt: skip
    for failed in (unknown, wrong_id):
        assert failed.returncode != 0 and "Traceback (most recent call last)" in failed.stderr, failed.stderr
    assert "InvalidAccessKeyId.NotFound" in wrong_id.stderr
    return {"ran": [*ran, unknown, wrong_id], "key": home / ".ssh" / key, "disk": disk}


NOTEBOOK = [
    "%load_ext pymlsql_magics",
    "nodes = %ecs_start --image-id m-sandbox-webuser --name {name} --key-pair-name {key} --init-ssh-key",
    "%%ecs_exec nodes --user webuser -o out\necho hello from $(whoami)",
    "print(repr(out))\nnodes",
    "magics = get_ipython().magics_manager.registry['EcsMagics']\n"
    "print(repr(magics._fleet_config), repr(magics._fleet), repr(magics._fleet.ecs))",
    "%ecs_copy nodes:/etc/hostname ./hostname-copy",
    "%ecs_list",
    "%ecs_start --image-id m-no-such-image",
    "import sys\nprint(repr(sys.last_value), repr(sys.last_value.__context__))",
    "%%ecs_exec i-nosuchinstance\ntrue",
    "%ecs_stop nodes",
]


@pytest.fixture(scope="module")
def notebook(fallback: SandboxInfo, home: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A notebook of every magic, two cells failing on purpose, run in a real kernel and saved."""
    folder = tmp_path_factory.mktemp("secrets-notebook")
    key = unique("notebook-key")
    book = nbformat.v4.new_notebook()
    book.cells = [nbformat.v4.new_code_cell(cell.format(name=unique("notebook"), key=key)) for cell in NOTEBOOK]
    env = {name: value for name, value in os.environ.items() if name not in _USER_SETTINGS}
    env["HOME"] = str(home)
    client = NotebookClient(book, timeout=120, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(folder)}})  # fmt: skip
    client.execute(env=env)
    saved = folder / "saved.ipynb"
    nbformat.write(book, saved)
    return {"saved": saved, "book": book, "key": home / ".ssh" / key}


def files(folder: Path) -> list[Path]:
    """Every regular file under `folder`, without following links."""
    return [Path(top, name) for top, _, names in os.walk(folder) for name in names if Path(top, name).is_file()
            and not Path(top, name).is_symlink()]  # fmt: skip


def private_key_lines(path: Path) -> list[str]:
    """Lines of a private key file that must never be shown: those not also in its public key.

    The file holds the public key too (an RSA modulus is in both), and the public key rightly
    travels to instances.
    """
    lines = path.read_text().splitlines()
    assert lines[0].startswith("-----BEGIN") and len(lines) > 3, lines[:1]
    public = subprocess.run(["ssh-keygen", "-y", "-f", str(path)], capture_output=True, text=True, check=True).stdout
    return [line for line in lines[1:-1] if len(line) >= 40 and line not in public]


def leaks(text: str, secret: str, keys: list[Path]) -> list[str]:
    found = ["the AccessKey secret"] if secret in text else []
    return found + [f"the private key {key.name}" for key in keys if any(ln in text for ln in private_key_lines(key))]


def test_the_command_never_shows_the_secret_or_a_private_key_even_with_debug(
    fallback: SandboxInfo, commands: dict[str, Any]
) -> None:
    for done in commands["ran"]:
        assert leaks(done.stdout + done.stderr, fallback.access_key_secret, [commands["key"]]) == [], done.args
    assert "ran as root" in commands["ran"][1].stdout and "HOME=/root" in commands["ran"][1].stdout


def test_an_instance_disk_holds_no_secret_and_no_private_key(
    fallback: SandboxInfo, commands: dict[str, Any]
) -> None:
    disk: dict[Path, str] = commands["disk"]
    assert any(path.name == "script.sh" for path in disk), sorted(disk)
    for path, text in disk.items():
        assert leaks(text, fallback.access_key_secret, [commands["key"]]) == [], path


def test_a_saved_notebook_holds_no_secret_and_no_private_key(
    fallback: SandboxInfo, notebook: dict[str, Any], commands: dict[str, Any]
) -> None:
    text = notebook["saved"].read_text()
    outputs = json.dumps([cell.get("outputs", []) for cell in notebook["book"].cells])
    assert "hello from webuser" in outputs and "UsageError" in outputs and "InvalidImageId.NotFound" in outputs
    assert "EcsConfig(region_id=" in outputs and "Fleet(region_id=" in outputs and "EcsApiError(" in outputs
    assert leaks(text, fallback.access_key_secret, [notebook["key"], commands["key"]]) == []


def test_no_file_the_tools_write_holds_the_secret_or_a_private_key(
    fallback: SandboxInfo, home: Path, notebook: dict[str, Any], commands: dict[str, Any]
) -> None:
    credentials = fallback.state_dir / "credentials.json"
    keys = [notebook["key"], commands["key"]]
    assert fallback.access_key_secret in credentials.read_text()
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    assert list((home / ".pymlsql" / "logs").glob("exec-*.log")) and (home / ".pymlsql" / "known_hosts").is_file()
    scanned = [path for path in files(home) if path != credentials]
    for path in scanned:
        text = path.read_bytes().decode(errors="replace")
        assert leaks(text, fallback.access_key_secret, [key for key in keys if key != path]) == [], path
    names = {path.name for path in scanned}
    assert {"known_hosts", "server.log", "server.json", *(key.name for key in keys)} <= names, names
    assert any(name.startswith("exec-") for name in names), names


def test_private_keys_of_both_faces_are_mode_600_in_a_folder_mode_700(
    home: Path, notebook: dict[str, Any], commands: dict[str, Any]
) -> None:
    for key in (commands["key"], notebook["key"]):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert len(private_key_lines(key)) >= 10  # what the scans above look for
        assert not key.with_name(f".{key.name}.partial").exists()
    assert stat.S_IMODE((home / ".ssh").stat().st_mode) == 0o700


def test_errors_and_results_keep_the_secret_out_of_their_repr_and_attributes(sandbox: Sandbox, tmp_path: Path) -> None:
    secret = sandbox.access_key_secret
    config = EcsConfig.from_env({**sandbox.environment(), "ALIBABA_CLOUD_ACCESS_KEY_ID": "LTAInosuchkeyid"},
                                known_hosts=str(tmp_path / "known_hosts"), api_attempts=1)  # fmt: skip
    with Fleet(config) as fleet, pytest.raises(EcsApiError) as caught:
        fleet.find()
    error = caught.value
    assert error.code == "InvalidAccessKeyId.NotFound"
    shown = [str(error), repr(error), repr(vars(error)), "".join(traceback.format_exception(error))]
    shown += [repr(config), repr(fleet), repr(fleet.ecs)]
    assert all(secret not in text for text in shown)


# -- an existing private key is never overwritten --------------------------------------------


@pytest.fixture
def clash(sandbox: Sandbox, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A key pair in ECS, and under its name in the key folder a different private key."""
    name = unique("clash")
    client = new_client(sandbox)
    client.create_key_pair(ecs.CreateKeyPairRequest(region_id=sandbox.region_id, key_pair_name=name))
    path = tmp_path / ".ssh" / name
    path.parent.mkdir(mode=0o700)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    yield name, path
    client.delete_key_pairs(ecs.DeleteKeyPairsRequest(region_id=sandbox.region_id, key_pair_names=json.dumps([name])))


def test_a_different_existing_key_file_is_never_overwritten_by_the_command_or_the_magic(
    sandbox: Sandbox, clash: tuple[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    name, path = clash
    before = path.read_bytes()
    with creates_nothing(sandbox):
        done = pymlsql(environment(sandbox, tmp_path), "start", "--image-id", WEBUSER_IMAGE, "--key-pair-name", name,
                       "--init-ssh-key", "true")  # fmt: skip
        for variable, value in sandbox.environment().items():
            monkeypatch.setenv(variable, value)
        shell = magics_shell(tmp_path, key_dir=path.parent)
        error = shell.run_cell(f"%ecs_start --image-id {WEBUSER_IMAGE} --key-pair-name {name} --init-ssh-key")
    first, hint = hinted_error(done, exit_code=2)
    assert isinstance(error.error_in_exec, UsageError)
    for message in (f"{first}\n{hint}", str(error.error_in_exec)):
        assert str(path) in message and "never overwritten" in message
    assert path.read_bytes() == before and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([name, f"{name}.pub"])
