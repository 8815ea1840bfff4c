"""The magics in a real Jupyter kernel: widgets carry a text record, and an interrupt ends remote scripts."""

from __future__ import annotations

import os
import queue
import subprocess
import time

import pytest
from jupyter_client.manager import start_new_kernel

from .helpers import unique, wait_for


@pytest.fixture
def kernel(sandbox, tmp_path):
    env = {**os.environ, **sandbox.environment(), "HOME": str(tmp_path)}
    manager, client = start_new_kernel(kernel_name="python3", env=env)
    try:
        yield manager, client
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def execute(client, code, timeout=120):
    """Runs `code`; returns (reply content, iopub messages of that request)."""
    msg_id = client.execute(code)
    messages = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            message = client.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"no answer from the kernel within {timeout} s") from None
        if message["parent_header"].get("msg_id") != msg_id:
            continue
        messages.append(message)
        if message["msg_type"] == "status" and message["content"]["execution_state"] == "idle":
            break
    return client.get_shell_msg(timeout=timeout)["content"], messages


def test_exec_in_a_kernel_shows_a_widget_with_a_text_record_and_ctrl_c_ends_the_remote_script(kernel):
    manager, kernel = kernel
    name = unique("kernel")
    reply, _ = execute(kernel, "%load_ext pymlsql_magics")
    assert reply["status"] == "ok"
    reply, messages = execute(kernel, f"nodes = %ecs_start --image-id m-sandbox-webuser --name {name} "
                                      f"--key-pair-name {name} --init-ssh-key")  # fmt: skip
    assert reply["status"] == "ok", reply
    views = [m for m in messages if m["msg_type"] in ("display_data", "update_display_data")]
    assert views and "application/vnd.jupyter.widget-view+json" in views[-1]["content"]["data"]
    assert "ssh ready" in views[-1]["content"]["data"]["text/plain"]

    reply, messages = execute(kernel, "%%ecs_exec nodes --user webuser\necho hello from $(whoami)")
    assert reply["status"] == "ok", reply
    records = [m["content"]["data"]["text/plain"] for m in messages if m["msg_type"] == "update_display_data"]
    assert records and "hello from webuser" in records[-1] and "exit 0" in records[-1]

    marker = "sleep 4545.25"
    msg_id = kernel.execute(f"%%ecs_exec nodes\necho started\n{marker}")
    wait_for(lambda: _remote_processes(marker), timeout=30, what="the remote sleep to start")
    manager.interrupt_kernel()  # what the notebook's stop button does
    reply = kernel.get_shell_msg(timeout=60)
    assert reply["parent_header"]["msg_id"] == msg_id
    assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt"
    wait_for(lambda: not _remote_processes(marker), timeout=15, what="the remote sleep to end")

    reply, _ = execute(kernel, "%ecs_stop nodes")
    assert reply["status"] == "ok"


def _remote_processes(pattern: str) -> list[str]:
    return subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
