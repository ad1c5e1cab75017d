"""YAML configs loaded into validating dataclasses.

Configs are data: a YAML file maps onto a (nested) dataclass. Unknown or misspelt keys are errors that
list the valid keys; values are type-checked; ``--set section.key=value`` overrides are applied before
validation. Dataclasses may define ``__post_init__`` for range checks.

    cfg = load_config("configs/toy/ppd_dpo.yaml", TrainConfig, overrides=["train.lr=1e-5"])
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pixpref.errors import PixprefError

T = TypeVar("T")


def _close(name: str, valid: list[str]) -> str:
    match = difflib.get_close_matches(name, valid, n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert ``value`` to the annotated type ``tp``; raise PixprefError naming ``where``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except PixprefError as e:
                errors.append(str(e))
        raise PixprefError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is typing.Literal:
        options = typing.get_args(tp)
        if value not in options:
            raise PixprefError(f"{where}: invalid value {value!r}; valid options: {', '.join(map(str, options))}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise PixprefError(f"{where}: expected a mapping of keys, got {type(value).__name__}")
        return from_dict(tp, value, prefix=where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise PixprefError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        out = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return out if origin is list else tuple(out)
    if origin is dict:
        if not isinstance(value, dict):
            raise PixprefError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise PixprefError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise PixprefError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise PixprefError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise PixprefError(f"{where}: expected a number, got {value!r}")
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise PixprefError(f"{where}: expected a number, got {value!r}") from None
        if out != out or out in (float("inf"), float("-inf")):
            raise PixprefError(f"{where}: expected a finite number, got {value!r}")
        return out
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise PixprefError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys with the list of valid ones."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PixprefError(f"{prefix or 'config'}: expected a mapping of keys, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    valid = sorted(fields)
    kwargs = {}
    for key, value in data.items():
        where = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            raise PixprefError(
                f"unknown config key {where!r}{_close(str(key), valid)}; valid keys"
                f"{' in ' + repr(prefix) if prefix else ''}: {', '.join(valid)}"
            )
        kwargs[key] = _coerce(value, hints[key], where)
    try:
        return cls(**kwargs)
    except PixprefError:
        raise
    except TypeError as e:  # a required field is missing
        raise PixprefError(f"{prefix or 'config'}: {e}") from None


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain dict (for saving next to checkpoints)."""
    return dataclasses.asdict(obj)


def _parse_scalar(text: str) -> Any:
    return yaml.safe_load(text) if text.strip() != "" else ""


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides to a nested mapping (values parsed as YAML scalars)."""
    for item in overrides or []:
        if "=" not in item:
            raise PixprefError(f"override {item!r} must look like section.key=value")
        dotted, raw = item.split("=", 1)
        keys = [k for k in dotted.strip().split(".") if k]
        if not keys:
            raise PixprefError(f"override {item!r} has an empty key")
        node = data
        for k in keys[:-1]:
            if not isinstance(node.get(k, {}), dict):
                raise PixprefError(f"override {item!r}: {k!r} is not a section")
            node = node.setdefault(k, {})
        node[keys[-1]] = _parse_scalar(raw)
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise PixprefError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise PixprefError(f"config file {path} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PixprefError(f"config file {path} must hold a mapping at top level, got {type(data).__name__}")
    return data


def load_config(path: str | Path | None, cls: type[T], overrides: list[str] | None = None) -> T:
    """Load YAML ``path`` (or defaults if None) into ``cls``, applying ``--set`` style overrides."""
    data = read_yaml(path) if path is not None else {}
    data = apply_overrides(data, overrides)
    return from_dict(cls, data)


def save_config(obj: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(obj), sort_keys=False))
