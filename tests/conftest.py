"""Fixtures: a real sandbox (ECS API over HTTP, sshd instances) and the official SDK pointed at it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from alibabacloud_ecs20140526 import models as ecs
from alibabacloud_ecs20140526.client import Client

from pymlsql_magics.sandbox import Sandbox, Timings

from .helpers import new_client, unique

FAST = Timings(pending=0.3, starting=0.3, stopping=0.3, boot=0.3, auto_release_lead=0)
_USER_SETTINGS = (
    "ALIBABA_CLOUD_ACCESS_KEY_ID",
    "ALIBABA_CLOUD_ACCESS_KEY_SECRET",
    "ALIBABA_CLOUD_SECURITY_TOKEN",
    "ALIBABA_CLOUD_REGION_ID",
    "ALIBABA_CLOUD_PROFILE",
    "ALIBABA_CLOUD_CREDENTIALS_FILE",
    "PYMLSQL_ECS_ENDPOINT",
    "PYMLSQL_SANDBOX_DIR",
    "PYMLSQL_METADATA_ENDPOINT",
    "AK",
    "AKS",
    "MLSQL_KEY_PARE_NAME",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "http_proxy",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
)


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never read the developer's settings, keys or proxies."""
    for name in _USER_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("home")))
    # Whatever machine runs the tests, no test may send a packet to a metadata service.
    monkeypatch.setenv("PYMLSQL_METADATA_ENDPOINT", "off")


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """The suite's sandbox, its network enforced as on ECS but for the public bandwidth caps: its tests
    check what the tool does, not how fast a 10 Mbit/s link is. tests/test_sandbox_wire.py checks the
    caps, and the runbooks run on a sandbox with them."""
    with Sandbox(tmp_path_factory.mktemp("sandbox"), timings=FAST, bandwidth_caps=False).start() as running:
        yield running
        # Every test releases what it created, even when it fails: a leak here is a failure.
        left = [(i["InstanceId"], i["Status"]) for i in running.status()["instances"]]
        assert not left, f"the tests left {len(left)} instance(s) in the sandbox: {left}"


@pytest.fixture
def cleared(faulty: Sandbox) -> Iterator[Sandbox]:
    """The module's own `faulty` sandbox with no fault set, before and after the test."""
    faulty.fault({"clear": True})
    yield faulty
    faulty.fault({"clear": True})


@pytest.fixture
def client(sandbox: Sandbox) -> Client:
    return new_client(sandbox)


@pytest.fixture
def region(sandbox: Sandbox) -> str:
    return sandbox.region_id


@pytest.fixture
def key_pair(client: Client, region: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A new key pair: its name, and its private key saved with mode 600."""
    name = unique("key")
    body = client.create_key_pair(ecs.CreateKeyPairRequest(region_id=region, key_pair_name=name)).body
    path = tmp_path / name
    path.write_text(body.private_key_body)
    path.chmod(0o600)
    yield name, path
    client.delete_key_pairs(ecs.DeleteKeyPairsRequest(region_id=region, key_pair_names=json.dumps([name])))


@pytest.fixture
def launched(client: Client, region: str) -> Iterator[list[str]]:
    """Instance ids a test adds here are force-released when it ends, whatever happened."""
    ids: list[str] = []
    yield ids
    for instance_id in ids:
        try:
            client.delete_instance(ecs.DeleteInstanceRequest(instance_id=instance_id, force=True))
        except Exception as error:  # noqa: BLE001 - released by the test itself
            assert "InvalidInstanceId.NotFound" in str(error), error


@pytest.fixture(scope="session", autouse=True)
def no_agent_left(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Commands run through the CLI start a background agent in the test's home; none outlives the suite."""
    yield
    from pymlsql_magics.agent.control import stop_all

    for home in tmp_path_factory.getbasetemp().iterdir():
        stop_all(home)
