"""Typed access to the flat parameters of an ECS RPC request.

The SDK flattens lists as `Name.1`, `Name.2` and objects as `Tag.1.Key`; some list parameters
are instead one JSON-array string (`InstanceIds='["i-1"]'`). Booleans arrive as Python's
`True` / `False`, so they are read case-insensitively.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import TypeVar

from ._api_errors import ApiError, invalid, missing

T = TypeVar("T")
Paging = dict[str, int | str]  # the paging fields of an answer: TotalCount, NextToken, ...


class Params:
    def __init__(self, values: Mapping[str, str]) -> None:
        self.values = dict(values)

    def text(self, name: str, default: str | None = None, *, required: bool = False) -> str | None:
        value = self.values.get(name)
        if value is None or value == "":
            if required:
                raise missing(name)
            return default
        return value

    def required(self, name: str) -> str:
        value = self.text(name, required=True)
        assert value is not None
        return value

    def integer(
        self, name: str, default: int | None = None, *, low: int | None = None, high: int | None = None
    ) -> int | None:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise invalid(name, "must be an integer") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise invalid(name, f"must be between {low} and {high}")
        return value

    def flag(self, name: str, default: bool = False) -> bool:
        raw = self.text(name)
        if raw is None:
            return default
        if raw.lower() in ("true", "false"):
            return raw.lower() == "true"
        raise invalid(name, "must be true or false")

    def repeated(self, name: str, *, limit: int = 100) -> list[str]:
        """`Name.1`, `Name.2`, ... in index order."""
        pattern = re.compile(rf"{re.escape(name)}\.(\d+)$")
        found = sorted(
            (int(match.group(1)), value)
            for key, value in self.values.items()
            if (match := pattern.match(key))
        )
        if len(found) > limit:
            raise invalid(name, f"accepts at most {limit} values")
        return [value for _, value in found]

    def json_list(self, name: str, *, limit: int = 100) -> list[str] | None:
        raw = self.text(name)
        if raw is None:
            return None
        try:
            value = json.loads(raw)
        except ValueError:
            raise invalid(name, "must be a JSON array") from None
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise invalid(name, "must be a JSON array of strings")
        if len(value) > limit:
            raise invalid(name, f"accepts at most {limit} values")
        return value

    def tags(self, *, limit: int = 20) -> list[tuple[str, str | None]]:
        """`Tag.N.Key` / `Tag.N.Value` pairs; a value is None when only the key was sent."""
        pattern = re.compile(r"Tag\.(\d+)\.(Key|Value)$")
        by_index: dict[int, dict[str, str]] = {}
        for key, value in self.values.items():
            if match := pattern.match(key):
                by_index.setdefault(int(match.group(1)), {})[match.group(2)] = value
        if len(by_index) > limit:
            raise invalid("Tag", f"accepts at most {limit} tags")
        pairs = []
        for index in sorted(by_index):
            entry = by_index[index]
            if not entry.get("Key"):
                raise ApiError("InvalidTagKey.Malformed", message=f"Tag.{index}.Key is empty.")
            pairs.append((entry["Key"], entry.get("Value")))
        return pairs

    def new_tags(self) -> dict[str, str]:
        """Tags to attach to a new resource, checked as ECS checks them."""
        tags: dict[str, str] = {}
        for key, value in self.tags():
            if (
                len(key) > 128
                or key.startswith(("aliyun", "acs:"))
                or "http://" in key
                or "https://" in key
            ):
                raise ApiError("InvalidTagKey.Malformed", message=f"The tag key {key!r} is not valid.")
            if value is not None and len(value) > 128:
                raise invalid("Tag.N.Value", "must be at most 128 characters")
            tags[key] = value or ""
        return tags


def page(items: list[T], params: Params, *, default_size: int = 10, max_size: int = 100) -> tuple[list[T], Paging]:
    """Slices `items` by PageNumber / PageSize and returns the paging fields of the answer."""
    number = params.integer("PageNumber", 1, low=1)
    size = params.integer("PageSize", default_size, low=1, high=max_size)
    assert number is not None and size is not None
    start = (number - 1) * size
    return items[start : start + size], {
        "TotalCount": len(items),
        "PageNumber": number,
        "PageSize": size,
    }


def token_page(
    items: list[T], params: Params, *, default_size: int = 10, max_size: int = 100
) -> tuple[list[T], Paging]:
    """Slices `items` by NextToken / MaxResults, as the newer ECS paging does."""
    raw_max = params.integer("MaxResults")
    size = default_size if raw_max is None or raw_max < default_size else min(raw_max, max_size)
    token = params.text("NextToken")
    start = 0
    if token:
        if not token.isdigit():
            raise invalid("NextToken", "is not a token this service issued")
        start = int(token)
    chunk = items[start : start + size]
    following = start + size
    return chunk, {
        "NextToken": str(following) if following < len(items) else "",
        "TotalCount": len(items),
        "MaxResults": size,
    }
