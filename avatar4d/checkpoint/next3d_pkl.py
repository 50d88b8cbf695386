"""Extract the generator of a Next3D / Next3D++ (InvertAvatar) / EG3D training pickle.

The file is a ``pickle.dump`` of ``{"training_set_kwargs", "G", "D", "G_ema", "augment_pipe"}``
(see ``reference/gan-release/README.md``). :func:`read_next3d_pickle` reads it with
:func:`~avatar4d.checkpoint.legacy_pickle.load_legacy_pickle` (nothing in the file runs), takes
``G_ema`` and walks its module tree exactly like ``torch.nn.Module.state_dict()`` does: a module's
own ``_parameters``, then its ``_buffers`` (minus ``_non_persistent_buffers_set``), then each child
of ``_modules`` recursively, in stored order. Tensors kept as plain attributes (``uv_face_mask``,
``orth_scale``, ``renderer.plane_axes``) are collected separately because the release's renderer
behaviour depends on them.

Plane conventions (names of :data:`avatar4d.rendering.planes.PLANE_CONVENTIONS`): EG3D-style
renderers store matrices ``M_k`` and sample plane k at the first two entries of ``p @ inv(M_k)``;
InvertAvatar's renderer stores ``inv(M_k)`` already and samples at ``p @ stored``. The pairs are
therefore read from the matrices together with the renderer's storage style.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from torch import Tensor

from avatar4d.checkpoint.legacy_pickle import LegacyPickleError, PersistentStub, load_legacy_pickle
from avatar4d.checkpoint.safe_pickle import PickleStub, ReferenceStub, stub_state
from avatar4d.rendering.planes import PLANE_CONVENTIONS, AxisPairs, axis_pairs_from_plane_axes

logger = logging.getLogger(__name__)

MAX_MODULE_DEPTH = 32
RENDERER_PLANE_AXES = "renderer.plane_axes"

# Renderer classes (module, name) -> True when their plane_axes hold inv(M_k) (InvertAvatar),
# False when they hold M_k (EG3D). Next3D and InvertAvatar both ship a
# ``training_avatar_texture.volumetric_rendering.renderer.ImportanceRenderer`` with different
# storage, so that name is left out: its convention is read from the matrices when unambiguous.
RENDERER_STORES_INVERSE: dict[tuple[str, str], bool] = {
    ("training_avatar_texture.volumetric_rendering.renderer", "ImportanceRenderer_bsMotion"): True,
    ("training_avatar_texture.volumetric_rendering.renderer", "ImportanceRenderer_new"): True,
    ("training.volumetric_rendering.renderer", "ImportanceRenderer"): False,
}


class Next3DPickleError(LegacyPickleError):
    """The pickle is readable but holds no usable generator under the requested key."""


class PlaneConventionError(Next3DPickleError):
    """The stored plane axes do not identify one of the known plane conventions."""


@dataclasses.dataclass
class LegacyGenerator:
    """A generator read from a legacy pickle: tensors, constructor arguments and attributes.

    ``state_dict`` has the keys and order ``Module.state_dict()`` of the original class gives;
    ``module_classes`` maps each module path ("" = root) to its class ("<persistent:sha>.Name"
    for persistent classes, "module.Name" for classes pickled by reference).
    """

    class_name: str
    state_dict: dict[str, Tensor]
    parameter_names: tuple[str, ...]
    init_args: tuple
    init_kwargs: dict[str, Any]
    attributes: dict[str, Tensor]
    root_attributes: dict[str, Any]
    module_classes: dict[str, str]
    source_sha256: str | None = None

    @property
    def buffer_names(self) -> tuple[str, ...]:
        parameters = set(self.parameter_names)
        return tuple(name for name in self.state_dict if name not in parameters)

    @property
    def num_parameters(self) -> int:
        return sum(self.state_dict[name].numel() for name in self.parameter_names)

    @property
    def plane_axes(self) -> Tensor | None:
        """The renderer's stored ``plane_axes`` [3, 3, 3], or None when the file has none."""
        return self.attributes.get(RENDERER_PLANE_AXES)

    def renderer_stores_inverse(self) -> bool | None:
        """True/False when the renderer class is known to store inv(M_k)/M_k, else None."""
        qualified = self.module_classes.get("renderer", "")
        module, _, name = qualified.rpartition(".")
        return RENDERER_STORES_INVERSE.get((module, name))

    def plane_axis_pairs(self, *, pre_inverted: bool | None = None) -> AxisPairs:
        """World-axis pairs (grid x, grid y) the file's renderer samples planes 0, 1, 2 at."""
        return plane_axis_pairs(self._require_plane_axes(), pre_inverted=self._storage(pre_inverted))

    def plane_convention(self, *, pre_inverted: bool | None = None) -> str:
        """Name of the plane convention the file's renderer used ("next3dpp", "next3d", ...)."""
        return infer_plane_convention(self._require_plane_axes(), pre_inverted=self._storage(pre_inverted))

    def _storage(self, pre_inverted: bool | None) -> bool | None:
        return self.renderer_stores_inverse() if pre_inverted is None else pre_inverted

    def _require_plane_axes(self) -> Tensor:
        if self.plane_axes is None:
            raise PlaneConventionError(f"the generator has no {RENDERER_PLANE_AXES} attribute")
        return self.plane_axes


def plane_axis_pairs(plane_axes: Tensor, *, pre_inverted: bool | None) -> AxisPairs:
    """Axis pairs of stored ``plane_axes``; ``pre_inverted=None`` works only when both readings agree."""
    try:
        if pre_inverted is not None:
            return axis_pairs_from_plane_axes(plane_axes, pre_inverted=pre_inverted)
        as_matrices = axis_pairs_from_plane_axes(plane_axes, pre_inverted=False)
        as_inverses = axis_pairs_from_plane_axes(plane_axes, pre_inverted=True)
    except ValueError as error:
        raise PlaneConventionError(str(error)) from error
    if as_matrices != as_inverses:
        raise PlaneConventionError(
            f"plane_axes read as matrices give {as_matrices}, read as inverses {as_inverses}; the renderer "
            "class is not known, so pass pre_inverted=True (InvertAvatar) or False (EG3D/Next3D)")
    return as_matrices


def infer_plane_convention(plane_axes: Tensor, *, pre_inverted: bool | None) -> str:
    """Convention name for stored ``plane_axes``.

    "eg3d" and "next3dpp" sample the same pairs; they are told apart by the storage style
    (EG3D stores M_k, InvertAvatar stores inv(M_k)).
    """
    pairs = plane_axis_pairs(plane_axes, pre_inverted=pre_inverted)
    names = [name for name, known in PLANE_CONVENTIONS.items() if known == pairs]
    if not names:
        raise PlaneConventionError(f"plane_axes sample axis pairs {pairs}, which match no known convention")
    if len(names) > 1:
        return "next3dpp" if pre_inverted else "eg3d"
    return names[0]


def read_next3d_pickle(path: str | os.PathLike, key: str = "G_ema") -> LegacyGenerator:
    """Read ``path`` (an EG3D-family training pickle) and return the generator stored at ``key``."""
    data = load_legacy_pickle(path)
    if isinstance(data, ReferenceStub) and data.dict_items:  # a dict subclass such as EasyDict
        data = data.dict_items
    if not isinstance(data, Mapping):
        raise Next3DPickleError(f"{path}: top-level object is a {type(data).__name__}, expected a dict "
                                f"with a {key!r} entry")
    if key not in data:
        available = ", ".join(repr(k) for k in data)
        raise Next3DPickleError(f"{path} has no {key!r} entry (it has {available or 'no entries'})")
    generator = data[key]
    if not isinstance(generator, PickleStub) or stub_state(generator) is None:
        raise Next3DPickleError(f"{path}: {key!r} is a {type(generator).__name__}, not a pickled module")
    result = extract_module(generator)
    if not result.state_dict:
        raise Next3DPickleError(f"{path}: {key!r} ({result.class_name}) contains no tensors")
    logger.info("read %s[%r]: %s, %d tensors, %d parameters", path, key, result.class_name,
                len(result.state_dict), result.num_parameters)
    return result


def extract_module(module: PickleStub) -> LegacyGenerator:
    """Flatten a stubbed module tree into a :class:`LegacyGenerator` (any module, not just G_ema)."""
    walker = _Walker()
    walker.visit(module, "", depth=0, ancestors=frozenset())
    state = stub_state(module) or {}
    init_args = to_plain(state.get("_init_args", ()))
    init_kwargs = to_plain(state.get("_init_kwargs", {}))
    root_attributes = {name: to_plain(value) for name, value in state.items()
                       if not name.startswith("_") and name != "training" and not isinstance(value, Tensor)}
    return LegacyGenerator(
        class_name=module.class_name if isinstance(module, PersistentStub) else module.qualname,
        state_dict=walker.state_dict,
        parameter_names=tuple(walker.parameter_names),
        init_args=tuple(init_args) if isinstance(init_args, (list, tuple)) else (),
        init_kwargs=init_kwargs if isinstance(init_kwargs, dict) else {},
        attributes=walker.attributes,
        root_attributes=root_attributes,
        module_classes=walker.module_classes,
        source_sha256=module.module_src_sha256 if isinstance(module, PersistentStub) else None,
    )


def to_plain(obj: Any, *, max_depth: int = 64) -> Any:
    """Containers (OrderedDict, EasyDict stubs, lists, tuples) and numpy scalars -> plain Python.

    Tensors, arrays and other stubs are returned unchanged. Cycles and nesting deeper than
    ``max_depth`` raise :class:`LegacyPickleError`.
    """
    active: set[int] = set()

    def convert(value: Any, depth: int) -> Any:
        if depth > max_depth:
            raise LegacyPickleError(f"pickled data nests deeper than {max_depth} levels")
        if isinstance(value, np.generic):
            return value.item()
        is_dict_stub = isinstance(value, ReferenceStub) and not value.args and not value.list_items \
            and (value.state is None or (isinstance(value.state, dict) and not value.state))
        if not isinstance(value, (dict, list, tuple, set, frozenset)) and not is_dict_stub:
            return value
        if id(value) in active:
            raise LegacyPickleError("pickled data contains a reference cycle")
        active.add(id(value))
        try:
            if is_dict_stub:
                return {convert(k, depth + 1): convert(v, depth + 1) for k, v in value.dict_items.items()}
            if isinstance(value, dict):
                return {convert(k, depth + 1): convert(v, depth + 1) for k, v in value.items()}
            items = [convert(v, depth + 1) for v in value]
            return items if isinstance(value, list) else type(value)(items)
        finally:
            active.discard(id(value))

    return convert(obj, 0)



class _Walker:
    """Collects tensors in ``Module.state_dict()`` order from stub states."""

    def __init__(self) -> None:
        self.state_dict: dict[str, Tensor] = {}
        self.parameter_names: list[str] = []
        self.attributes: dict[str, Tensor] = {}
        self.module_classes: dict[str, str] = {}

    def visit(self, module: PickleStub, prefix: str, *, depth: int, ancestors: frozenset[int]) -> None:
        path = prefix[:-1]
        if depth > MAX_MODULE_DEPTH:
            raise Next3DPickleError(f"module tree deeper than {MAX_MODULE_DEPTH} levels at {path!r}")
        if id(module) in ancestors:
            raise Next3DPickleError(f"module {path!r} contains itself")
        state = stub_state(module)
        if state is None:
            raise Next3DPickleError(f"module {path or '<root>'!r} ({module.qualname}) has no pickled state")
        self.module_classes[path] = module.qualname
        for name, tensor in self._tensors(state, "_parameters", prefix):
            self.state_dict[prefix + name] = tensor
            self.parameter_names.append(prefix + name)
        non_persistent = state.get("_non_persistent_buffers_set") or ()
        for name, tensor in self._tensors(state, "_buffers", prefix):
            if name not in non_persistent:
                self.state_dict[prefix + name] = tensor
        for name, value in state.items():
            if isinstance(value, Tensor) and isinstance(name, str):
                self.attributes[prefix + name] = value
        children = state.get("_modules") or {}
        if not isinstance(children, Mapping):
            raise Next3DPickleError(f"{path or '<root>'}._modules is a {type(children).__name__}, not a dict")
        for name, child in children.items():
            if child is None:
                continue
            if not isinstance(child, PickleStub):
                raise Next3DPickleError(f"submodule {prefix}{name} is a {type(child).__name__}, not a module")
            self.visit(child, f"{prefix}{name}.", depth=depth + 1, ancestors=ancestors | {id(module)})

    @staticmethod
    def _tensors(state: dict, table: str, prefix: str) -> list[tuple[str, Tensor]]:
        entries = state.get(table) or {}
        if not isinstance(entries, Mapping):
            raise Next3DPickleError(f"{prefix}{table} is a {type(entries).__name__}, not a dict")
        found = []
        for name, value in entries.items():
            if value is None:  # e.g. register_parameter("bias", None)
                continue
            if not isinstance(name, str) or not isinstance(value, Tensor):
                raise Next3DPickleError(f"{prefix}{name} in {table} is a {type(value).__name__}, not a tensor")
            found.append((name, value))
        return found
