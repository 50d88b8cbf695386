"""``save_pretrained`` / ``from_pretrained`` for every avatar4d model, in the Hugging Face layout.

A model class opts in with one base class and its checkpoint component name::

    class TriplaneVAE(PretrainedMixin, nn.Module, component="triplane_vae"):
        def __init__(self, config: TriplaneVAEConfig) -> None: ...

The folder is the one :func:`avatar4d.checkpoint.io.save_checkpoint` writes: ``model.safetensors``
and ``config.json`` (the model config, what Hugging Face tools read) plus ``checkpoint.json`` (format,
component, step, weight hash, metadata). Loading checks the component, the hash and every key and
shape; a folder with only ``config.json`` + ``model.safetensors`` (a plain Hugging Face layout) loads
too, with the key and shape checks but no recorded hash to compare.
"""

from __future__ import annotations

import inspect
import json
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch

from avatar4d.checkpoint.io import (
    CONFIG_FILE,
    INFO_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    CheckpointInfo,
    load_checkpoint,
    load_state_dict_strict,
    save_checkpoint,
)
from avatar4d.config import Config

M = TypeVar("M", bound="PretrainedMixin")


class PretrainedMixin:
    """Adds :meth:`save_pretrained` and :meth:`from_pretrained` to a ``torch.nn.Module`` built from
    one typed config (its ``__init__``'s ``config`` argument, kept as ``self.config``)."""

    checkpoint_component: ClassVar[str] = ""
    config: Config

    def __init_subclass__(cls, component: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if component is not None:
            cls.checkpoint_component = component

    @classmethod
    def config_class(cls) -> type[Config]:
        """The config type of ``__init__``'s ``config`` argument."""
        hints = typing.get_type_hints(cls.__init__, vars(inspect.getmodule(cls)))
        config_type = hints.get("config")
        if not (isinstance(config_type, type) and issubclass(config_type, Config)):
            raise TypeError(f"{cls.__name__}.__init__ needs a `config: <Config subclass>` argument")
        return config_type

    def save_pretrained(self, directory: str | Path, *, step: int = 0,
                        metadata: Mapping[str, Any] | None = None) -> CheckpointInfo:
        """Write the weights and config to ``directory`` (atomically; see :mod:`avatar4d.checkpoint.io`)."""
        module = typing.cast(torch.nn.Module, self)
        return save_checkpoint(directory, module.state_dict(), component=self.checkpoint_component,
                               config=self.config, step=step, metadata=metadata)

    @classmethod
    def from_pretrained(cls: type[M], directory: str | Path, *, map_location: str | torch.device = "cpu",
                        **init_kwargs: Any) -> M:
        """The model saved in ``directory``; extra keyword arguments go to the constructor."""
        directory = Path(directory)
        if (directory / INFO_FILE).is_file():
            state, info = load_checkpoint(directory, component=cls.checkpoint_component, map_location=map_location)
            config_dict = info.config
        else:
            state, config_dict = _load_plain(directory, map_location)
        model = cls(cls.config_class().from_dict(config_dict), **init_kwargs)  # type: ignore[call-arg]
        module = typing.cast(torch.nn.Module, model)
        load_state_dict_strict(module, state, what=f"{cls.__name__} {directory}")
        return typing.cast(M, module.to(map_location))


def _load_plain(directory: Path, map_location: str | torch.device) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A plain Hugging Face folder: ``config.json`` + ``model.safetensors``."""
    from safetensors.torch import load_file

    config_path, weights = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {directory}")
    if not config_path.is_file() or not weights.is_file():
        raise CheckpointError(f"{directory} is not a checkpoint "
                              f"(needs {WEIGHTS_FILE} and {CONFIG_FILE} or {INFO_FILE})")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{config_path} is not valid JSON: {exc}") from None
    return load_file(str(weights), device=str(map_location)), config
