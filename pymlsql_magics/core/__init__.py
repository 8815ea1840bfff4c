"""The core of pymlsql_magics: ECS operations, SSH, keys and configuration. Never imports IPython.

Names load on first use (PEP 562): `pymlsql --help` must not pay for the SDK and SSH libraries.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._config import CredentialsSource, EcsConfig, parse_duration
    from ._costs import Cost, Price
    from ._errors import (
        ConfigError,
        CopyError,
        EcsApiError,
        FleetError,
        HostKeyMismatchError,
        InstanceStateError,
        PymlsqlError,
        SshError,
        WaitTimeoutError,
    )
    from ._face import Face
    from ._fleet import CREATED_BY, NAME_TAG, Fleet
    from ._launch import SETTINGS, LaunchSpec, Setting, launch_spec, parse_flag, parse_pairs, start_arguments
    from ._network import Network
    from ._network_inventory import ToolNetwork, network_as_json, network_line
    from ._output import ConsoleSink, LogSink, NullSink, OutputSink, StreamDecoder, StreamName, TeeSink
    from ._reclaims import InstanceReclaimedError
    from ._results import CopyResult, ExecResult, FleetResult, Instance, InstanceList, naming

# name -> the module of this package that defines it
_WHERE = {
    "CredentialsSource": "._config",
    "EcsConfig": "._config",
    "parse_duration": "._config",
    "Cost": "._costs",
    "Price": "._costs",
    "ConfigError": "._errors",
    "CopyError": "._errors",
    "EcsApiError": "._errors",
    "FleetError": "._errors",
    "HostKeyMismatchError": "._errors",
    "InstanceStateError": "._errors",
    "PymlsqlError": "._errors",
    "SshError": "._errors",
    "WaitTimeoutError": "._errors",
    "Face": "._face",
    "CREATED_BY": "._fleet",
    "Fleet": "._fleet",
    "NAME_TAG": "._fleet",
    "LaunchSpec": "._launch",
    "SETTINGS": "._launch",
    "Setting": "._launch",
    "launch_spec": "._launch",
    "parse_flag": "._launch",
    "parse_pairs": "._launch",
    "start_arguments": "._launch",
    "Network": "._network",
    "ToolNetwork": "._network_inventory",
    "network_as_json": "._network_inventory",
    "network_line": "._network_inventory",
    "ConsoleSink": "._output",
    "LogSink": "._output",
    "NullSink": "._output",
    "OutputSink": "._output",
    "StreamDecoder": "._output",
    "StreamName": "._output",
    "TeeSink": "._output",
    "InstanceReclaimedError": "._reclaims",
    "CopyResult": "._results",
    "ExecResult": "._results",
    "FleetResult": "._results",
    "Instance": "._results",
    "InstanceList": "._results",
    "naming": "._results",
}

__all__ = [
    "CREATED_BY",
    "ConfigError",
    "ConsoleSink",
    "CopyError",
    "CopyResult",
    "Cost",
    "CredentialsSource",
    "EcsApiError",
    "EcsConfig",
    "ExecResult",
    "Face",
    "Fleet",
    "FleetError",
    "FleetResult",
    "HostKeyMismatchError",
    "Instance",
    "InstanceList",
    "InstanceReclaimedError",
    "InstanceStateError",
    "LaunchSpec",
    "LogSink",
    "NAME_TAG",
    "Network",
    "NullSink",
    "OutputSink",
    "Price",
    "PymlsqlError",
    "SETTINGS",
    "Setting",
    "SshError",
    "StreamDecoder",
    "StreamName",
    "TeeSink",
    "ToolNetwork",
    "WaitTimeoutError",
    "launch_spec",
    "naming",
    "network_as_json",
    "network_line",
    "parse_duration",
    "parse_flag",
    "parse_pairs",
    "start_arguments",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
