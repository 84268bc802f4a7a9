"""Config files and `key=value` overrides as this project reads them: YAML (with YAML 1.2's
floats) or JSON into plain mappings; yoco_jax.config and yoco_jax.train.config check them."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from yoco_jax.errors import ConfigError


class _Loader(yaml.SafeLoader):
    """YAML 1.1 with YAML 1.2's floats: `1e-5` and `1e6` are numbers, not strings."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """Parses YAML text the way every config file and `key=value` of this project is read."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as error:
        raise ConfigError(f"not valid YAML: {error}") from None


def read_config_file(path: Path) -> dict[str, Any]:
    """A mapping from a YAML or JSON file (an official params.json is read as JSON)."""
    text = Path(path).read_text()
    if Path(path).suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path} is not valid JSON: {error}") from None
    else:
        try:
            data = load_yaml(text)
        except ConfigError as error:
            raise ConfigError(f"{path}: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys")
    return data


def _scalar(text: str) -> Any:
    """A `key=value` value parsed as a YAML scalar; text that is not valid YAML stays text."""
    try:
        return load_yaml(text)
    except ConfigError:
        return text


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Turns command-line `key=value` strings into a dict, values parsed as YAML scalars."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. dim=256)")
        out[key.strip()] = _scalar(value) if value != "" else None
    return out
