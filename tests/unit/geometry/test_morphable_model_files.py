"""Model files through the shared restricted unpickler: numpy / sparse / chumpy state comes back,
anything else is refused."""

import io
import os
import pickle

import numpy as np
import pytest

from avatar4d.checkpoint.safe_pickle import PickleReadError, UnsafePickleError
from avatar4d.geometry.morphable.model_files import load_numpy_file_safely, load_pickle_safely


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _call(module: str, name: str, *string_args: str) -> bytes:
    """A protocol-0 pickle that calls module.name(*string_args) (the classic payload shape)."""
    args = b"".join(b"V" + a.encode() + b"\n" for a in string_args)
    return _global(module, name) + b"(" + args + b"tR."


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_numpy_containers_round_trip(protocol):
    value = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": [np.int64(3), (1.5, "x")],
             "c": np.array([1, 2], dtype=np.uint32), "d": {1, 2}, "e": b"raw", "f": np.asfortranarray(np.eye(3))}
    out = load_pickle_safely(pickle.dumps(value, protocol=protocol))
    np.testing.assert_array_equal(out["a"], value["a"])
    assert out["a"].dtype == np.float32 and out["c"].dtype == np.uint32
    assert out["b"] == [3, (1.5, "x")] and out["d"] == {1, 2} and out["e"] == b"raw"
    np.testing.assert_array_equal(out["f"], np.eye(3))


@pytest.mark.parametrize("payload", [
    _call("os", "system", "touch {marker}"),
    _call("posix", "system", "touch {marker}"),
    _call("builtins", "eval", "open('{marker}', 'w').close()"),
    _call("builtins", "exec", "open('{marker}', 'w').close()"),
    _call("subprocess", "check_call", "touch"),
    _call("numpy", "load", "{marker}"),
    _call("_codecs", "encode", "x", "rot13"),
])
def test_payloads_are_refused_before_running(tmp_path, payload):
    marker = tmp_path / "pwned"
    data = payload.replace(b"{marker}", str(marker).encode())
    with pytest.raises(UnsafePickleError):
        load_pickle_safely(data)
    assert not marker.exists()


def test_payload_hidden_in_chumpy_state_and_reconstructor_abuse(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    inner = pickle.dumps({"x": Payload()}, protocol=2)[2:-1]  # the dict, without PROTO / STOP
    crafted = b"\x80\x02" + _global("chumpy.ch", "Ch") + b")\x81" + inner + b"b."  # NEWOBJ + BUILD
    with pytest.raises(UnsafePickleError, match="posix.system|os.system"):
        load_pickle_safely(crafted)
    # copy_reg._reconstructor only builds the stand-in classes, never an arbitrary class
    abuse = _global("copy_reg", "_reconstructor") + b"(" + _global("builtins", "object") \
        + _global("builtins", "object") + b"NtR."
    with pytest.raises(UnsafePickleError, match="disallowed"):
        load_pickle_safely(abuse)
    assert not marker.exists()


def test_chumpy_state_becomes_its_array():
    crafted = (b"\x80\x02" + _global("chumpy.ch", "Ch") + b")\x81"
               + pickle.dumps({"x": np.arange(4.0), "_dirty_vars": set()}, protocol=2)[2:-1] + b"b.")
    np.testing.assert_array_equal(load_pickle_safely(crafted), np.arange(4.0))


def test_garbage_is_a_clear_error():
    with pytest.raises(PickleReadError, match="not a readable pickle"):
        load_pickle_safely(b"not a pickle at all")
    with pytest.raises(PickleReadError, match="truncated|end of data"):
        load_pickle_safely(io.BytesIO(pickle.dumps([1, 2])[:-3]))


def test_npy_and_npz_files(tmp_path):
    np.save(tmp_path / "plain.npy", np.arange(12.0).reshape(3, 4))
    np.testing.assert_array_equal(load_numpy_file_safely(tmp_path / "plain.npy"), np.arange(12.0).reshape(3, 4))
    np.save(tmp_path / "dict.npy", {"meanshape": np.ones((2, 3)), "names": ["a", "b"]})
    loaded = load_numpy_file_safely(tmp_path / "dict.npy")
    assert loaded["names"] == ["a", "b"] and loaded["meanshape"].shape == (2, 3)
    np.savez(tmp_path / "arrays.npz", vt=np.zeros((5, 2)), ft=np.arange(6).reshape(2, 3))
    loaded = load_numpy_file_safely(tmp_path / "arrays.npz")
    assert set(loaded) == {"vt", "ft"} and loaded["ft"].shape == (2, 3)
    (tmp_path / "text.npy").write_text("hello")
    with pytest.raises(ValueError, match="neither"):
        load_numpy_file_safely(tmp_path / "text.npy")
    with pytest.raises(ValueError, match="not found"):
        load_numpy_file_safely(tmp_path / "missing.npy")


def _py2_str(raw: bytes) -> bytes:
    return b"U" + bytes([len(raw)]) + raw  # SHORT_BINSTRING: a Python-2 str


def _py2_object(module: str, name: str, state: dict) -> bytes:
    """NEWOBJ of module.name plus a BUILD with ``state`` (str keys written the Python-2 way)."""
    items = b"".join(_py2_str(key.encode()) + pickle.dumps(value, protocol=2)[2:-1] for key, value in state.items())
    return _global(module, name) + b")\x81}(" + items + b"ub"


def test_python2_chumpy_and_sparse_state_becomes_dense_arrays():
    crafted = (b"\x80\x02}(" + _py2_str(b"caf\xe9") + _py2_object("chumpy.ch", "Ch", {"x": [1.0, 2.0]})
               + _py2_str(b"coo") + _py2_object("scipy.sparse.coo", "coo_matrix",
                                                {"_shape": (2, 3), "data": [5.0, 7.0], "row": [1, 0], "col": [0, 2]})
               + _py2_str(b"csr") + _py2_object("scipy.sparse._csr", "csr_matrix",
                                                {"_shape": (2, 2), "data": [4.0], "indices": [1], "indptr": [0, 0, 1]})
               + b"u.")
    loaded = load_pickle_safely(crafted)
    assert sorted(loaded) == ["café", "coo", "csr"]  # latin-1 decoded Python-2 strings
    np.testing.assert_array_equal(loaded["café"], [1.0, 2.0])
    np.testing.assert_array_equal(loaded["coo"], [[0.0, 0.0, 7.0], [5.0, 0.0, 0.0]])
    np.testing.assert_array_equal(loaded["csr"], [[0.0, 0.0], [0.0, 4.0]])
    with pytest.raises(UnsafePickleError, match="plausible"):
        load_pickle_safely(b"\x80\x02" + _py2_object("scipy.sparse.csc", "csc_matrix",
                                                      {"_shape": (10**6, 10**6), "data": []}) + b".")
    with pytest.raises(PickleReadError, match="no 'x'"):
        load_pickle_safely(b"\x80\x02" + _py2_object("chumpy.ch", "Ch", {"y": 1}) + b".")
