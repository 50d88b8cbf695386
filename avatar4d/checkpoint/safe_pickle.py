"""The restricted unpickler behind every reader of third-party pickles: it rebuilds plain data and
never imports or runs the code a pickle names (``GLOBAL`` + ``REDUCE`` can call anything, e.g.
``os.system``). :func:`restricted_load` replays the opcode stream with :class:`RestrictedUnpickler`:

* globals resolve from a fixed table only: the core (checked re-implementations of numpy's
  array / dtype / scalar reconstructors, inert builtins, ``OrderedDict``, latin-1 ``_codecs.encode``
  and ``bytearray``, ``copyreg._reconstructor`` limited to stubs) plus the globals of the file
  family's :class:`UnpicklingPolicy` (the extension point);
* other globals of the standard library, ``torch`` or ``numpy`` are refused with
  :class:`UnsafePickleError` before anything is called; the remaining ones are refused too or,
  where the policy says so, become inert :class:`ReferenceStub` classes (calls only record their
  arguments, BUILD stores the state);
* REDUCE/NEWOBJ/INST/OBJ only on allowed callables and stub classes, BUILD only on stubs and numpy
  dtypes/arrays; persistent ids and extension codes are refused.

The pure-Python unpickler is used on purpose: its memo is a dict (the C one can be made to
allocate a huge memo array) and every read is checked against the bytes left in the file, so
memory stays proportional to the file size. Readers built on it:
:mod:`avatar4d.checkpoint.legacy_pickle` (EG3D / Next3D training pickles) and
:mod:`avatar4d.geometry.morphable.model_files` (FLAME ``generic_model.pkl``, FaceVerse ``.npy``).
"""

from __future__ import annotations

import _compat_pickle
import collections
import dataclasses
import io
import logging
import os
import pickle
import sys
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, BinaryIO

import numpy as np

from avatar4d.errors import UserError

logger = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 16 * 2**30
_MAX_GLOBAL_NAME = 512
_LIBRARY_TOP_LEVEL = frozenset({"torch", "numpy"} | set(sys.stdlib_module_names))


class PickleReadError(UserError):
    """The file is not a readable pickle (empty, truncated, corrupt, wrong format)."""


class UnsafePickleError(PickleReadError):
    """The pickle asks for something a data file never needs (a call to ``os.system``...)."""


# ----------------------------------------------------------------------------------------------
# Stubs: what objects of classes whose code is never loaded become.


class PickleStub:
    """Base of the inert stand-ins for objects whose code is not loaded."""

    state: Any = None

    @property
    def qualname(self) -> str:
        raise NotImplementedError


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


def is_stub_class(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, ReferenceStub)


class InertMarker:
    """A non-callable placeholder for a class that may only appear as an argument."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


def is_one_of(obj: Any, allowed: tuple) -> bool:
    """Identity membership: never calls a hostile ``__eq__``."""
    return any(obj is candidate for candidate in allowed)


def checked_ints(values: Any, what: str) -> tuple[int, ...]:
    """``values`` as a tuple of non-negative ints (a shape, stride or offset read from a pickle)."""
    if not isinstance(values, (tuple, list)) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise UnsafePickleError(f"{what} must be a tuple of non-negative ints, got {values!r}")
    return tuple(values)


# ----------------------------------------------------------------------------------------------
# Safe re-implementations of the core reconstructors.


NDARRAY = InertMarker("numpy.ndarray")
_OBJECT = InertMarker("builtins.object")


def check_numpy_dtype(dtype: Any, *, allow_object: bool = False) -> np.dtype:
    if not isinstance(dtype, np.dtype) or (dtype.hasobject and not allow_object):
        raise UnsafePickleError(f"numpy dtype {dtype!r} is not a plain numeric dtype")
    return dtype


def _numpy_scalar(dtype: Any, data: Any = None) -> np.generic:
    dtype = check_numpy_dtype(dtype)
    if isinstance(data, str):  # a Python-2 pickle read with encoding="latin1"
        data = data.encode("latin1")
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise UnsafePickleError(f"numpy scalar of {dtype} needs {dtype.itemsize} bytes")
    return np.frombuffer(data, dtype=dtype)[0]


def _numpy_dtype(spec: Any, align: Any = False, copy: Any = True) -> np.dtype:
    if not isinstance(spec, str) or len(spec) > 16:
        raise UnsafePickleError(f"numpy dtype spec {spec!r} is not a short type string")
    return np.dtype(spec, align=bool(align), copy=True)  # copy: BUILD must not touch numpy's singletons


def _numpy_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not NDARRAY:
        raise UnsafePickleError(f"numpy array subtype {subtype!r} is not supported")
    return np.empty((0,), dtype=np.uint8)  # BUILD fills it (checked in RestrictedUnpickler)


def _numpy_frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """numpy's protocol-5 array reconstructor (in-band buffer)."""
    dtype = check_numpy_dtype(dtype)
    if not isinstance(buffer, (bytes, bytearray)) or order not in ("C", "F"):
        raise UnsafePickleError("numpy _frombuffer needs a bytes buffer and order 'C' or 'F'")
    return np.frombuffer(bytes(buffer), dtype=dtype).reshape(checked_ints(shape, "array shape"), order=order).copy()


def _is_latin1(encoding: Any) -> bool:
    return isinstance(encoding, str) and encoding.lower().replace("-", "").replace("_", "") == "latin1"


def _codecs_encode(text: Any, encoding: Any = "latin1") -> bytes:
    """How protocols 0-2 store ``bytes``: ``_codecs.encode(latin1_text, 'latin1')``."""
    if not isinstance(text, str) or not _is_latin1(encoding):
        raise UnsafePickleError("_codecs.encode is only allowed as the protocol-0/2 form of bytes (latin-1)")
    return text.encode("latin1")


def _bytearray(source: Any = b"", encoding: Any = None) -> bytearray:
    """``bytearray`` of bytes or latin-1 text only (``bytearray(n)`` would allocate n bytes)."""
    if isinstance(source, str) and _is_latin1(encoding):
        return bytearray(source.encode("latin1"))
    if not isinstance(source, (bytes, bytearray)) or encoding is not None:
        raise UnsafePickleError("bytearray is only allowed over bytes or latin-1 text")
    return bytearray(source)


def _reconstructor(cls: Any, base: Any, state: Any = None) -> ReferenceStub:
    """``copyreg._reconstructor`` (protocol-0/1 objects), limited to stub classes over ``object``."""
    if not is_stub_class(cls):
        raise UnsafePickleError(f"_reconstructor called on disallowed class {cls!r}")
    if base is not _OBJECT:
        raise UnsafePickleError("_reconstructor with a base other than object is not allowed")
    return cls.__new__(cls)


def module_globals(module: str, **members: Any) -> dict[tuple[str, str], Any]:
    """Allowlist entries ``{(module, name): stand_in}`` for the members of one module."""
    return {(module, name): value for name, value in members.items()}


CORE_SAFE_GLOBALS: Mapping[tuple[str, str], Any] = MappingProxyType({
    **module_globals("collections", OrderedDict=collections.OrderedDict),
    **module_globals("builtins", set=set, frozenset=frozenset, slice=slice, complex=complex, bytearray=_bytearray,
                     object=_OBJECT),
    **module_globals("copyreg", _reconstructor=_reconstructor),
    **module_globals("_codecs", encode=_codecs_encode),
    **module_globals("numpy", dtype=_numpy_dtype, ndarray=NDARRAY),
    **module_globals("numpy.core.multiarray", scalar=_numpy_scalar, _reconstruct=_numpy_reconstruct),
    **module_globals("numpy._core.multiarray", scalar=_numpy_scalar, _reconstruct=_numpy_reconstruct),
    **module_globals("numpy.core.numeric", _frombuffer=_numpy_frombuffer),
    **module_globals("numpy._core.numeric", _frombuffer=_numpy_frombuffer),
})
_CONSTRUCTIBLE = (collections.OrderedDict, set, frozenset)  # NEWOBJ targets besides stub classes


@dataclasses.dataclass(frozen=True)
class UnpicklingPolicy:
    """What one family of files may hold on top of the core allowlist."""

    purpose: str  # what the files are, for messages: "a weights file"
    # (module, name) -> stand-in: a checked function, an InertMarker or a ReferenceStub subclass
    safe_globals: Mapping[tuple[str, str], Any] = dataclasses.field(default_factory=dict)
    stub_unknown_globals: bool = False  # globals outside stdlib/torch/numpy become stubs (else refused)
    stubbable_library_modules: tuple[str, ...] = ()  # module prefixes in those libraries that may be stubbed
    allow_object_arrays: bool = False  # numpy object arrays (np.save of a dict); items are restricted too
    encoding: str = "ASCII"  # of Python-2 str; "latin1" also rebuilds Python-2 numpy arrays
    foreign_signatures: tuple[tuple[bytes, str], ...] = ()  # (file prefix, what the file is instead)


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
                raise PickleReadError(f"pickle declares {size} bytes but only {self._remaining} remain "
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


class RestrictedUnpickler(pickle._Unpickler):  # pure-Python on purpose, see the module docstring
    """Unpickler that resolves globals from the core table and ``policy`` only (see the module)."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: BinaryIO, policy: UnpicklingPolicy) -> None:
        super().__init__(file, encoding=policy.encoding)
        self.policy = policy
        self._globals = {**CORE_SAFE_GLOBALS, **policy.safe_globals}
        self._callables = tuple(value for value in self._globals.values() if callable(value))
        self.stub_classes: dict[tuple[str, str], type[ReferenceStub]] = {}

    def find_class(self, module: str, name: str) -> Any:
        if len(module) > _MAX_GLOBAL_NAME or len(name) > _MAX_GLOBAL_NAME:
            raise UnsafePickleError("pickle global name is implausibly long")
        # Python-2 names (__builtin__.set, copy_reg); mapped whatever the protocol, so that
        # "__builtin__.eval" is refused like "builtins.eval".
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        key = (module, name)
        if key in self._globals:
            return self._globals[key]
        if not self._may_stub(module):
            raise UnsafePickleError(f"refusing pickle global {module}.{name}: {self.policy.purpose} never needs it")
        if key not in self.stub_classes:
            self.stub_classes[key] = type(name if name.isidentifier() else "Stub", (ReferenceStub,),
                                          {"stub_module": module, "stub_name": name})
        return self.stub_classes[key]

    def _may_stub(self, module: str) -> bool:
        if not self.policy.stub_unknown_globals:
            return False
        return (module.split(".", 1)[0] not in _LIBRARY_TOP_LEVEL
                or module.startswith(self.policy.stubbable_library_modules))

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("pickle uses persistent ids (torch.save zip/legacy format?); refused")

    def _check_callable(self, func: Any) -> None:
        if not (is_stub_class(func) or is_one_of(func, self._callables)):
            raise UnsafePickleError(f"refusing to call {func!r}")

    def _load_reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        self._check_callable(func)
        if not isinstance(args, tuple):
            raise PickleReadError("REDUCE arguments are not a tuple")
        self.stack[-1] = func(*args)

    def _load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        if not (is_stub_class(cls) or is_one_of(cls, _CONSTRUCTIBLE)):
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
            check_numpy_dtype(state[-3], allow_object=self.policy.allow_object_arrays)
            inst.__setstate__(state)  # object arrays need a list of (already restricted) items
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


def describe_source(source: Any) -> str:
    """How messages name ``source``: its path, a stream's ``name``, else its type."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, (bytes, bytearray)):
        return "pickle bytes"
    return str(getattr(source, "name", type(source).__name__))


def restricted_load(source: str | os.PathLike | bytes | BinaryIO, policy: UnpicklingPolicy, *,
                    max_bytes: int | None = DEFAULT_MAX_BYTES, name: str | None = None) -> Any:
    """Unpickle ``source`` (a path, bytes or a binary file read from its current position) under
    ``policy``, without importing or running anything it names.

    Raises :class:`UnsafePickleError` for anything outside the core table and the policy, and
    :class:`PickleReadError` for anything that is not a readable pickle (messages start with
    ``name``, by default the path or the stream's name).
    """
    name = name or describe_source(source)
    if isinstance(source, (bytes, bytearray)):
        return _load_stream(io.BytesIO(bytes(source)), name, policy, max_bytes)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise PickleReadError(f"{path} is not a file")
        with path.open("rb") as handle:
            return _load_stream(handle, name, policy, max_bytes)
    return _load_stream(source, name, policy, max_bytes)


def _load_stream(handle: BinaryIO, name: str, policy: UnpicklingPolicy, max_bytes: int | None) -> Any:
    remaining = None
    try:
        start = handle.tell()
        remaining = handle.seek(0, os.SEEK_END) - start
        handle.seek(start)
    except (AttributeError, OSError, io.UnsupportedOperation):
        pass
    if remaining == 0:
        raise PickleReadError(f"{name} is empty")
    if remaining is not None and max_bytes is not None and remaining > max_bytes:
        raise PickleReadError(f"{name} has {remaining} bytes, more than max_bytes={max_bytes}")
    if remaining is not None and policy.foreign_signatures:
        head = handle.read(max(len(signature) for signature, _ in policy.foreign_signatures))
        handle.seek(start)
        for signature, what_instead in policy.foreign_signatures:
            if head.startswith(signature):
                raise PickleReadError(f"{name} is {what_instead}")
    unpickler = RestrictedUnpickler(_BoundedReader(handle, remaining), policy)
    try:
        result = unpickler.load()
    except PickleReadError as error:
        raise type(error)(f"{name}: {error}") from error
    except MemoryError as error:
        raise PickleReadError(f"{name}: pickle asks for more memory than is available") from error
    except Exception as error:  # noqa: BLE001 -- every other failure means "not a readable pickle"
        detail = "unexpected end of data" if isinstance(error, EOFError) else f"{type(error).__name__}: {error}"
        raise PickleReadError(f"{name} is not a readable pickle ({detail})") from error
    logger.debug("read %s %s (%d stub classes)", policy.purpose, name, len(unpickler.stub_classes))
    return result
