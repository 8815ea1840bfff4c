"""The one table of start settings: both faces offer every setting under the same name."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from IPython.core.magic_arguments import construct_parser

from pymlsql_magics.cli import build_parser
from pymlsql_magics.core import SETTINGS, ConfigError, LaunchSpec, launch_spec, start_arguments
from pymlsql_magics.magics import EcsMagics


def options(parser: argparse.ArgumentParser) -> dict[str, set[str]]:
    return {action.dest: set(action.option_strings) for action in parser._actions if action.option_strings}


def cli_start() -> argparse.ArgumentParser:
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices["start"]


def test_every_start_setting_is_a_flag_of_both_faces_with_one_name() -> None:
    cli, magic = options(cli_start()), options(construct_parser(EcsMagics.ecs_start))
    for setting in SETTINGS:
        assert setting.flag in cli[setting.name] and setting.flag in magic[setting.name], setting
        assert setting.flag == "--" + setting.name.replace("_", "-") or setting.kind in ("list", "pairs")
    # Today's other spellings stay, each on the face that had it.
    assert "--vswitch" in cli["vswitch_id"] and "--user-data-file" in cli["user_data"]
    assert "--timeout" in magic["start_timeout"]
    assert "--ssh-cidr" in cli["ssh_source_cidr"] and "--ssh-cidr" in magic["ssh_source_cidr"]


def test_every_configurable_setting_is_a_trait_with_the_spec_default() -> None:
    traits = EcsMagics.class_traits(config=True)
    for setting in SETTINGS:
        if setting.configurable:
            assert traits[setting.name].default_value == getattr(LaunchSpec(), setting.name), setting.name


def parse(words: list[str]) -> dict[str, object]:
    parser = argparse.ArgumentParser()
    for flags, keywords in start_arguments("cli"):
        parser.add_argument(*flags, **keywords)
    return vars(parser.parse_args(words))


def test_flags_become_a_spec_over_configured_defaults(tmp_path: Path) -> None:
    data = tmp_path / "user-data.sh"
    data.write_text("#!/bin/sh\necho hi\n")
    spec = launch_spec(
        parse(["--count", "3", "--vswitch", "vsw-1", "--need-public-ip", "--init-ssh-key", "false",
               "--tag", "a=1", "--tag", "b=x=y", "--ttl", "1h30m", "--user-data-file", str(data),
               "--instance-id", "i-1", "--instance-id", "i-2"]),
        {"zone": "cn-hangzhou-k", "vswitch_id": "vsw-configured", "instance_type": None},
    )  # fmt: skip
    assert (spec.count, spec.vswitch_id, spec.zone, spec.instance_type) == (3, "vsw-1", "cn-hangzhou-k",
                                                                            "ecs.g7.large")  # fmt: skip
    assert (spec.need_public_ip, spec.init_ssh_key, spec.ttl) == (True, False, 5400.0)
    assert dict(spec.tags) == {"a": "1", "b": "x=y"} and spec.instance_ids == ("i-1", "i-2")
    assert spec.user_data == "#!/bin/sh\necho hi\n"


UNREADABLE = "cannot read the user data file /no/such"


@pytest.mark.parametrize(
    ("words", "message", "hint"),
    [
        (["--user-data-file", "/no/such"], f"{UNREADABLE}: No such file or directory", "Check --user-data-file."),
        (["--user-data", "/no/such"], f"{UNREADABLE}: No such file or directory", "Check --user-data."),
        (["--tag", "novalue"], "--tag must be KEY=VALUE, got 'novalue'", "e.g. --tag team=ml"),
        (["--ttl", "soon"], "--ttl: expected a duration like 30m, 2h or 1d, got 'soon'", "e.g. --ttl 2h"),
        (["--count", "0"], "count must be at least 1, got 0", "Pass --count 1 or more."),
    ],
)
def test_a_value_that_cannot_be_read_is_named_with_the_flag_as_typed(words: list[str], message: str,
                                                                      hint: str) -> None:  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        launch_spec(parse(words))
    assert str(caught.value) == f"{message}\nHint: {hint}"


def test_a_spec_refuses_an_unknown_spot_strategy() -> None:
    with pytest.raises(ConfigError, match="unknown spot strategy 'Cheap'"):
        LaunchSpec(spot_strategy="Cheap")
