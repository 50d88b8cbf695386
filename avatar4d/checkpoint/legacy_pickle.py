"""Read third-party ``.pkl`` checkpoints (EG3D, StyleGAN2-ADA/3, Next3D, InvertAvatar) without
executing anything they contain.

Those files are plain ``pickle.dump`` output. Persistent classes (``torch_utils.persistence``)
are stored as a call to ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` whose meta
dict carries the defining module's full source text (which the original loader ``exec``\\ s) and
the instance ``__dict__``; other classes (torch containers, renderers, ``dnnlib.util.EasyDict``)
are stored by reference; tensors reduce to ``torch._utils._rebuild_tensor_v2`` over a storage
rebuilt by ``torch.storage._load_from_bytes`` from a legacy ``torch.save`` byte string.

:func:`load_legacy_pickle` replays the file with the shared restricted unpickler of
:mod:`avatar4d.checkpoint.safe_pickle` (nothing is imported or run; memory stays proportional to
the file size) under :data:`TRAINING_PICKLE_POLICY`, which adds:

* tensor/parameter rebuilders with bounds checks, storage bytes read by
  ``torch.load(weights_only=True)``, ``torch.Size``/``torch.device`` and the torch dtypes;
* ``_reconstruct_persistent_obj`` returning a :class:`PersistentStub` (class name, SHA-256 of the
  source that is never run, state);
* project globals (``dnnlib``, ``training*``, ``torch.nn.modules.*``...) as inert
  :class:`ReferenceStub` classes; any other global of the standard library, ``torch`` or ``numpy``
  (``os.system``, ``builtins.exec``, ``subprocess.*``, ``torch.load``...) is refused with
  :class:`UnsafePickleError` before anything is called.

Numpy arrays of Python objects are refused (a weights file holds numbers). ``torch.save`` files
(zip or legacy format) are recognised and pointed at ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import warnings
from typing import Any, BinaryIO

import torch

from avatar4d.checkpoint.safe_pickle import (
    DEFAULT_MAX_BYTES,
    InertMarker,
    PickleReadError,
    PickleStub,
    ReferenceStub,
    UnpicklingPolicy,
    UnsafePickleError,
    checked_ints,
    describe_source,
    is_one_of,
    module_globals,
    restricted_load,
    stub_state,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_BYTES", "PERSISTENCE_VERSION", "TRAINING_PICKLE_POLICY", "LegacyPickleError", "PersistentStub",
    "PickleStub", "ReferenceStub", "UnsafePickleError", "load_legacy_pickle", "stub_state",
]

PERSISTENCE_VERSION = 6  # torch_utils.persistence._version in EG3D / StyleGAN2-ADA / StyleGAN3
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # first object of a non-zip torch.save file

LegacyPickleError = PickleReadError  # the name this module's readers have always caught


class PersistentStub(PickleStub):
    """An object pickled by ``torch_utils.persistence`` (its ``module_src`` is never executed)."""

    def __init__(self, class_name: str, module_src_sha256: str, state: Any, version: int) -> None:
        self.class_name, self.module_src_sha256 = class_name, module_src_sha256
        self.state, self.version = state, version

    @property
    def qualname(self) -> str:
        return f"<persistent:{self.module_src_sha256[:12]}>.{self.class_name}"

    def __repr__(self) -> str:
        return f"PersistentStub({self.class_name!r}, src={self.module_src_sha256[:12]})"


# ----------------------------------------------------------------------------------------------
# Safe re-implementations of the torch reconstructors.


_TENSOR_TYPES = (InertMarker("torch.Tensor"), InertMarker("torch.nn.Parameter"))


def _rebuild_tensor(storage: Any, storage_offset: int, size: Any, stride: Any) -> torch.Tensor:
    if not isinstance(storage, torch.storage.TypedStorage):
        raise UnsafePickleError(f"tensor storage has unexpected type {type(storage).__name__}")
    size, stride = checked_ints(size, "tensor size"), checked_ints(stride, "tensor stride")
    (storage_offset,) = checked_ints((storage_offset,), "tensor offset")
    if len(size) != len(stride):
        raise UnsafePickleError(f"tensor size {size} and stride {stride} differ in length")
    element_size = torch.empty((), dtype=storage.dtype).element_size()
    numel = storage._untyped_storage.nbytes() // element_size
    needed = 0 if 0 in size else storage_offset + 1 + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if needed > numel:  # set_() would silently grow the storage instead of failing
        raise UnsafePickleError(f"tensor view {size}/{stride}+{storage_offset} overruns its storage of {numel}")
    if math.prod(size) > numel:  # expanded/overlapping: a later copy would allocate far more than the file
        raise UnsafePickleError(f"tensor view {size}/{stride} has more elements than its storage of {numel}")
    return torch.empty((0,), dtype=storage.dtype).set_(storage._untyped_storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage: Any, storage_offset: int, size: Any, stride: Any, requires_grad: Any = False,
                       backward_hooks: Any = None, metadata: Any = None) -> torch.Tensor:
    return _rebuild_tensor(storage, storage_offset, size, stride)  # hooks/metadata/grad flag dropped


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None,
                       state: Any = None) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise UnsafePickleError(f"parameter data has unexpected type {type(data).__name__}")
    return data  # a plain tensor: we only want the values


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> torch.Tensor:
    if not (is_one_of(func, (_rebuild_tensor_v2, _rebuild_tensor, _rebuild_parameter))
            and is_one_of(new_type, _TENSOR_TYPES)):
        raise UnsafePickleError(f"_rebuild_from_type_v2 with {func!r} / {new_type!r} is not supported")
    if not isinstance(args, tuple):
        raise UnsafePickleError("_rebuild_from_type_v2 arguments must be a tuple")
    return func(*args)


def _load_storage_from_bytes(data: Any) -> torch.storage.TypedStorage:
    """``torch.storage._load_from_bytes`` without ``weights_only=False``."""
    if not isinstance(data, (bytes, bytearray)):
        raise UnsafePickleError(f"storage payload must be bytes, got {type(data).__name__}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TypedStorage deprecation notices
            storage = torch.load(io.BytesIO(bytes(data)), weights_only=True, map_location="cpu")
    except Exception as error:  # noqa: BLE001 -- any failure means a damaged or hostile storage
        raise PickleReadError(f"a tensor storage could not be read: {error}") from error
    if not isinstance(storage, torch.storage.TypedStorage):
        raise UnsafePickleError(f"storage payload decoded to {type(storage).__name__}, not a storage")
    return storage


def _reconstruct_persistent_obj(meta: Any) -> PersistentStub:
    """Stand-in for ``torch_utils.persistence._reconstruct_persistent_obj``: reads, never runs."""
    if not isinstance(meta, dict) or not isinstance(meta.get("class_name"), str):
        raise PickleReadError("persistent object meta is not a dict with a class_name")
    source = meta.get("module_src", "")
    source_bytes = source.encode("utf-8", "surrogatepass") if isinstance(source, str) else source
    if not isinstance(source_bytes, (bytes, bytearray)):
        raise PickleReadError(f"persistent object {meta['class_name']} has a non-text module_src")
    version = meta.get("version")
    if version != PERSISTENCE_VERSION:
        logger.warning("persistent object %s has persistence version %r (expected %d)",
                       meta["class_name"], version, PERSISTENCE_VERSION)
    if meta.get("type", "class") != "class":
        raise PickleReadError(f"persistent object {meta['class_name']} has unknown type {meta.get('type')!r}")
    return PersistentStub(meta["class_name"], hashlib.sha256(source_bytes).hexdigest(), meta.get("state"),
                          version if isinstance(version, int) else -1)


_TORCH_DTYPE_NAMES = ("float32", "float", "float64", "double", "float16", "half", "bfloat16", "int64", "long",
                      "int32", "int", "int16", "short", "int8", "uint8", "bool", "complex64", "complex128")

TRAINING_PICKLE_POLICY = UnpicklingPolicy(
    purpose="a weights file",
    safe_globals={
        **module_globals("torch._utils", _rebuild_tensor_v2=_rebuild_tensor_v2, _rebuild_tensor=_rebuild_tensor,
                         _rebuild_parameter=_rebuild_parameter, _rebuild_parameter_with_state=_rebuild_parameter),
        **module_globals("torch._tensor", _rebuild_from_type_v2=_rebuild_from_type_v2, Tensor=_TENSOR_TYPES[0]),
        **module_globals("torch.storage", _load_from_bytes=_load_storage_from_bytes),
        **module_globals("torch.nn.parameter", Parameter=_TENSOR_TYPES[1]),
        **module_globals("torch", Tensor=_TENSOR_TYPES[0], Size=torch.Size, device=torch.device,
                         **{name: getattr(torch, name) for name in _TORCH_DTYPE_NAMES}),
        **module_globals("torch_utils.persistence", _reconstruct_persistent_obj=_reconstruct_persistent_obj),
    },
    stub_unknown_globals=True,
    stubbable_library_modules=("torch.nn.modules.",),
    foreign_signatures=((b"PK\x03\x04", "a torch.save zip archive, not a legacy pickle; "
                                        "read it with torch.load(..., weights_only=True)"),),
)
assert all(isinstance(TRAINING_PICKLE_POLICY.safe_globals["torch", n], torch.dtype) for n in _TORCH_DTYPE_NAMES)


def load_legacy_pickle(source: str | os.PathLike | BinaryIO, *, max_bytes: int | None = DEFAULT_MAX_BYTES) -> Any:
    """Unpickle ``source`` (a path or a binary file) without importing or running its code.

    Tensors come back as plain CPU tensors, persistent objects as :class:`PersistentStub`, other
    classes as :class:`ReferenceStub`. Raises :class:`UnsafePickleError` for code-execution
    attempts and :class:`LegacyPickleError` for anything that is not a readable pickle.
    """
    result = restricted_load(source, TRAINING_PICKLE_POLICY, max_bytes=max_bytes)
    if type(result) is int and result == _TORCH_LEGACY_MAGIC:
        raise PickleReadError(f"{describe_source(source)} is a legacy torch.save file, not a pickle of objects; "
                              "read it with torch.load(..., weights_only=True)")
    return result
