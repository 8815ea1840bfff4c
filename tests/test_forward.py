"""Port forwards to instances over their SSH connection: the core's Fleet.forward and %ecs_forward.

Only port 22 is open to this machine; the service forwarded to listens on the instance's loopback.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from pymlsql_magics.core import EcsConfig, Fleet, Instance, SshError
from pymlsql_magics.sandbox import Sandbox

from .helpers import magics_shell, unique, wait_for

DEBIAN = "debian_12_x64_20G_alibase_20240101.vhd"
SERVE = ("mkdir -p /root/site && echo hello-from-$(hostname) > /root/site/index.html && cd /root/site && "
         "(setsid python3 -m http.server {port} --bind 127.0.0.1 >/dev/null 2>&1 < /dev/null &) && "
         "timeout 10 bash -c 'until </dev/tcp/127.0.0.1/{port}; do sleep 0.1; done' 2>/dev/null")  # fmt: skip


@pytest.fixture(scope="module")
def served(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Fleet, Instance]]:
    """One instance with a web server on 127.0.0.1:8080 (and its hostname as the page)."""
    home = tmp_path_factory.mktemp("forward-home")
    config = EcsConfig.from_env(sandbox.environment(), known_hosts=str(home / "known_hosts"),
                                key_dir=str(home / "keys"))  # fmt: skip
    with Fleet(config) as fleet:
        name = unique("fwd")
        (instance,) = fleet.start(image_id=DEBIAN, name=name, key_pair_name=name, init_ssh_key=True)
        try:
            fleet.exec([instance], SERVE.format(port=8080))
            yield fleet, instance
        finally:
            fleet.stop([instance])


def page(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return str(answer.read().decode())


def test_a_forward_carries_a_local_port_to_the_instance_through_ssh(served: tuple[Fleet, Instance]) -> None:
    fleet, instance = served
    forward = fleet.forward(instance, 8080)
    try:
        assert forward.url == f"http://127.0.0.1:{forward.local_port}/"
        assert page(forward.url) == f"hello-from-{instance.hostname}\n"
        # A browser opens dozens of connections at once.
        with ThreadPoolExecutor(24) as pool:
            pages = list(pool.map(lambda _: page(forward.url), range(48)))
        assert set(pages) == {f"hello-from-{instance.hostname}\n"}
        assert forward in fleet.forwards()
    finally:
        forward.close()
    assert forward not in fleet.forwards()
    with pytest.raises(OSError):
        page(forward.url)


def test_a_forward_to_a_port_nobody_listens_on_fails_naming_instance_and_port(served: tuple[Fleet, Instance]) -> None:
    fleet, instance = served
    with pytest.raises(SshError) as raised:
        fleet.forward(instance, 8099)
    first, hint = str(raised.value).split("\nHint: ")
    assert first.startswith(f"nothing answers on 127.0.0.1:8099 as seen from {instance.instance_id}")
    assert "listening" in hint
    assert fleet.forwards() == []


def test_a_forward_outlives_a_broken_ssh_connection(sandbox: Sandbox, served: tuple[Fleet, Instance]) -> None:
    fleet, instance = served
    forward = fleet.forward(instance, 8080)
    try:
        sandbox.fault({"kill_ssh": instance.instance_id})  # every session dies, the web server too
        wait_for(lambda: fleet.exec([instance], SERVE.format(port=8080), check=False).succeeded, timeout=30,
                 interval=0.3, what="SSH and the web server back")  # fmt: skip
        assert page(forward.url) == f"hello-from-{instance.hostname}\n"
    finally:
        forward.close()


def test_the_magic_opens_lists_and_stops_forwards(
    sandbox: Sandbox, served: tuple[Fleet, Instance], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    fleet, instance = served
    for name, value in sandbox.environment().items():
        monkeypatch.setenv(name, value)
    shell = magics_shell(tmp_path, key_dir=Path(fleet.config.key_dir))
    shell.user_ns["known"] = instance
    try:
        run = shell.run_line_magic
        link: Any = run("ecs_forward", "known 8080 -o site")
        forward = shell.user_ns["site"]
        assert link._repr_html_() == f'<a href="{forward.url}" target="_blank">{forward.url}</a>'
        assert page(forward.url) == f"hello-from-{instance.hostname}\n"
        capsys.readouterr()
        run("ecs_forward", "--list")
        assert capsys.readouterr().out == f"{forward.url} -> {instance.instance_id} 127.0.0.1:8080\n"
        run("ecs_forward", f"--stop {forward.local_port}")
        assert forward.closed
        result = shell.run_cell("%ecs_forward known 8099")
        assert result.error_in_exec is not None
        assert "nothing answers on 127.0.0.1:8099" in str(result.error_in_exec)
    finally:
        shell.user_ns.clear()


# -- pymlsql forward: the same, from a shell -----------------------------------------------------


def test_pymlsql_forward_carries_a_port_until_ctrl_c_and_refuses_bad_ports(sandbox: Sandbox, tmp_path: Path) -> None:
    import signal
    import subprocess

    from .helpers import PYMLSQL, environment, hinted_error, pymlsql

    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    env = environment(sandbox, home)
    name = unique("cli-fwd")
    done = pymlsql(env, "start", "--image-id", DEBIAN, "--name", name, "--key-pair-name", name,
                   "--init-ssh-key", "true")  # fmt: skip
    assert done.returncode == 0, done.stderr
    [instance_id] = [line.split(":", 1)[1] for line in done.stdout.splitlines() if line.startswith("instance_id:")]
    try:
        script = tmp_path / "serve.sh"
        script.write_text(SERVE.format(port=8081) + "\n")
        served = pymlsql(env, "exec-shell", "--instance-id", instance_id, "--script-file", str(script))
        assert served.returncode == 0, served.stderr

        with subprocess.Popen([PYMLSQL, "forward", "--instance-id", instance_id, "--remote-port", "8081"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:  # fmt: skip
            assert process.stdout is not None
            url = process.stdout.readline().strip()
            assert url.startswith("http://127.0.0.1:") and url.endswith("/"), url
            assert page(url).startswith("hello-from-")
            process.send_signal(signal.SIGINT)
            _, said = process.communicate(timeout=30)
        assert process.returncode == 0, said
        assert f"forwarding {url} to 8081 on {instance_id}; Ctrl-C stops it" in said and "forward closed" in said
        with pytest.raises(OSError):
            page(url)

        nobody = pymlsql(env, "forward", "--instance-id", instance_id, "--remote-port", "8099")
        first, hint = hinted_error(nobody, exit_code=1)
        assert f"nothing answers on 127.0.0.1:8099 as seen from {instance_id}" in first and "listening" in hint
        for flag, value in (("--remote-port", "70000"), ("--local-port", "0"), ("--remote-port", "http")):
            bad = pymlsql(env, "forward", "--instance-id", instance_id, "--remote-port", "8081", flag, value)
            assert bad.returncode == 2 and "a port is a number from 1 to 65535" in bad.stderr, bad.stderr
    finally:
        assert pymlsql(env, "stop", "--name", name).returncode == 0


def test_a_port_out_of_range_is_refused_by_the_core_and_the_magic(served: tuple[Fleet, Instance]) -> None:
    from pymlsql_magics.core import ConfigError

    fleet, instance = served
    with pytest.raises(ConfigError) as raised:
        fleet.forward(instance, 70000)
    assert str(raised.value).startswith("the remote port 70000 is not a port: a port is a number from 1 to 65535")
    with pytest.raises(ConfigError, match="the local port 0 is not a port"):
        fleet.forward(instance, 8080, 0)
    assert fleet.forwards() == []
