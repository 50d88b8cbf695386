"""Read FLAME / FaceVerse model files (``generic_model.pkl``, ``np.save``'d ``.npy`` dicts,
``.npz``) without running any code they contain.

Pickles go through the shared restricted unpickler of :mod:`avatar4d.checkpoint.safe_pickle`
under :data:`MODEL_FILE_POLICY`, which adds to its core allowlist:

- Python-2 strings decoded as latin-1 (which numpy needs to rebuild arrays pickled under Python 2);
- numpy arrays of Python objects (FaceVerse ships an ``np.save``'d dict: a 0-d object array);
- stubs for chumpy ``Ch`` objects and scipy sparse matrices, which keep their pickled state;
  :func:`to_plain_arrays` turns them into dense numpy arrays afterwards (a ``Ch`` holds its
  array in the ``x`` field; a sparse matrix holds ``data``/``indices``/``indptr`` or
  ``data``/``row``/``col`` and ``_shape``).

Any other global is refused with :class:`UnsafePickleError` before it is called.
"""

from __future__ import annotations

import io
import logging
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import numpy as np

from avatar4d.checkpoint.safe_pickle import (
    DEFAULT_MAX_BYTES,
    PickleReadError,
    ReferenceStub,
    UnpicklingPolicy,
    UnsafePickleError,
    describe_source,
    restricted_load,
)

logger = logging.getLogger(__name__)

_MAX_DENSE_ELEMENTS = 1 << 31
_SPARSE_FORMATS = ("csc", "csr", "coo")


def _state_dict(state: Any) -> dict:
    """The ``__dict__`` part of a pickled object state (a dict, or (dict, slots) at protocol 2)."""
    if isinstance(state, tuple) and len(state) == 2:
        state = state[0]
    return state if isinstance(state, dict) else {}


class ChumpyArrayStub(ReferenceStub):
    """Stand-in for a chumpy ``Ch``: keeps the pickled state; the array is ``state['x']``."""

    stub_module, stub_name = "chumpy.ch", "Ch"

    def to_array(self) -> np.ndarray:
        value = _state_dict(self.state).get("x")
        if value is None:
            raise PickleReadError("chumpy object has no 'x' array in its pickled state")
        array = np.asarray(to_plain_arrays(value))
        if array.dtype == object:
            raise PickleReadError("chumpy object's 'x' is not a numeric array")
        return array


class SparseMatrixStub(ReferenceStub):
    """Stand-in for a scipy sparse matrix (csc/csr/coo), rebuilt densely from its pickled state."""

    sparse_format: ClassVar[str] = ""

    def to_dense(self) -> np.ndarray:
        state = _state_dict(self.state)
        shape = state.get("_shape", state.get("shape"))
        sparse_format = self.sparse_format or str(state.get("format", ""))
        if shape is None or len(shape) != 2:
            raise PickleReadError("sparse matrix pickle has no 2-d shape")
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
            raise PickleReadError(f"unsupported sparse matrix format {sparse_format!r}")
        return dense


_SPARSE_STUBS = {fmt: type(f"{fmt.upper()}MatrixStub", (SparseMatrixStub,),
                           {"sparse_format": fmt, "stub_module": f"scipy.sparse.{fmt}", "stub_name": f"{fmt}_matrix"})
                 for fmt in _SPARSE_FORMATS}

MODEL_FILE_POLICY = UnpicklingPolicy(
    purpose="a morphable-model file",
    safe_globals={
        ("chumpy.ch", "Ch"): ChumpyArrayStub,
        ("chumpy", "Ch"): ChumpyArrayStub,
        **{(module, f"{fmt}_{kind}"): stub
           for fmt, stub in _SPARSE_STUBS.items()
           for module in (f"scipy.sparse.{fmt}", f"scipy.sparse._{fmt}", "scipy.sparse")
           for kind in ("matrix", "array")},
    },
    allow_object_arrays=True,
    encoding="latin1",
)


def to_plain_arrays(obj: Any) -> Any:
    """Replace chumpy / sparse stubs by dense numpy arrays, recursing into containers."""
    if isinstance(obj, ChumpyArrayStub):
        return obj.to_array()
    if isinstance(obj, SparseMatrixStub):
        return obj.to_dense()
    if isinstance(obj, dict):
        return {key: to_plain_arrays(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [to_plain_arrays(value) for value in obj]
    if isinstance(obj, tuple):
        return tuple(to_plain_arrays(value) for value in obj)
    return obj


def load_pickle_safely(source: str | Path | bytes | BinaryIO, *, max_bytes: int | None = DEFAULT_MAX_BYTES,
                       name: str | None = None) -> Any:
    """Unpickle ``source`` (a path, bytes or a binary file) under :data:`MODEL_FILE_POLICY`.

    Chumpy objects and sparse matrices come back as dense numpy arrays. Raises
    :class:`UnsafePickleError` for any disallowed global, before calling it, and
    :class:`PickleReadError` for anything that is not a readable pickle.
    """
    name = name or describe_source(source)
    data = restricted_load(source, MODEL_FILE_POLICY, max_bytes=max_bytes, name=name)
    try:
        return to_plain_arrays(data)
    except PickleReadError as error:
        raise type(error)(f"{name}: {error}") from error
    except (KeyError, TypeError, ValueError, IndexError) as error:
        raise PickleReadError(f"{name}: a chumpy / scipy object has a malformed state "
                              f"({type(error).__name__}: {error})") from error


def _read_npy(stream: BinaryIO, name: str) -> Any:
    """One ``.npy`` stream: plain arrays via numpy, object arrays via the restricted unpickler."""
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
    elif version in ((2, 0), (3, 0)):
        shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
    else:
        raise PickleReadError(f"{name}: unsupported .npy format version {version}")
    if not dtype.hasobject:
        count = int(np.prod(shape, dtype=np.int64))
        data = np.frombuffer(stream.read(count * dtype.itemsize), dtype=dtype, count=count)
        order = "F" if fortran_order else "C"
        return data.reshape(shape, order=order).copy()
    array = load_pickle_safely(stream, name=name)
    if isinstance(array, np.ndarray) and array.dtype == object and array.ndim == 0:
        return to_plain_arrays(array.item())
    return array


def load_numpy_file_safely(path: str | Path) -> Any:
    """Load a ``.npy`` or ``.npz`` file without executing code.

    ``.npy`` holding a pickled object (``np.save`` of a dict, as FaceVerse ships its model) is
    read under :data:`MODEL_FILE_POLICY` and returned as that object (a 0-d object array is
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
                        result[key] = _read_npy(io.BytesIO(stream.read()), f"{path}:{member}")
                return result
        if head == b"\x93NUMPY":
            return _read_npy(handle, str(path))
    raise ValueError(f"{path} is neither a .npy nor a .npz file")
