"""Setup scripts that run once per instance (`--once`, `--force`) through the CLI and the magics,
with the record on the instance as the witness."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pymlsql_magics.sandbox import Sandbox

from .helpers import environment, hinted_error, magics_shell, pymlsql, unique

WEBUSER_IMAGE = "m-sandbox-webuser"


@pytest.fixture(scope="module")
def pair(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, str], list[str]]]:
    home = tmp_path_factory.mktemp("once-home")
    (home / ".ssh").mkdir(mode=0o700)
    env = environment(sandbox, home)
    name = unique("once")
    done = pymlsql(env, "start", "--image-id", WEBUSER_IMAGE, "--name", name, "--count", "2", "--key-pair-name",
                   name, "--init-ssh-key", "true")  # fmt: skip
    assert done.returncode == 0, done.stderr
    ids = [line.split(":", 1)[1] for line in done.stdout.splitlines() if line.startswith("instance_id:")]
    try:
        yield env, ids
    finally:
        assert pymlsql(env, "stop", "--name", name).returncode == 0


def script_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / f"{unique('script')}.sh"
    path.write_text(text)
    return str(path)


def runs(env: dict[str, str], instance_id: str, tmp_path: Path, counter: str) -> int:
    done = pymlsql(env, "exec-shell", "--instance-id", instance_id, "--execute-user", "webuser", "--script-file",
                   script_file(tmp_path, f"cat {counter} 2>/dev/null | wc -l\n"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip())


def test_exec_shell_once_runs_a_script_once_per_instance_and_force_runs_it_again(
    pair: tuple[dict[str, str], list[str]], tmp_path: Path
) -> None:
    env, ids = pair
    counter = f"runs-{unique('c')}"
    setup = script_file(tmp_path, f"echo ran >> {counter}\necho set up\n")
    flags = ["exec-shell", "--instance-id", *ids, "--execute-user", "webuser", "--script-file", setup]

    first = pymlsql(env, *flags, "--once")
    assert first.returncode == 0 and first.stdout.count("set up") == 2, first.stderr
    again = pymlsql(env, *flags, "--once")
    assert again.returncode == 0 and "set up" not in again.stdout, again.stdout
    for instance_id in ids:
        assert f"{instance_id}: already done (at 20" in again.stderr and "--force runs it again" in again.stderr
        assert runs(env, instance_id, tmp_path, counter) == 1

    # Another user or environment is another script; --force runs it anyway.
    other = pymlsql(env, *flags, "--once", "--env", "STAGE=2")
    assert other.returncode == 0 and other.stdout.count("set up") == 2
    forced = pymlsql(env, *flags, "--once", "--force")
    assert forced.returncode == 0 and forced.stdout.count("set up") == 2
    assert all(runs(env, instance_id, tmp_path, counter) == 3 for instance_id in ids)

    # The record lives on the instance, in the user's home.
    listing = pymlsql(env, "exec-shell", "--instance-id", ids[0], "--execute-user", "webuser", "--script-file",
                      script_file(tmp_path, "ls ~/.pymlsql/once | wc -l\n"))  # fmt: skip
    assert int(listing.stdout.strip()) >= 2


def test_a_cell_rerun_with_once_after_a_failure_runs_only_where_it_failed(
    sandbox: Sandbox, pair: tuple[dict[str, str], list[str]], tmp_path: Path
) -> None:
    env, ids = pair
    failing, fine = ids
    marker = f"/tmp/{unique('broken')}"
    assert pymlsql(env, "exec-shell", "--instance-id", failing, "--script-file",
                   script_file(tmp_path, f"touch {marker}\n")).returncode == 0  # fmt: skip
    counter = f"cell-runs-{unique('c')}"
    cell = f"echo ran >> {counter}\nif [ -e {marker} ]; then echo broken >&2; exit 3; fi\necho ok\n"

    shell = magics_shell(tmp_path, key_dir=Path(env["HOME"]) / ".ssh")  # where the fixture's key pair is
    os.environ.update(sandbox.environment())
    try:
        from IPython.core.error import UsageError

        with pytest.raises(UsageError) as caught:
            shell.run_cell_magic("ecs_exec", f"{failing} {fine} --user webuser --once -o first", cell)
        assert "1 of 2" in str(caught.value) and failing in str(caught.value)

        assert pymlsql(env, "exec-shell", "--instance-id", failing, "--script-file",
                       script_file(tmp_path, f"rm {marker}\n")).returncode == 0  # the user fixes it  # fmt: skip
        shell.run_cell_magic("ecs_exec", f"{failing} {fine} --user webuser --once -o second", cell)
        second = shell.user_ns["second"]
        assert second[fine].done_at and second[fine].done_at.startswith("20")
        assert second[failing].done_at is None and second[failing].ok and "ok" in second[failing].stdout
    finally:
        for variable in sandbox.environment():
            os.environ.pop(variable, None)
    assert runs(env, failing, tmp_path, counter) == 2 and runs(env, fine, tmp_path, counter) == 1


def test_a_success_that_cannot_be_recorded_says_so(pair: tuple[dict[str, str], list[str]], tmp_path: Path) -> None:
    env, ids = pair
    blocked = pymlsql(env, "exec-shell", "--instance-id", ids[0], "--script-file",
                      script_file(tmp_path, "rm -rf ~webuser/.pymlsql && touch ~webuser/.pymlsql\n"))  # fmt: skip
    assert blocked.returncode == 0, blocked.stderr
    try:
        done = pymlsql(env, "exec-shell", "--instance-id", ids[0], "--execute-user", "webuser", "--once",
                       "--script-file", script_file(tmp_path, "echo did it\n"))  # fmt: skip
        first, hint = hinted_error(done)
        assert "did it" in done.stdout
        assert f"the script succeeded on {ids[0]}, but its --once record in ~webuser/.pymlsql/once could not be " \
               "written" in first, first  # fmt: skip
        assert "writable" in hint
    finally:
        pymlsql(env, "exec-shell", "--instance-id", ids[0], "--script-file",
                script_file(tmp_path, "rm -f ~webuser/.pymlsql\n"))  # fmt: skip
