"""Typed configuration dataclasses and named-preset registries.

Every component has one config dataclass that subclasses :class:`Config`. Configs round-trip
through plain dicts, JSON and YAML, and nested dataclasses are rebuilt on load, so a checkpoint's
``config.json`` is enough to rebuild its model. Sizes are named presets (``tiny``, ``small``,
``paper``) kept in a :class:`PresetRegistry`, in the spirit of DiT's ``DiT_models`` dict.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from avatar4d.errors import UserError

C = TypeVar("C", bound="Config")


class ConfigError(UserError):
    """A config could not be built from the given values (unknown key, wrong type, bad preset)."""


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Turn a JSON/YAML value into the annotated type (nested configs, tuples, optionals)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any or annotation is typing.Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: {value!r} matches none of {args}")
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {annotation.__name__}, got {value!r}")
        return annotation.from_dict(value, _where=where)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if origin is tuple and args:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


@dataclasses.dataclass
class Config:
    """Base class of every typed config: dict/JSON/YAML round trips and checked overrides."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], _where: str | None = None) -> C:
        where = _where or cls.__name__
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(names)}")
        kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    def replace(self: C, **overrides: Any) -> C:
        """A copy with some fields changed; values are type-checked like ``from_dict``."""
        merged = {**self.to_dict(), **{k: _plain(v) for k, v in overrides.items()}}
        return type(self).from_dict(merged)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls: type[C], text: str) -> C:
        return cls.from_dict(json.loads(text))

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=True)

    @classmethod
    def from_yaml(cls: type[C], text: str) -> C:
        import yaml

        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.__name__}: YAML must hold a mapping, got {type(data).__name__}")
        return cls.from_dict(data)

    @classmethod
    def load(cls: type[C], path: str | Path) -> C:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        text = path.read_text()
        return cls.from_json(text) if path.suffix == ".json" else cls.from_yaml(text)


class PresetRegistry(Generic[C]):
    """Named config presets of one component (``tiny``, ``small``, ``paper``...)."""

    def __init__(self, component: str) -> None:
        self.component = component
        self._builders: dict[str, Callable[[], C]] = {}

    def register(self, name: str) -> Callable[[Callable[[], C]], Callable[[], C]]:
        def decorator(builder: Callable[[], C]) -> Callable[[], C]:
            if name in self._builders:
                raise ValueError(f"{self.component} preset {name!r} registered twice")
            self._builders[name] = builder
            return builder

        return decorator

    def names(self) -> list[str]:
        return sorted(self._builders)

    def get(self, name: str, **overrides: Any) -> C:
        if name not in self._builders:
            raise ConfigError(f"unknown {self.component} preset {name!r}; choose from {self.names()}")
        config = self._builders[name]()
        return config.replace(**overrides) if overrides else config

    def __contains__(self, name: object) -> bool:
        return name in self._builders
