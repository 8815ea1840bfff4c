"""The magics' `%config EcsMagics` traits, made from the core's settings so each is written once.

Every EcsConfig field with help and every configurable start setting (LaunchSpec's table) is a
trait of the same name, with the same default and help.
"""

from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Any

from traitlets import Bool, Float, Int, TraitType, Unicode
from traitlets.config import Configurable

from .core import SETTINGS, EcsConfig, LaunchSpec

_BY_KIND: dict[str, type[TraitType[Any, Any]]] = {
    "text": Unicode, "choice": Unicode, "int": Int, "seconds": Float, "number": Float, "flag": Bool,
}  # fmt: skip
_BY_TYPE: dict[type, type[TraitType[Any, Any]]] = {str: Unicode, int: Int, float: Float, bool: Bool}


def _trait(kind: type[TraitType[Any, Any]], default: Any, help: str) -> TraitType[Any, Any]:
    return kind(default, allow_none=default is None, help=help).tag(config=True)


def _config_traits() -> dict[str, TraitType[Any, Any]]:
    return {
        item.name: _trait(_BY_TYPE[type(item.default)], item.default, item.metadata["help"])
        for item in fields(EcsConfig)
        if "help" in item.metadata and item.default is not MISSING
    }


def _start_traits() -> dict[str, TraitType[Any, Any]]:
    defaults = LaunchSpec()
    return {
        setting.name: _trait(_BY_KIND[setting.kind], getattr(defaults, setting.name),
                             f"Default {setting.flag} of %ecs_start: {setting.help}.")  # fmt: skip
        for setting in SETTINGS
        if setting.configurable
    }


START_TRAITS = tuple(_start_traits())
CONFIG_TRAITS = tuple(_config_traits())



class Settings(Configurable):
    """A base class of EcsMagics holding the traits made from the core's settings."""

    # traitlets reads a class's traits when the class is made, so they go into its namespace here
    # (a class body's locals() is that namespace).
    locals().update(_config_traits(), **_start_traits())
