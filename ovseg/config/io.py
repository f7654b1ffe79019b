"""Building the tree from dicts, YAML files and dotted overrides (``model.vision.num_output_groups=[8]``);
flattening it back (MLflow params). Every value is coerced to its field's type, or a ConfigError (a ValueError)
names the key; the sections then check their ranges and choices themselves (rules.py)."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from .rules import ConfigError
from .tree import Config

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the annotated field type, or raise a ConfigError naming the key."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' is a section; expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, key)
    if origin is tuple:
        if isinstance(value, (str, int, float)):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' expects a list, got {value!r}")
        (elem, *_rest) = typing.get_args(tp)
        return tuple(_coerce(elem, v, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' expects true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}' expects an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string; the key says it is a number
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}' expects a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}' expects a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp} for '{key}'")


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a (partial) nested dict; unknown keys are errors, and so is every value its
    key does not allow (a ConfigError naming the key, the value and what is allowed)."""
    if not isinstance(data, dict):
        raise ConfigError(f"config {prefix.rstrip('.') or 'tree'} must be a mapping of keys to values, "
                          f"got {type(data).__name__} {data!r:.80}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = {str(k) for k in data} - names
    if unknown:
        raise ConfigError(f"unknown config key(s) {sorted(prefix + u for u in unknown)}; known: {sorted(names)}")
    kwargs = {k: _coerce(hints[k], v, prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    """Nested plain dict (tuples as lists) that YAML and JSON can hold."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def merge_dicts(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = merge_dicts(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def flat_overrides(overrides: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``["fed.rounds=3", "seed=1"]`` -> ``{"fed.rounds": "3", "seed": "1"}``: dotted keys, raw text values
    (the form a Flower run config takes)."""
    flat: dict[str, str] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{item}' is not of the form dotted.key=value")
        flat[key.strip()] = raw
    return flat


def _yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error in one line: the problem and where (line and column, 1-based)."""
    problem, mark = getattr(e, "problem", None), getattr(e, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(e).split())


def nest_overrides(flat: dict[str, Any]) -> dict:
    """``{"model.vision.depths": "[2,2]", "seed": 3}`` -> nested dict; string values are parsed as YAML
    ("[synthetic]" is a list, "null" is None, "" stays ""), other values are kept."""
    nested: dict = {}
    for key, raw in flat.items():
        node = nested
        *parents, leaf = str(key).split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{key}': '{p}' is given a value and sub-keys at once")
        if isinstance(raw, str) and raw.strip():
            try:
                raw = yaml.safe_load(raw)
            except yaml.YAMLError as e:
                raise ConfigError(f"override '{key}={raw}': the value is not valid YAML ({_yaml_problem(e)})") from e
        elif isinstance(raw, str):
            raw = ""
        node[leaf] = raw
    return nested


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> dict:
    """``["model.vision.depths=[2,2]", "seed=3"]`` -> nested dict; values are parsed as YAML."""
    return nest_overrides(flat_overrides(overrides))


def available_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(e)}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping, got {type(data).__name__}")
    return data


def load_config(name_or_path: str = "tiny", overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """A named config (``tiny``), or a YAML file path, plus dotted overrides."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        data = _read_yaml(path)
    else:
        path = CONFIG_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ConfigError(f"unknown config '{name_or_path}'; available: {available_configs()}")
        data = _read_yaml(path)
        data.setdefault("name", name_or_path)
    data = merge_dicts(data, parse_overrides(overrides))
    return from_dict(Config, data)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the full tree as YAML (write then rename), loadable by ``load_config(path)``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    tmp.replace(path)


def flatten(cfg: Any) -> dict[str, Any]:
    """``{"model.vision.depths": "[6, 6]", ...}``: the MLflow params of a run."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, prefix + k + ".")
            else:
                out[prefix + k] = v

    walk(to_dict(cfg), "")
    return out
