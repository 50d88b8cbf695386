"""Read third-party ``.pkl`` checkpoints (EG3D, StyleGAN2-ADA/3, Next3D, InvertAvatar) without
executing anything they contain.

Those files are plain ``pickle.dump`` output. Persistent classes (``torch_utils.persistence``)
are stored as a call to ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` whose meta
dict carries the defining module's full source text (which the original loader ``exec``\\ s) and
the instance ``__dict__``; other classes (torch containers, renderers, ``dnnlib.util.EasyDict``)
are stored by reference; tensors reduce to ``torch._utils._rebuild_tensor_v2`` over a storage
rebuilt by ``torch.storage._load_from_bytes`` from a legacy ``torch.save`` byte string.

:func:`load_legacy_pickle` replays the opcode stream with a restricted unpickler:

* a short allowlist of globals map to our own re-implementations (tensor/parameter rebuilders
  with bounds checks, storage bytes read by ``torch.load(weights_only=True)``, numpy
  scalar/dtype/array, ``OrderedDict`` and a few inert builtins);
* ``_reconstruct_persistent_obj`` returns a :class:`PersistentStub` (class name, SHA-256 of the
  source that is never run, state);
* any other global of the standard library, ``torch`` or ``numpy`` is refused with
  :class:`UnsafePickleError` (``os.system``, ``builtins.exec``/``eval``/``getattr``,
  ``subprocess.*``, ``torch.load``...), before anything is called;
* every remaining global (project code: ``dnnlib``, ``training*``, ``torch.nn.modules.*``...)
  becomes an inert :class:`ReferenceStub` class: "calling" it only records the arguments, BUILD
  stores the state, SETITEMS/APPENDS record items. No stub ever imports or calls real code.

Only REDUCE/NEWOBJ/INST/OBJ on those objects, and BUILD on stubs and numpy objects, are allowed;
persistent ids and extension codes are refused. The pure-Python unpickler is used on purpose: it
keeps the memo in a dict (the C one can be made to allocate a huge memo array) and every read is
checked against the bytes left in the file, so memory stays proportional to the file size.
Pickles of protocol 2 to 5 are supported (the training loops write the default, 4); the
protocol-0/1 helper ``copyreg._reconstructor`` is refused like any other standard-library global.
"""

from __future__ import annotations

import _compat_pickle
import collections
import hashlib
import io
import logging
import math
import os
import pickle
import sys
import warnings
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from avatar4d.errors import UserError

logger = logging.getLogger(__name__)

PERSISTENCE_VERSION = 6  # torch_utils.persistence._version in EG3D / StyleGAN2-ADA / StyleGAN3
DEFAULT_MAX_BYTES = 16 * 2**30
_MAX_GLOBAL_NAME = 512
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # first object of a non-zip torch.save file


class LegacyPickleError(UserError):
    """The file is not a readable pickle (empty, truncated, corrupt, wrong format)."""


class UnsafePickleError(LegacyPickleError):
    """The pickle asks for something a weights file never needs (a call to ``os.system``...)."""


# ----------------------------------------------------------------------------------------------
# Stubs: what unknown objects become.


class PickleStub:
    """Base of the inert stand-ins for objects whose code is not loaded."""

    state: Any = None

    @property
    def qualname(self) -> str:
        raise NotImplementedError


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


class ReferenceStub(PickleStub):
    """An instance of a class pickled by reference; subclassed once per global name."""

    stub_module: str = ""
    stub_name: str = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> ReferenceStub:
        obj = object.__new__(cls)
        obj.args, obj.kwargs = args, kwargs
        obj.state, obj.dict_items, obj.list_items = None, {}, []
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # arguments were recorded by __new__
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:  # SETITEMS of dict subclasses
        self.dict_items[key] = value

    def append(self, value: Any) -> None:  # APPENDS of list subclasses
        self.list_items.append(value)

    def extend(self, values: Any) -> None:
        self.list_items.extend(values)

    def add(self, value: Any) -> None:  # ADDITEMS of set subclasses
        self.list_items.append(value)

    @property
    def qualname(self) -> str:
        return f"{self.stub_module}.{self.stub_name}"

    def __repr__(self) -> str:
        return f"ReferenceStub({self.qualname!r})"


def stub_state(obj: Any) -> dict | None:
    """The ``__dict__`` state recorded on a stub, or None when there is none (or not a stub)."""
    state = obj.state if isinstance(obj, PickleStub) else None
    return state if isinstance(state, dict) else None


# ----------------------------------------------------------------------------------------------
# Safe re-implementations of the allowlisted reconstructors.


class _Marker:
    """A non-callable placeholder for a class that may only appear as an argument."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


_NDARRAY = _Marker("numpy.ndarray")
_TENSOR_TYPES = (_Marker("torch.Tensor"), _Marker("torch.nn.Parameter"))


def _is_one_of(obj: Any, allowed: tuple) -> bool:
    return any(obj is candidate for candidate in allowed)  # identity: never call a hostile __eq__


def _check_ints(values: Any, what: str) -> tuple[int, ...]:
    if not isinstance(values, (tuple, list, torch.Size)) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise UnsafePickleError(f"tensor {what} must be a tuple of non-negative ints, got {values!r}")
    return tuple(values)


def _rebuild_tensor(storage: Any, storage_offset: int, size: Any, stride: Any) -> torch.Tensor:
    if not isinstance(storage, torch.storage.TypedStorage):
        raise UnsafePickleError(f"tensor storage has unexpected type {type(storage).__name__}")
    size, stride = _check_ints(size, "size"), _check_ints(stride, "stride")
    (storage_offset,) = _check_ints((storage_offset,), "offset")
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
    if not (_is_one_of(func, (_rebuild_tensor_v2, _rebuild_tensor, _rebuild_parameter))
            and _is_one_of(new_type, _TENSOR_TYPES)):
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
        raise LegacyPickleError(f"a tensor storage could not be read: {error}") from error
    if not isinstance(storage, torch.storage.TypedStorage):
        raise UnsafePickleError(f"storage payload decoded to {type(storage).__name__}, not a storage")
    return storage


def _check_numpy_dtype(dtype: Any) -> np.dtype:
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise UnsafePickleError(f"numpy dtype {dtype!r} is not a plain numeric dtype")
    return dtype


def _numpy_scalar(dtype: Any, data: Any = None) -> np.generic:
    dtype = _check_numpy_dtype(dtype)
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise UnsafePickleError(f"numpy scalar of {dtype} needs {dtype.itemsize} bytes")
    return np.frombuffer(data, dtype=dtype)[0]


def _numpy_dtype(spec: Any, align: Any = False, copy: Any = True) -> np.dtype:
    if not isinstance(spec, str) or len(spec) > 16:
        raise UnsafePickleError(f"numpy dtype spec {spec!r} is not a short type string")
    return np.dtype(spec, align=bool(align), copy=True)  # copy: BUILD must not touch numpy's singletons


def _numpy_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not _NDARRAY:
        raise UnsafePickleError(f"numpy array subtype {subtype!r} is not supported")
    return np.empty((0,), dtype=np.uint8)  # BUILD fills it (checked in _load_build)


def _numpy_frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """numpy's protocol-5 array reconstructor (in-band buffer)."""
    dtype = _check_numpy_dtype(dtype)
    if not isinstance(buffer, (bytes, bytearray)) or order not in ("C", "F"):
        raise UnsafePickleError("numpy _frombuffer needs a bytes buffer and order 'C' or 'F'")
    return np.frombuffer(bytes(buffer), dtype=dtype).reshape(_check_ints(shape, "shape"), order=order).copy()


def _codecs_encode(text: Any, encoding: Any) -> bytes:
    """How protocol 2 stores ``bytes``: ``_codecs.encode(latin1_text, 'latin1')``."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError("_codecs.encode is only allowed as the protocol-2 form of bytes")
    return text.encode("latin1")


def _is_stub_class(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, ReferenceStub)


def _reconstruct_persistent_obj(meta: Any) -> PersistentStub:
    """Stand-in for ``torch_utils.persistence._reconstruct_persistent_obj``: reads, never runs."""
    if not isinstance(meta, dict) or not isinstance(meta.get("class_name"), str):
        raise LegacyPickleError("persistent object meta is not a dict with a class_name")
    source = meta.get("module_src", "")
    source_bytes = source.encode("utf-8", "surrogatepass") if isinstance(source, str) else source
    if not isinstance(source_bytes, (bytes, bytearray)):
        raise LegacyPickleError(f"persistent object {meta['class_name']} has a non-text module_src")
    version = meta.get("version")
    if version != PERSISTENCE_VERSION:
        logger.warning("persistent object %s has persistence version %r (expected %d)",
                       meta["class_name"], version, PERSISTENCE_VERSION)
    if meta.get("type", "class") != "class":
        raise LegacyPickleError(f"persistent object {meta['class_name']} has unknown type {meta.get('type')!r}")
    return PersistentStub(meta["class_name"], hashlib.sha256(source_bytes).hexdigest(), meta.get("state"),
                          version if isinstance(version, int) else -1)


_TORCH_DTYPE_NAMES = ("float32", "float", "float64", "double", "float16", "half", "bfloat16", "int64", "long",
                      "int32", "int", "int16", "short", "int8", "uint8", "bool", "complex64", "complex128")

_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
    ("torch._tensor", "Tensor"): _TENSOR_TYPES[0],
    ("torch", "Tensor"): _TENSOR_TYPES[0],
    ("torch.nn.parameter", "Parameter"): _TENSOR_TYPES[1],
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("numpy", "dtype"): _numpy_dtype,
    ("numpy", "ndarray"): _NDARRAY,
    **{(f"numpy.{core}.multiarray", "scalar"): _numpy_scalar for core in ("core", "_core")},
    **{(f"numpy.{core}.multiarray", "_reconstruct"): _numpy_reconstruct for core in ("core", "_core")},
    **{(f"numpy.{core}.numeric", "_frombuffer"): _numpy_frombuffer for core in ("core", "_core")},
    ("_codecs", "encode"): _codecs_encode,
    **{("torch", name): getattr(torch, name) for name in _TORCH_DTYPE_NAMES},
}
assert all(isinstance(_SAFE_GLOBALS["torch", n], torch.dtype) for n in _TORCH_DTYPE_NAMES)
_SAFE_CALLABLES = tuple(v for v in _SAFE_GLOBALS.values() if callable(v) and not isinstance(v, torch.dtype))
_REFUSED_TOP_LEVEL = {"torch", "numpy"} | set(sys.stdlib_module_names)


# ----------------------------------------------------------------------------------------------
# The unpickler.


class _BoundedReader:
    """File wrapper that refuses reads past the end instead of allocating what the pickle claims."""

    def __init__(self, raw: BinaryIO, remaining: int | None) -> None:
        self._raw, self._remaining = raw, remaining

    def read(self, size: int = -1) -> bytes:
        if self._remaining is not None:
            if size is None or size < 0:
                size = self._remaining
            if size > self._remaining:
                raise LegacyPickleError(f"pickle declares {size} bytes but only {self._remaining} remain "
                                        "(truncated or corrupt file)")
        data = self._raw.read(size)
        if self._remaining is not None:
            self._remaining -= len(data)
        return data

    def readline(self) -> bytes:
        line = self._raw.readline(-1 if self._remaining is None else self._remaining)
        if self._remaining is not None:
            self._remaining -= len(line)
        return line


class _RestrictedUnpickler(pickle._Unpickler):  # pure-Python on purpose, see the module docstring
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: _BoundedReader) -> None:
        super().__init__(file)
        self._stub_classes: dict[tuple[str, str], type[ReferenceStub]] = {}

    def find_class(self, module: str, name: str) -> Any:
        if len(module) > _MAX_GLOBAL_NAME or len(name) > _MAX_GLOBAL_NAME:
            raise UnsafePickleError("pickle global name is implausibly long")
        # Python-2 names (protocol 2 writes __builtin__.set); mapped whatever the protocol, so that
        # "__builtin__.eval" is refused like "builtins.eval".
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[module, name]
        top_level = module.split(".", 1)[0]
        if top_level in _REFUSED_TOP_LEVEL and not module.startswith("torch.nn.modules."):
            raise UnsafePickleError(f"refusing pickle global {module}.{name}: a weights file never needs it")
        key = (module, name)
        if key not in self._stub_classes:
            self._stub_classes[key] = type(name if name.isidentifier() else "Stub", (ReferenceStub,),
                                           {"stub_module": module, "stub_name": name})
        return self._stub_classes[key]

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("pickle uses persistent ids (torch.save zip/legacy format?); refused")

    @staticmethod
    def _check_callable(func: Any) -> None:
        if not (_is_stub_class(func) or _is_one_of(func, _SAFE_CALLABLES)):
            raise UnsafePickleError(f"refusing to call {func!r}")

    def _load_reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        self._check_callable(func)
        if not isinstance(args, tuple):
            raise LegacyPickleError("REDUCE arguments are not a tuple")
        self.stack[-1] = func(*args)

    def _load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        if not (_is_stub_class(cls) or _is_one_of(cls, (collections.OrderedDict, set, frozenset))):
            raise UnsafePickleError(f"refusing to construct {cls!r}")
        self.append(cls.__new__(cls, *args))

    def _load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        if kwargs:
            raise UnsafePickleError("NEWOBJ_EX with keyword arguments is not supported")
        self._load_newobj()

    def _instantiate(self, klass: Any, args: list) -> None:  # INST / OBJ
        self._check_callable(klass)
        self.append(klass(*args))

    def _load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, PickleStub):
            inst.state = state
        elif isinstance(inst, np.dtype):  # a dtype instance (never the class: that is not an instance)
            inst.__setstate__(state)
        elif type(inst) is np.ndarray:
            if not (isinstance(state, tuple) and len(state) in (4, 5) and isinstance(state[-3], np.dtype)):
                raise UnsafePickleError("numpy array state has an unexpected layout")
            _check_numpy_dtype(state[-3])
            inst.__setstate__(state)
        else:
            raise UnsafePickleError(f"refusing to set the state of a {type(inst).__name__} object")

    def _refuse_extension(self) -> None:
        raise UnsafePickleError("pickle uses copyreg extension codes; refused")

    dispatch[pickle.REDUCE[0]] = _load_reduce
    dispatch[pickle.NEWOBJ[0]] = _load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = _load_newobj_ex
    dispatch[pickle.BUILD[0]] = _load_build
    for _opcode in (pickle.EXT1, pickle.EXT2, pickle.EXT4):
        dispatch[_opcode[0]] = _refuse_extension
    del _opcode


def _describe(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return str(getattr(source, "name", type(source).__name__))


def load_legacy_pickle(source: str | os.PathLike | BinaryIO, *, max_bytes: int | None = DEFAULT_MAX_BYTES) -> Any:
    """Unpickle ``source`` (a path or a binary file) without importing or running its code.

    Tensors come back as plain CPU tensors, persistent objects as :class:`PersistentStub`, other
    classes as :class:`ReferenceStub`. Raises :class:`UnsafePickleError` for code-execution
    attempts and :class:`LegacyPickleError` for anything that is not a readable pickle.
    """
    name = _describe(source)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise LegacyPickleError(f"{path} is not a file")
        with path.open("rb") as handle:
            return _load_stream(handle, name, max_bytes)
    return _load_stream(source, name, max_bytes)


def _load_stream(handle: BinaryIO, name: str, max_bytes: int | None) -> Any:
    remaining = None
    try:
        start = handle.tell()
        remaining = handle.seek(0, os.SEEK_END) - start
        handle.seek(start)
    except (AttributeError, OSError, io.UnsupportedOperation):
        pass
    if remaining == 0:
        raise LegacyPickleError(f"{name} is empty")
    if remaining is not None and max_bytes is not None and remaining > max_bytes:
        raise LegacyPickleError(f"{name} has {remaining} bytes, more than max_bytes={max_bytes}")
    if remaining is not None:
        head = handle.read(4)
        handle.seek(start)
        if head.startswith(b"PK\x03\x04"):
            raise LegacyPickleError(f"{name} is a torch.save zip archive, not a legacy pickle; "
                                    "read it with torch.load(..., weights_only=True)")
    unpickler = _RestrictedUnpickler(_BoundedReader(handle, remaining))
    try:
        result = unpickler.load()
    except LegacyPickleError as error:
        raise type(error)(f"{name}: {error}") from error
    except MemoryError as error:
        raise LegacyPickleError(f"{name}: pickle asks for more memory than is available") from error
    except Exception as error:  # noqa: BLE001 -- every other failure means "not a readable pickle"
        detail = "unexpected end of data" if isinstance(error, EOFError) else f"{type(error).__name__}: {error}"
        raise LegacyPickleError(f"{name} is not a readable pickle ({detail})") from error
    if type(result) is int and result == _TORCH_LEGACY_MAGIC:
        raise LegacyPickleError(f"{name} is a legacy torch.save file, not a pickle of objects; "
                                "read it with torch.load(..., weights_only=True)")
    logger.debug("read legacy pickle %s (%d stub classes)", name, len(unpickler._stub_classes))
    return result
