"""The core of pymlsql_magics: ECS operations, SSH, keys and configuration. Never imports IPython."""

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

__all__ = [
    "InstanceReclaimedError",
    "Cost",
    "Price",
    "CREATED_BY",
    "NAME_TAG",
    "ConfigError",
    "ConsoleSink",
    "CredentialsSource",
    "CopyError",
    "CopyResult",
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
    "InstanceStateError",
    "LaunchSpec",
    "LogSink",
    "Network",
    "NullSink",
    "OutputSink",
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
    "parse_duration",
    "parse_flag",
    "parse_pairs",
    "naming",
    "network_as_json",
    "network_line",
    "start_arguments",
]
