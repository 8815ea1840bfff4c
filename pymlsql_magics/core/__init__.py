"""The core of pymlsql_magics: ECS operations, SSH, keys and configuration. Never imports IPython."""

from ._config import EcsConfig, parse_duration
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
from ._fleet import CREATED_BY, NAME_TAG, Fleet
from ._output import ConsoleSink, NullSink, OutputSink, StreamDecoder, StreamName
from ._results import CopyResult, ExecResult, FleetResult, Instance, InstanceList

__all__ = [
    "CREATED_BY",
    "NAME_TAG",
    "ConfigError",
    "ConsoleSink",
    "CopyError",
    "CopyResult",
    "EcsApiError",
    "EcsConfig",
    "ExecResult",
    "Fleet",
    "FleetError",
    "FleetResult",
    "HostKeyMismatchError",
    "Instance",
    "InstanceList",
    "InstanceStateError",
    "NullSink",
    "OutputSink",
    "PymlsqlError",
    "SshError",
    "StreamDecoder",
    "StreamName",
    "WaitTimeoutError",
    "parse_duration",
]
