"""EcsConfig layering, credentials that never show, the credential chain, and the sandbox fallback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from pymlsql_magics._embedded import with_sandbox_fallback
from pymlsql_magics.core import ConfigError, EcsApiError, EcsConfig, Fleet
from pymlsql_magics.core._api_calls import ApiCaller
from pymlsql_magics.core._ecs import EcsClient
from pymlsql_magics.sandbox import Sandbox
from pymlsql_magics.sandbox import stop as stop_sandbox

SECRET = "S3cr3t-never-shown"
TOKEN = "STS-token-never-shown"


def env(**values: str) -> dict[str, str]:
    return dict(values)


# -- layering ------------------------------------------------------------------------------


def test_defaults_apply_when_nothing_is_configured() -> None:
    config = EcsConfig.from_env({})
    assert (config.region_id, config.endpoint, config.credentials_source) == ("cn-hangzhou", None, "none")
    assert not config.has_credentials


def test_environment_credentials_region_and_endpoint_are_honored() -> None:
    config = EcsConfig.from_env(
        env(
            ALIBABA_CLOUD_ACCESS_KEY_ID="LTAIenv",
            ALIBABA_CLOUD_ACCESS_KEY_SECRET=SECRET,
            ALIBABA_CLOUD_REGION_ID="cn-shanghai",
            PYMLSQL_ECS_ENDPOINT="http://127.0.0.1:9",
        )
    )
    assert (config.access_key_id, config.access_key_secret) == ("LTAIenv", SECRET)
    assert (config.region_id, config.endpoint, config.credentials_source) == (
        "cn-shanghai",
        "http://127.0.0.1:9",
        "environment",
    )


def test_argument_beats_environment() -> None:
    environ = env(
        ALIBABA_CLOUD_ACCESS_KEY_ID="LTAIenv",
        ALIBABA_CLOUD_ACCESS_KEY_SECRET="env-secret",
        ALIBABA_CLOUD_REGION_ID="cn-shanghai",
        PYMLSQL_ECS_ENDPOINT="http://127.0.0.1:9",
    )
    config = EcsConfig.from_env(
        environ,
        region_id="cn-beijing",
        endpoint="http://127.0.0.1:8",
        access_key_id="LTAIarg",
        access_key_secret=SECRET,
    )
    assert (config.region_id, config.endpoint) == ("cn-beijing", "http://127.0.0.1:8")
    assert (config.access_key_id, config.access_key_secret, config.credentials_source) == (
        "LTAIarg",
        SECRET,
        "arguments",
    )


def test_argument_that_is_none_means_not_given() -> None:
    config = EcsConfig.from_env(env(ALIBABA_CLOUD_REGION_ID="cn-shanghai"), region_id=None, start_timeout=None)
    assert (config.region_id, config.start_timeout) == ("cn-shanghai", EcsConfig().start_timeout)


def test_environment_beats_seed_ak_and_aks() -> None:
    config = EcsConfig.from_env(
        env(
            AK="LTAIseed",
            AKS="seed-secret",
            ALIBABA_CLOUD_ACCESS_KEY_ID="LTAIenv",
            ALIBABA_CLOUD_ACCESS_KEY_SECRET=SECRET,
        )
    )
    assert (config.access_key_id, config.access_key_secret, config.credentials_source) == (
        "LTAIenv",
        SECRET,
        "environment",
    )


def test_seed_ak_and_aks_are_honored_without_alibaba_cloud_variables() -> None:
    config = EcsConfig.from_env(env(AK="LTAIseed", AKS=SECRET))
    assert (config.access_key_id, config.access_key_secret, config.credentials_source) == (
        "LTAIseed",
        SECRET,
        "AK/AKS",
    )


def test_security_token_comes_from_the_environment_with_its_key() -> None:
    config = EcsConfig.from_env(
        env(
            ALIBABA_CLOUD_ACCESS_KEY_ID="STS.id",
            ALIBABA_CLOUD_ACCESS_KEY_SECRET=SECRET,
            ALIBABA_CLOUD_SECURITY_TOKEN=TOKEN,
        )
    )
    assert config.security_token == TOKEN


def test_unknown_setting_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown setting.*colour"):
        EcsConfig.from_env({}, colour="blue")


def test_key_id_without_secret_is_a_config_error_that_does_not_echo_the_key() -> None:
    with pytest.raises(ConfigError) as caught:
        EcsConfig.from_env({}, access_key_id="LTAIonly-the-id")
    assert "LTAIonly-the-id" not in str(caught.value)
    assert "Hint:" in str(caught.value)
    assert caught.value.exit_code == 2


@pytest.mark.parametrize(
    "setting", [{"max_parallel": 0}, {"start_timeout": 0.0}, {"ssh_connect_timeout": -1.0}, {"api_attempts": 0}]
)
def test_out_of_range_settings_are_config_errors(setting: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        EcsConfig.from_env({}, **setting)


def test_paths_expand_the_home_directory() -> None:
    config = EcsConfig.from_env({}, known_hosts="~/kh", key_dir="~/keys")
    assert config.known_hosts_path() == Path(os.environ["HOME"]) / "kh"
    assert config.key_path("k1") == Path(os.environ["HOME"]) / "keys" / "k1"


# -- secrets never show --------------------------------------------------------------------


def secret_config(**extra: Any) -> EcsConfig:
    return EcsConfig.from_env(
        env(
            ALIBABA_CLOUD_ACCESS_KEY_ID="LTAIshown-is-fine",
            ALIBABA_CLOUD_ACCESS_KEY_SECRET=SECRET,
            ALIBABA_CLOUD_SECURITY_TOKEN=TOKEN,
        ),
        **extra,
    )


def test_secrets_are_absent_from_the_repr_and_str_of_config_fleet_and_client(tmp_path: Path) -> None:
    config = secret_config(endpoint="http://127.0.0.1:9", known_hosts=str(tmp_path / "kh"))
    with Fleet(config) as fleet:
        shown = [repr(config), str(config), repr(fleet), str(fleet), repr(fleet.ecs), str(fleet.ecs)]
    assert "cn-hangzhou" in shown[0] and "127.0.0.1:9" in shown[2]
    for text in shown:
        assert SECRET not in text and TOKEN not in text


class Recorder(BaseHTTPRequestHandler):
    """An HTTP endpoint that records each request's headers and answers with a chosen ECS error."""

    answers: list[tuple[int, dict[str, Any]]] = []
    seen: list[dict[str, str]] = []

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("content-length") or 0))
        type(self).seen.append({k.lower(): v for k, v in self.headers.items()})
        status, body = type(self).answers[min(len(type(self).seen), len(type(self).answers)) - 1]
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json;charset=utf-8")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture
def recorder() -> Iterator[tuple[str, type[Recorder]]]:
    handler = type("Handler", (Recorder,), {"answers": [], "seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()
    thread.join()


def ecs_error(code: str, message: str = "denied", request_id: str = "REQ-1") -> dict[str, Any]:
    return {
        "RequestId": request_id,
        "HostId": "ecs.aliyuncs.com",
        "Code": code,
        "Message": message,
        "Recommend": f"https://api.aliyun.com/troubleshoot?q={code}",
    }


def test_security_token_is_sent_and_secrets_stay_out_of_api_errors(recorder: tuple[str, type[Recorder]]) -> None:
    endpoint, handler = recorder
    handler.answers = [(404, ecs_error("InvalidAccessKeyId.NotFound", "Specified access key is not found."))]
    client = EcsClient(secret_config(endpoint=endpoint, api_attempts=1))

    with pytest.raises(EcsApiError) as caught:
        client.describe()

    (headers,) = handler.seen
    assert headers["x-acs-security-token"] == TOKEN
    assert "LTAIshown-is-fine" in headers["authorization"]
    error = caught.value
    assert (error.code, error.request_id, error.api_message) == (
        "InvalidAccessKeyId.NotFound",
        "REQ-1",
        "Specified access key is not found.",
    )
    assert error.hint and "ALIBABA_CLOUD_ACCESS_KEY_ID" in error.hint
    assert SECRET not in str(error) and TOKEN not in str(error)
    assert SECRET not in repr(error) and TOKEN not in repr(error)


def test_server_errors_are_retried_with_growing_backoff_then_raised(recorder: tuple[str, type[Recorder]]) -> None:
    endpoint, handler = recorder
    handler.answers = [(503, ecs_error("ServiceUnavailable", "busy", f"REQ-{n}")) for n in range(1, 5)]
    sleeps: list[float] = []
    client = caller(secret_config(endpoint=endpoint, api_attempts=4), sleep=sleeps.append, jitter=lambda: 1.0)

    with pytest.raises(EcsApiError) as caught:
        client.describe()

    assert len(handler.seen) == 4
    assert sleeps == [0.5, 1.0, 2.0]
    assert (caught.value.code, caught.value.request_id) == ("ServiceUnavailable", "REQ-4")
    assert "after 4 attempts" in str(caught.value) and caught.value.hint


class FakeClock:
    """A monotonic clock that moves only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_a_call_still_processing_is_asked_again_every_second_until_its_answer(
    recorder: tuple[str, type[Recorder]],
) -> None:
    endpoint, handler = recorder
    empty = {"RequestId": "OK-1", "Instances": {"Instance": []}, "TotalCount": 0}
    handler.answers = [(403, ecs_error("IdempotentProcessing")) for _ in range(7)] + [(200, empty)]
    clock = FakeClock()
    client = caller(secret_config(endpoint=endpoint, api_attempts=2), sleep=clock.sleep, clock=clock)

    assert client.describe() == []

    # Not bounded by api_attempts: the first call's answer is what ends the wait.
    assert clock.sleeps == [1.0] * 7 and len(handler.seen) == 8


def test_a_release_refused_while_initializing_is_waited_out_for_two_minutes_then_named(
    recorder: tuple[str, type[Recorder]],
) -> None:
    endpoint, handler = recorder
    handler.answers = [(403, ecs_error("IncorrectInstanceStatus.Initializing", "initializing"))]
    clock = FakeClock()
    client = caller(secret_config(endpoint=endpoint), sleep=clock.sleep, clock=clock)

    with pytest.raises(EcsApiError) as caught:
        client.delete(["i-first", "i-second"])

    assert sum(clock.sleeps) == pytest.approx(120.0) and set(clock.sleeps) == {1.0}
    assert caught.value.code == "IncorrectInstanceStatus.Initializing"
    assert "(InstanceId i-first, i-second, region cn-hangzhou)" in str(caught.value)
    assert "finished initializing" in (caught.value.hint or "")


def test_jitter_spreads_each_backoff_below_its_cap(recorder: tuple[str, type[Recorder]]) -> None:
    endpoint, handler = recorder
    empty = {"RequestId": "OK-1", "Instances": {"Instance": []}, "TotalCount": 0}
    handler.answers = [(400, ecs_error("Throttling.User")), (400, ecs_error("Throttling.User")), (200, empty)]
    sleeps: list[float] = []
    jitters = iter([0.25, 0.5])
    client = caller(secret_config(endpoint=endpoint), sleep=sleeps.append, jitter=lambda: next(jitters))

    assert client.describe() == []

    assert sleeps == [0.25 * 0.5, 0.5 * 1.0]


def test_an_endpoint_that_does_not_answer_is_an_api_error_with_a_hint() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sleeps: list[float] = []
    client = caller(secret_config(endpoint=f"http://127.0.0.1:{port}", api_attempts=2), sleep=sleeps.append)

    with pytest.raises(EcsApiError) as caught:
        client.describe()

    assert caught.value.code == "NoResponse"
    assert "after 2 attempts" in str(caught.value) and "PYMLSQL_ECS_ENDPOINT" in str(caught.value)
    assert len(sleeps) == 1
    assert SECRET not in str(caught.value)


def test_a_client_without_any_credentials_is_a_config_error_pointing_at_the_sandbox() -> None:
    with pytest.raises(ConfigError) as caught:
        EcsClient(EcsConfig.from_env({}))
    assert "no Alibaba Cloud credentials" in str(caught.value)
    assert "pymlsql sandbox start" in str(caught.value)


# -- the credential chain ------------------------------------------------------------------


def write_cli_profile(home: Path, key_id: str, secret: str) -> Path:
    path = home / ".aliyun" / "config.json"
    path.parent.mkdir(parents=True)
    profile = {"name": "default", "mode": "AK", "access_key_id": key_id, "access_key_secret": secret,
               "region_id": "cn-hangzhou"}  # fmt: skip
    path.write_text(json.dumps({"current": "default", "profiles": [profile]}))
    return path


def test_an_aliyun_cli_profile_in_home_is_detected_as_the_credential_chain() -> None:
    home = Path(os.environ["HOME"])
    assert EcsConfig.from_env({"HOME": str(home)}).credentials_source == "none"
    write_cli_profile(home, "LTAIchain", SECRET)

    config = EcsConfig.from_env({"HOME": str(home)})

    assert config.credentials_source == "credential chain" and config.has_credentials
    assert config.access_key_id is None  # the SDK's chain reads it, not us


def test_a_credentials_file_variable_is_detected_as_the_credential_chain(tmp_path: Path) -> None:
    config = EcsConfig.from_env({"HOME": str(tmp_path), "ALIBABA_CLOUD_CREDENTIALS_FILE": str(tmp_path / "c.ini")})
    assert config.credentials_source == "credential chain"


def test_environment_keys_beat_the_credential_chain() -> None:
    write_cli_profile(Path(os.environ["HOME"]), "LTAIchain", "chain-secret")
    config = EcsConfig.from_env({"ALIBABA_CLOUD_ACCESS_KEY_ID": "LTAIenv", "ALIBABA_CLOUD_ACCESS_KEY_SECRET": SECRET})
    assert (config.access_key_id, config.credentials_source) == ("LTAIenv", "environment")


CHAIN_PROBE = """
from pymlsql_magics.core import EcsConfig, Fleet
config = EcsConfig.from_env()
with Fleet(config) as fleet:
    found = fleet.find()
print(config.credentials_source, len(found))
"""


def test_fleet_reaches_ecs_with_keys_found_by_the_credential_chain(sandbox: Sandbox) -> None:
    home = Path(os.environ["HOME"])
    write_cli_profile(home, sandbox.access_key_id, sandbox.access_key_secret)
    environ = {"PATH": os.environ["PATH"], "HOME": str(home), "PYMLSQL_ECS_ENDPOINT": sandbox.endpoint,
               "ALIBABA_CLOUD_ECS_METADATA_DISABLED": "true"}  # fmt: skip

    done = subprocess.run([sys.executable, "-c", CHAIN_PROBE], env=environ, capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0:2] == ["credential", "chain"]


# -- the sandbox fallback of the faces -----------------------------------------------------


def test_config_with_credentials_is_used_as_is_without_a_word() -> None:
    config = secret_config()
    said: list[str] = []
    assert with_sandbox_fallback(config, said.append) is config
    assert said == []


def test_without_credentials_the_faces_start_a_sandbox_under_home_and_say_so_loudly() -> None:
    home = Path(os.environ["HOME"])
    state_dir = home / ".pymlsql" / "sandbox"
    said: list[str] = []
    try:
        config = with_sandbox_fallback(EcsConfig.from_env({"HOME": str(home)}), said.append)

        info = json.loads((state_dir / "server.json").read_text())
        assert config.endpoint == info["endpoint"]
        assert config.credentials_source == "local sandbox" and config.access_key_secret
        (message,) = said
        assert message.startswith("NO ALIBABA CLOUD CREDENTIALS FOUND")
        assert info["endpoint"] in message and "started it" in message
        assert config.access_key_secret not in message and config.access_key_secret not in repr(config)
        with Fleet(config.with_changes(known_hosts=str(home / "kh"))) as fleet:
            assert fleet.find() == []

        again = with_sandbox_fallback(EcsConfig.from_env({"HOME": str(home)}), said.append)
        assert again.endpoint == config.endpoint
        assert "already running" in said[1]
    finally:
        stop_sandbox(state_dir)
    assert not (state_dir / "server.json").exists()


# -- architecture --------------------------------------------------------------------------


def test_core_imports_without_ipython_widgets_or_the_sandbox() -> None:
    probe = (
        "import sys, pymlsql_magics.core\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('IPython', 'ipywidgets')"
        " or m.startswith('pymlsql_magics.sandbox')]\n"
        "sys.exit(str(bad) if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_every_name_in_core_all_exists_once() -> None:
    import pymlsql_magics.core as core

    assert len(set(core.__all__)) == len(core.__all__)
    assert [name for name in core.__all__ if not hasattr(core, name)] == []


def caller(config: EcsConfig, **clock: Any) -> EcsClient:
    """An EcsClient whose retries wait on `clock`'s fake sleep and jitter instead of real time."""
    return EcsClient(config, call=ApiCaller(config, **clock))


def test_an_api_refusal_names_the_values_given_and_the_region_but_never_user_data() -> None:
    from pymlsql_magics.core._api_calls import _offending

    given = {"RegionId": "cn-hangzhou", "ImageId": "nope-image-123", "UserData": "c2VjcmV0LXRva2Vu",
             "InstanceType": "ecs.g7.large", "ZoneId": "cn-hangzhou-i"}  # fmt: skip
    assert _offending("InvalidImageId.NotFound", given) == " (ImageId nope-image-123, region cn-hangzhou)"
    assert _offending("OperationDenied.NoStock", given) == (
        " (InstanceType ecs.g7.large, ZoneId cn-hangzhou-i, region cn-hangzhou)"
    )
    assert _offending("InvalidUserData.SizeExceeded", given) == " (region cn-hangzhou)"
    assert _offending("MissingVSwitchId", given) == " (region cn-hangzhou)"  # not given: nothing to name
    assert _offending("InvalidRegionId.NotFound", {"RegionId": "xx-1"}) == " (RegionId xx-1)"
