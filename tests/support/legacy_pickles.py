"""Builders of synthetic EG3D-family training pickles shaped like the Next3D / InvertAvatar releases.

No EG3D code is imported. Throwaway ``nn.Module`` subclasses stand in for the persistent classes;
their ``__reduce__`` emits what ``torch_utils.persistence.persistent_class`` emits: a call to the
global ``torch_utils.persistence._reconstruct_persistent_obj`` with ``meta = dict(type="class",
version=6, module_src=..., class_name=..., state=<instance __dict__>)``. Renderers, decoders and
``dnnlib.util.EasyDict`` are pickled by reference under the names the release uses (listed in the
manifests), through stand-in modules put in ``sys.modules`` only while ``pickle.dump`` runs.
Tensors are real torch tensors/parameters pickled by torch's own ``__reduce_ex__``.

Every ``module_src`` is Python that would create a marker file if anything executed it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import pickle
import re
import subprocess
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tests.support.manifests import load_manifest

NEXT3DPP_MANIFEST = "invertavatar_next3dpp.json"
NEXT3D_MANIFEST = "next3d.json"
PERSISTENCE_MODULE = "torch_utils.persistence"
SHRUNK_DIM = 3
# Next3D trained under a module later renamed: its pickle names the old module for by-reference
# classes (Next3D's legacy.py maps "v13_neural_blending" back to "next3d" when loading).
RELEASE_MODULE_RENAMES = {
    "training_avatar_texture.triplane_next3d": "training_avatar_texture.triplane_v13_neural_blending"}

MODULE_SRC_TEMPLATE = '''"""Synthetic stand-in for a pickled EG3D module source. A safe loader never runs it."""
import pathlib

pathlib.Path({marker!r}).write_text("module_src was executed")


class {class_name}:
    pass
'''


def load_gan_manifest(name: str) -> dict[str, Any]:
    return load_manifest(f"gan-release/{name}")


# ----------------------------------------------------------------------------------------------
# Stand-ins for the classes and functions the pickle refers to.


def _reconstruct_persistent_obj(meta: dict) -> Any:  # pickled by name only, never called here
    raise RuntimeError("the synthetic _reconstruct_persistent_obj must never be called")


_reconstruct_persistent_obj.__module__ = PERSISTENCE_MODULE


class _PersistentModule(nn.Module):
    """Base of the persistent stand-ins; pickles like EG3D's ``persistent_class`` decorator."""

    _orig_class_name = "Module"
    _orig_module_src = ""

    def __reduce__(self) -> tuple:
        fields = list(super().__reduce__())
        fields += [None] * max(3 - len(fields), 0)
        meta = dict(type="class", version=6, module_src=self._orig_module_src,
                    class_name=self._orig_class_name, state=fields[2])
        return (_reconstruct_persistent_obj, (meta,), None)

    def __deepcopy__(self, memo: dict) -> _PersistentModule:  # __reduce__ is for pickling only
        clone = type(self).__new__(type(self))
        memo[id(self)] = clone
        clone.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return clone


class _Registry:
    """Stand-in classes created for one build, keyed by their global name."""

    def __init__(self, module_src: str) -> None:
        self.module_src = module_src
        self.by_reference: dict[str, type] = {}
        self._persistent: dict[str, type] = {}
        self.easydict = self.reference_class("dnnlib.util.EasyDict", base=dict)

    def persistent(self, class_name: str, **attributes: Any) -> nn.Module:
        if class_name not in self._persistent:
            self._persistent[class_name] = type(class_name, (_PersistentModule,), {
                "_orig_class_name": class_name, "_orig_module_src": self.module_src})
        module = self._persistent[class_name]()
        module._init_args, module._init_kwargs = (), attributes.pop("init_kwargs", {})
        for name, value in attributes.items():
            setattr(module, name, value)
        return module

    def reference_class(self, qualified: str, base: type = nn.Module) -> type:
        if qualified not in self.by_reference:
            module_name, _, name = qualified.rpartition(".")
            self.by_reference[qualified] = type(name, (base,), {"__module__": module_name})
        return self.by_reference[qualified]

    def all_globals(self) -> dict[str, Any]:
        return {**self.by_reference, f"{PERSISTENCE_MODULE}._reconstruct_persistent_obj": _reconstruct_persistent_obj}


@contextlib.contextmanager
def _stand_in_modules(objects: dict[str, Any]) -> Iterator[None]:
    """Expose ``objects`` ("pkg.mod.Name" -> object) to ``pickle`` through temporary fake modules."""
    added: list[str] = []
    try:
        for qualified, obj in objects.items():
            module_name, _, attribute = qualified.rpartition(".")
            parts = module_name.split(".")
            for depth in range(1, len(parts) + 1):
                name = ".".join(parts[:depth])
                if name not in sys.modules:
                    sys.modules[name] = types.ModuleType(name)
                    added.append(name)
                elif name not in added:
                    raise RuntimeError(f"refusing to shadow the real module {name}")
            setattr(sys.modules[module_name], attribute, obj)
        yield
    finally:
        for name in reversed(added):
            sys.modules.pop(name, None)


# ----------------------------------------------------------------------------------------------
# The generator tree.

_LAYER_CLASSES = [(r"mapping", "MappingNetwork"), (r"synthesis", "SynthesisNetwork"),
                  (r"b\d+|block\d+", "SynthesisBlock"), (r"conv[01]", "SynthesisLayer"),
                  (r"torgb", "ToRGBLayer"), (r"fromrgb|conv2|skip", "Conv2dLayer"),
                  (r"fc\d+|embed|affine", "FullyConnectedLayer")]


def _child_class(parent: nn.Module, parent_name: str, name: str) -> str:
    if isinstance(parent, nn.ModuleList):
        return "EncoderResBlock" if parent_name == "encoder" else "Conv2dLayer"
    if isinstance(parent, nn.Sequential):
        return "FullyConnectedLayer"
    if getattr(parent, "_orig_class_name", "") == "EncoderResBlock" and name.startswith("conv"):
        return "Conv2dLayer"
    return next((cls for pattern, cls in _LAYER_CLASSES if re.fullmatch(pattern, name)), "Module")


class _TreeBuilder:
    def __init__(self, registry: _Registry, manifest: dict, *, shrink: bool, seed: int) -> None:
        self.registry, self.manifest, self.shrink = registry, manifest, shrink
        self.generator = torch.Generator().manual_seed(seed)
        self.root = registry.persistent("TriPlaneGenerator", init_kwargs=self._init_kwargs())
        self.modules: dict[str, nn.Module] = {"": self.root}

    def _init_kwargs(self) -> dict:
        kwargs = copy.deepcopy(self.manifest["config"]["constructor_kwargs"])
        for key in ("mapping_kwargs", "sr_kwargs"):
            kwargs[key] = self.registry.easydict(kwargs[key])
        return kwargs

    def shape(self, shape: list[int]) -> list[int]:
        return [min(d, SHRUNK_DIM) for d in shape] if self.shrink else list(shape)

    def tensor(self, shape: list[int], dtype: str) -> torch.Tensor:
        if dtype == "int64":
            return torch.randint(0, 1000, self.shape(shape), generator=self.generator)
        return torch.randn(self.shape(shape), generator=self.generator)

    def add_root_children(self) -> None:
        for name, class_name, module in self.manifest["submodules"]["children_in_order"]:
            if module == PERSISTENCE_MODULE:
                child = self.registry.persistent(class_name, init_kwargs={"img_resolution": 256})
            else:
                module = RELEASE_MODULE_RENAMES.get(module, module)
                child = self.registry.reference_class(f"{module}.{class_name}")()
            if name == "renderer":
                package = module.rpartition(".")[0]
                child.ray_marcher = self.registry.reference_class(f"{package}.ray_marcher.MipRayMarcher2")()
            self.root.add_module(name, child)
            self.modules[name] = child

    def module(self, path: str) -> nn.Module:
        if path not in self.modules:
            parent_path, _, name = path.rpartition(".")
            parent = self.module(parent_path)
            if isinstance(parent, nn.Sequential) and name.isdigit():
                for gap in range(len(parent), int(name)):  # the activation between FC layers has no tensors
                    parent.add_module(str(gap), nn.Softplus())
            if name == "net" and type(parent).__name__ == "OSGDecoder":
                child: nn.Module = nn.Sequential()
            elif name in ("encoder", "fusion"):
                child = nn.ModuleList()
            else:
                class_name = _child_class(parent, parent_path.rpartition(".")[2], name)
                extras = {}
                if class_name == "FullyConnectedLayer":
                    extras = {"activation": "linear", "lr_multiplier": 1, "weight_gain": np.float64(1 / math.sqrt(512))}
                child = self.registry.persistent(class_name, init_kwargs={"name": name}, **extras)
            parent.add_module(name, child)
            self.modules[path] = child
        return self.modules[path]

    def add_tensors(self, include: Callable[[str], bool]) -> None:
        buffers = {name for name, _shape, _dtype in self.manifest["buffers"]}
        dtypes = self.manifest.get("non_float32_entries", {})
        for key, shape in self.manifest["tensors"]:
            if not include(key):
                continue
            path, _, leaf = key.rpartition(".")
            module, value = self.module(path), self.tensor(shape, dtypes.get(key, "float32"))
            if key in buffers:
                module.register_buffer(leaf, value)
            else:
                module.register_parameter(leaf, nn.Parameter(value))

    def add_attributes(self) -> None:
        for entry in self.manifest["plain_tensor_attributes_in_pickle"]:
            if "attr" not in entry:
                continue
            owner = self.modules["" if entry["module"] == "<root>" else entry["module"]]
            value = entry.get("value")
            if isinstance(value, dict):
                setattr(owner, entry["attr"], self.registry.easydict(value))
            elif value is not None:
                setattr(owner, entry["attr"], torch.tensor(value, dtype=torch.float32))
            else:
                setattr(owner, entry["attr"], self.tensor(entry["shape"], entry.get("dtype", "float32")))


# ----------------------------------------------------------------------------------------------
# Public builders.


@dataclasses.dataclass
class SyntheticRelease:
    """What a builder wrote, for tests to compare the loader's output against."""

    path: Path
    marker: Path
    generator: nn.Module
    expected_state_dict: dict[str, torch.Tensor]
    expected_parameter_names: list[str]
    expected_attributes: dict[str, torch.Tensor]


def build_generator(manifest: dict, *, marker: Path, shrink: bool = True, seed: int = 0,
                    include: Callable[[str], bool] | None = None,
                    extra_root_buffers: dict[str, list[int]] | None = None) -> tuple[nn.Module, _Registry]:
    """The stand-in ``G_ema`` of ``manifest`` (all keys in manifest order unless ``include`` filters)."""
    registry = _Registry(MODULE_SRC_TEMPLATE.format(marker=str(marker), class_name="TriPlaneGenerator"))
    builder = _TreeBuilder(registry, manifest, shrink=shrink, seed=seed)
    builder.add_root_children()
    builder.add_tensors(include or (lambda key: True))
    for name, shape in (extra_root_buffers or {}).items():
        builder.root.register_buffer(name, builder.tensor(shape, "float32"))
    builder.add_attributes()
    builder.root.rendering_kwargs = copy.deepcopy(manifest["config"]["constructor_kwargs"]["rendering_kwargs"])
    builder.root.neural_rendering_resolution = 128 if "v20" in manifest["class"] else 64
    return builder.root, registry


def build_release_pickle(path: Path, manifest: dict, *, marker: Path, shrink: bool = True, seed: int = 0,
                         include: Callable[[str], bool] | None = None, training_entries: bool = True,
                         extra_root_buffers: dict[str, list[int]] | None = None,
                         payload: Any = None) -> SyntheticRelease:
    """Write ``{"training_set_kwargs", "G", "D", "G_ema", "augment_pipe"}`` like the training loop.

    ``payload`` (see :class:`ReducePayload`) is stored as a plain attribute of ``G_ema``.
    """
    g_ema, registry = build_generator(manifest, marker=marker, shrink=shrink, seed=seed, include=include,
                                      extra_root_buffers=extra_root_buffers)
    expected = {name: value.detach().clone() for name, value in g_ema.state_dict().items()}
    attributes = {f"{prefix}.{name}".lstrip("."): value.clone() for prefix, module in g_ema.named_modules()
                  for name, value in vars(module).items() if isinstance(value, torch.Tensor)}
    parameter_names = [name for name, _ in g_ema.named_parameters()]
    data: dict[str, Any] = {"G_ema": g_ema}
    if training_entries:
        discriminator = registry.persistent("DualDiscriminator", init_kwargs={"c_dim": 25})
        discriminator.register_parameter("b4_out_weight", nn.Parameter(torch.randn(1, 4)))
        data = {"training_set_kwargs": registry.easydict(class_name="training.dataset.ImageFolderDataset",
                                                         resolution=512, use_labels=True, xflip=False),
                "G": copy.deepcopy(g_ema), "D": discriminator, "G_ema": g_ema, "augment_pipe": None}
    if payload is not None:  # after the deepcopy of G: copying the payload would run it
        g_ema._payload = payload
    with _stand_in_modules({**registry.all_globals(), **(payload.globals() if payload is not None else {})}):
        with open(path, "wb") as handle:
            pickle.dump(data, handle)
    return SyntheticRelease(Path(path), Path(marker), g_ema, expected, parameter_names, attributes)


class ReducePayload:
    """An object whose pickle is a REDUCE of a dangerous (or, for ``"project"``, unknown) callable.

    ``call`` is one of ``"os.system"``, ``"builtins.exec"``, ``"builtins.eval"``,
    ``"subprocess.call"``, ``"torch.load"`` or ``"project"`` (a ``dnnlib.util.call_func_by_name``
    stand-in that would write the marker). Every variant writes ``marker`` when really unpickled.
    """

    CALLS = ("os.system", "builtins.exec", "builtins.eval", "subprocess.call", "torch.load", "project")

    def __init__(self, call: str, marker: Path) -> None:
        if call not in self.CALLS:
            raise ValueError(f"unknown payload call {call!r}")
        self.call, self.marker = call, str(marker)
        self._project_function = None
        if call == "project":
            def call_func_by_name(path: str) -> None:
                Path(path).write_text("project callable ran")
            call_func_by_name.__module__ = "dnnlib.util"
            call_func_by_name.__qualname__ = "call_func_by_name"
            self._project_function = call_func_by_name

    def globals(self) -> dict[str, Any]:
        return {"dnnlib.util.call_func_by_name": self._project_function} if self._project_function else {}

    def __reduce__(self) -> tuple:
        write = f"open({self.marker!r}, 'w').write('payload ran')"
        if self.call == "os.system":
            return (os.system, (f"touch {self.marker}",))
        if self.call == "builtins.exec":
            return (exec, (write,))
        if self.call == "builtins.eval":
            return (eval, (write,))
        if self.call == "subprocess.call":
            return (subprocess.call, (["touch", self.marker],))
        if self.call == "torch.load":
            return (torch.load, (self.marker,))
        return (self._project_function, (self.marker,))


def import_getattr_gadget(marker: Path) -> bytes:
    """Hand-written protocol-0 pickle: ``getattr(__import__('os'), 'system')('touch <marker>')``."""
    command = f"touch {marker}".encode()
    return (b"cbuiltins\ngetattr\n(cbuiltins\n__import__\n(Vos\ntRVsystem\ntR(V" + command + b"\ntR.")


def persistent_id_gadget() -> bytes:
    """A protocol-2 pickle whose only object comes from a persistent id."""
    return b"\x80\x02X\x03\x00\x00\x00keyQ."
