"""Read third-party numpy pickles (FLAME ``.pkl``, FaceVerse ``.npy`` dicts) without running code.

A pickle is a small program: ``GLOBAL`` + ``REDUCE`` can call any importable function (the
classic ``os.system`` payload). :class:`RestrictedUnpickler` resolves globals from a fixed
allow-list only and never imports a module. The allow-list holds:

- numpy's own array/dtype/scalar reconstructors (they only build arrays);
- a few harmless builtins (``set``, ``frozenset``, ``object``, ``complex``, ``bytearray``) and
  ``_codecs.encode`` restricted to latin-1 (how Python 3 writes ``bytes`` at protocol 2);
- stand-ins for chumpy ``Ch`` objects and scipy sparse matrices, which keep their pickled state;
  :func:`to_plain_arrays` turns them into dense numpy arrays afterwards (a ``Ch`` holds its
  array in the ``x`` field; a sparse matrix holds ``data``/``indices``/``indptr`` or
  ``data``/``row``/``col`` and ``_shape``).

Anything else raises :class:`UnsafePickleError` before it is called. Python 2 pickles are read
with ``encoding="latin1"``, which numpy needs to rebuild arrays pickled under Python 2. This
guards against code execution; it does not bound memory (a crafted array shape can still ask
numpy for a large allocation, which fails with an error rather than running anything).
"""

from __future__ import annotations

import io
import logging
import pickle
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

logger = logging.getLogger(__name__)

_NDARRAY_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]
_NDARRAY_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]
_NUMPY_SCALAR = np.float64(0.0).__reduce__()[0]
_NUMPY_CORE_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")
_NUMPY_NUMERIC_MODULES = ("numpy.core.numeric", "numpy._core.numeric")


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A pickle asked for a global outside the allow-list (or is otherwise not loadable safely)."""


_MAX_DENSE_ELEMENTS = 1 << 31


def _state_dict(state: Any) -> dict:
    """The ``__dict__`` part of a pickled object state (a dict, or (dict, slots) at protocol 2)."""
    if isinstance(state, tuple) and len(state) == 2:
        state = state[0]
    return state if isinstance(state, dict) else {}


class PickledChumpyArray:
    """Stand-in for a chumpy ``Ch``: keeps the pickled state; the array is ``state['x']``."""

    def __new__(cls, *args: Any, **kwargs: Any) -> PickledChumpyArray:
        obj = super().__new__(cls)
        obj.state = {}
        return obj

    def __setstate__(self, state: Any) -> None:
        self.state = _state_dict(state)

    def to_array(self) -> np.ndarray:
        value = self.state.get("x")
        if value is None:
            raise UnsafePickleError("chumpy object has no 'x' array in its pickled state")
        array = np.asarray(to_plain_arrays(value))
        if array.dtype == object:
            raise UnsafePickleError("chumpy object's 'x' is not a numeric array")
        return array


class PickledSparseMatrix:
    """Stand-in for a scipy sparse matrix (csc/csr/coo) rebuilt densely from its pickled state."""

    sparse_format = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> PickledSparseMatrix:
        obj = super().__new__(cls)
        obj.state = {}
        return obj

    def __setstate__(self, state: Any) -> None:
        self.state = _state_dict(state)

    def to_dense(self) -> np.ndarray:
        state = self.state
        shape = state.get("_shape", state.get("shape"))
        sparse_format = self.sparse_format or str(state.get("format", ""))
        if shape is None or len(shape) != 2:
            raise UnsafePickleError("sparse matrix pickle has no 2-d shape")
        rows, cols = int(shape[0]), int(shape[1])
        if rows < 0 or cols < 0 or rows * cols > _MAX_DENSE_ELEMENTS:
            raise UnsafePickleError(f"sparse matrix shape {shape} is not a plausible model array")
        data = np.asarray(state["data"])
        dense = np.zeros((rows, cols), dtype=data.dtype)
        if sparse_format in ("csc", "csr"):
            indices = np.asarray(state["indices"], dtype=np.int64)
            indptr = np.asarray(state["indptr"], dtype=np.int64)
            major = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
            if sparse_format == "csc":
                np.add.at(dense, (indices, major), data)
            else:
                np.add.at(dense, (major, indices), data)
        elif sparse_format == "coo":
            row = np.asarray(state.get("row", state.get("coords", [None, None])[0]), dtype=np.int64)
            col = np.asarray(state.get("col", state.get("coords", [None, None])[1]), dtype=np.int64)
            np.add.at(dense, (row, col), data)
        else:
            raise UnsafePickleError(f"unsupported sparse matrix format {sparse_format!r}")
        return dense


def _sparse_class(fmt: str) -> type[PickledSparseMatrix]:
    return type(f"Pickled{fmt.upper()}Matrix", (PickledSparseMatrix,), {"sparse_format": fmt})


_SPARSE_CLASSES = {fmt: _sparse_class(fmt) for fmt in ("csc", "csr", "coo")}


def _latin1_encode(text: Any, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as Python 3 pickles bytes at protocol < 3; only latin-1 is allowed."""
    if not isinstance(text, str) or encoding.lower().replace("-", "") != "latin1":
        raise UnsafePickleError("_codecs.encode is only allowed on text with the latin-1 codec")
    return text.encode("latin1")


def _stub_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """``copy_reg._reconstructor`` (protocol 0/1 objects), limited to the stand-in classes."""
    if not (isinstance(cls, type) and issubclass(cls, (PickledChumpyArray, PickledSparseMatrix))):
        raise UnsafePickleError(f"_reconstructor called on disallowed class {cls!r}")
    if base is not object:
        raise UnsafePickleError("_reconstructor with a base other than object is not allowed")
    return cls.__new__(cls)


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {}
    for module in _NUMPY_CORE_MODULES:
        allowed[(module, "_reconstruct")] = _NDARRAY_RECONSTRUCT
        allowed[(module, "scalar")] = _NUMPY_SCALAR
    for module in _NUMPY_NUMERIC_MODULES:
        allowed[(module, "_frombuffer")] = _NDARRAY_FROMBUFFER
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    for module in ("builtins", "__builtin__"):
        for name, value in (("set", set), ("frozenset", frozenset), ("object", object),
                            ("complex", complex), ("bytearray", bytearray)):
            allowed[(module, name)] = value
    allowed[("_codecs", "encode")] = _latin1_encode
    for module in ("copy_reg", "copyreg"):
        allowed[(module, "_reconstructor")] = _stub_reconstructor
    allowed[("chumpy.ch", "Ch")] = PickledChumpyArray
    allowed[("chumpy", "Ch")] = PickledChumpyArray
    for fmt, cls in _SPARSE_CLASSES.items():
        for module in (f"scipy.sparse.{fmt}", f"scipy.sparse._{fmt}", "scipy.sparse"):
            allowed[(module, f"{fmt}_matrix")] = cls
            allowed[(module, f"{fmt}_array")] = cls
    return allowed


_ALLOWED = _allowed_globals()


class RestrictedUnpickler(pickle._Unpickler):
    """An unpickler that resolves globals only from a fixed allow-list and imports nothing.

    Built on the pure-Python unpickler on purpose: its memo is a dict, so a crafted ``LONG_BINPUT``
    index cannot make it allocate a huge memo array as the C implementation would."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load global {module}.{name} from an untrusted pickle") from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("persistent ids are not allowed in an untrusted pickle")


def to_plain_arrays(obj: Any) -> Any:
    """Replace chumpy / sparse stand-ins by dense numpy arrays, recursing into containers."""
    if isinstance(obj, PickledChumpyArray):
        return obj.to_array()
    if isinstance(obj, PickledSparseMatrix):
        return obj.to_dense()
    if isinstance(obj, dict):
        return {key: to_plain_arrays(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [to_plain_arrays(value) for value in obj]
    if isinstance(obj, tuple):
        return tuple(to_plain_arrays(value) for value in obj)
    return obj


def load_pickle_safely(source: str | Path | bytes | BinaryIO) -> Any:
    """Unpickle ``source`` (a path, bytes or a binary file) with :class:`RestrictedUnpickler`.

    Chumpy objects and sparse matrices come back as dense numpy arrays. Raises
    :class:`UnsafePickleError` for any disallowed global, before calling it.
    """
    if isinstance(source, (str, Path)):
        with open(source, "rb") as handle:
            return load_pickle_safely(handle)
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        return to_plain_arrays(RestrictedUnpickler(stream, encoding="latin1").load())
    except UnsafePickleError:
        raise
    except Exception as exc:  # malformed stream or state: report it as one clear error
        raise UnsafePickleError(f"could not unpickle safely: {type(exc).__name__}: {exc}") from None


def _read_npy(stream: BinaryIO) -> Any:
    """One ``.npy`` stream: plain arrays via numpy, object arrays via the restricted unpickler."""
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
    elif version in ((2, 0), (3, 0)):
        shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
    else:
        raise UnsafePickleError(f"unsupported .npy format version {version}")
    if not dtype.hasobject:
        count = int(np.prod(shape, dtype=np.int64))
        data = np.frombuffer(stream.read(count * dtype.itemsize), dtype=dtype, count=count)
        order = "F" if fortran_order else "C"
        return data.reshape(shape, order=order).copy()
    array = load_pickle_safely(stream)
    if isinstance(array, np.ndarray) and array.dtype == object and array.ndim == 0:
        return to_plain_arrays(array.item())
    return array


def load_numpy_file_safely(path: str | Path) -> Any:
    """Load a ``.npy`` or ``.npz`` file without executing code.

    ``.npy`` holding a pickled object (``np.save`` of a dict, as FaceVerse ships its model) is
    read with :class:`RestrictedUnpickler` and returned as that object (a 0-d object array is
    unwrapped). ``.npz`` comes back as a ``dict`` of its members, each read the same way.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"file not found: {path}")
    with open(path, "rb") as handle:
        head = handle.read(6)
        handle.seek(0)
        if head.startswith(b"PK"):
            with zipfile.ZipFile(handle) as archive:
                result = {}
                for member in archive.namelist():
                    key = member[:-4] if member.endswith(".npy") else member
                    with archive.open(member) as stream:
                        result[key] = _read_npy(io.BytesIO(stream.read()))
                return result
        if head == b"\x93NUMPY":
            return _read_npy(handle)
    raise ValueError(f"{path} is neither a .npy nor a .npz file")
