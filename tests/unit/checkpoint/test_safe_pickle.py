"""The shared restricted unpickler: one core, one error family, policies that only add what a file
family needs (stubs, object arrays, Python-2 strings)."""

import io
import os
import pickle

import numpy as np
import pytest

from avatar4d.checkpoint.legacy_pickle import TRAINING_PICKLE_POLICY, LegacyPickleError
from avatar4d.checkpoint.safe_pickle import (
    PickleReadError,
    ReferenceStub,
    UnpicklingPolicy,
    UnsafePickleError,
    restricted_load,
)
from avatar4d.errors import UserError
from avatar4d.geometry import morphable
from avatar4d.geometry.morphable.model_files import MODEL_FILE_POLICY

PLAIN = UnpicklingPolicy(purpose="a test file")
STUBBING = UnpicklingPolicy(purpose="a test file", stub_unknown_globals=True)
POLICIES = {"plain": PLAIN, "stubbing": STUBBING, "training": TRAINING_PICKLE_POLICY, "model": MODEL_FILE_POLICY}


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _short_string(raw: bytes) -> bytes:
    """SHORT_BINSTRING: how Python 2 pickles its ``str`` (raw bytes) at protocol 2."""
    return b"U" + bytes([len(raw)]) + raw


def _python2_dtype(spec: bytes) -> bytes:
    return (_global("numpy", "dtype") + _short_string(spec) + b"K\x00K\x01\x87R"
            + b"(K\x03" + _short_string(b"<") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")


def _python2_pickle() -> bytes:
    """What Python 2 writes for {'caf\\xe9': np.arange(3.0), 'half': np.float64(0.5)} at protocol 2."""
    array = (_global("numpy.core.multiarray", "_reconstruct") + _global("numpy", "ndarray")
             + b"K\x00\x85" + _short_string(b"b") + b"\x87R"
             + b"(K\x01K\x03\x85" + _python2_dtype(b"f8") + b"\x89" + _short_string(np.arange(3.0).tobytes()) + b"tb")
    scalar = (_global("numpy.core.multiarray", "scalar") + _python2_dtype(b"f8")
              + _short_string(np.float64(0.5).tobytes()) + b"\x86R")
    return b"\x80\x02}(" + _short_string(b"caf\xe9") + array + _short_string(b"half") + scalar + b"u."


class _ProjectThing:
    """Stands in for a class of some project (pickled by reference as tests...._ProjectThing)."""

    def __init__(self, value):
        self.value = value


def test_one_error_family_for_every_reader():
    assert issubclass(UnsafePickleError, PickleReadError) and issubclass(PickleReadError, UserError)
    assert issubclass(PickleReadError, ValueError)
    assert LegacyPickleError is PickleReadError and morphable.UnsafePickleError is UnsafePickleError


@pytest.mark.parametrize("policy", sorted(POLICIES))
@pytest.mark.parametrize("module, name", [("os", "system"), ("posix", "system"), ("builtins", "eval"),
                                          ("__builtin__", "exec"), ("subprocess", "check_call"),
                                          ("torch", "load"), ("numpy", "load")])
def test_every_policy_refuses_code_execution_before_running_it(tmp_path, policy, module, name):
    marker = tmp_path / "pwned"
    payload = _global(module, name) + b"(V" + f"touch {marker}".encode() + b"\ntR."
    with pytest.raises(UnsafePickleError, match=f"refusing pickle global .*{name}: {POLICIES[policy].purpose}"):
        restricted_load(payload, POLICIES[policy])
    assert not marker.exists()


def test_unknown_globals_become_stubs_only_where_the_policy_says_so():
    data = pickle.dumps({"thing": _ProjectThing([1, 2])}, protocol=4)
    with pytest.raises(UnsafePickleError, match=r"_ProjectThing: a test file never needs it"):
        restricted_load(data, PLAIN)
    thing = restricted_load(data, STUBBING)["thing"]
    assert isinstance(thing, ReferenceStub) and thing.qualname.endswith("test_safe_pickle._ProjectThing")
    assert thing.state == {"value": [1, 2]} and thing.args == ()
    library_class = _global("json.decoder", "JSONDecoder") + b"(K\x07tR."  # a call of a standard-library class
    json_stubs = UnpicklingPolicy(purpose="x", stub_unknown_globals=True, stubbable_library_modules=("json.",))
    stub = restricted_load(library_class, json_stubs)
    assert stub.qualname == "json.decoder.JSONDecoder" and stub.args == (7,)
    with pytest.raises(UnsafePickleError, match=r"json\.decoder\.JSONDecoder"):
        restricted_load(library_class, STUBBING)


def test_protocol0_objects_rebuild_as_stubs_and_reconstructor_builds_nothing_else():
    thing = restricted_load(pickle.dumps(_ProjectThing(3), protocol=0), STUBBING)
    assert isinstance(thing, ReferenceStub) and thing.state == {"value": 3}
    abuse = _global("copy_reg", "_reconstructor") + b"(" + _global("builtins", "set") + _global(
        "builtins", "object") + b"NtR."
    with pytest.raises(UnsafePickleError, match="disallowed class"):
        restricted_load(abuse, STUBBING)


def test_object_arrays_need_the_policy():
    data = pickle.dumps(np.array([{"a": np.arange(2)}, "b"], dtype=object), protocol=3)
    with pytest.raises(UnsafePickleError, match="not a plain numeric dtype"):
        restricted_load(data, PLAIN)
    loaded = restricted_load(data, UnpicklingPolicy(purpose="x", allow_object_arrays=True))
    assert loaded.dtype == object and loaded[1] == "b"
    np.testing.assert_array_equal(loaded[0]["a"], np.arange(2))


def test_python2_strings_and_arrays_need_latin1():
    loaded = restricted_load(_python2_pickle(), UnpicklingPolicy(purpose="x", encoding="latin1"))
    assert sorted(loaded) == ["café", "half"]
    np.testing.assert_array_equal(loaded["café"], np.arange(3.0))
    assert loaded["half"] == 0.5 and loaded["half"].dtype == np.float64
    with pytest.raises(PickleReadError, match="UnicodeDecodeError"):
        restricted_load(_python2_pickle(), PLAIN)


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_inert_builtins_round_trip(protocol):
    value = {"set": {1, 2}, "frozen": frozenset({3}), "slice": slice(1, 5, 2), "complex": 1 - 2j,
             "buffer": bytearray(b"\x00\xffab"), "bytes": b"\x00\xfe"}
    assert restricted_load(pickle.dumps(value, protocol=protocol), PLAIN) == value


def test_bytearray_cannot_allocate_from_a_count():
    huge = b"\x80\x02" + _global("builtins", "bytearray") + b"\x8a\x05\x00\x00\x00\x00\x01\x85R."  # 2**32
    with pytest.raises(UnsafePickleError, match="bytearray"):
        restricted_load(huge, PLAIN)


def test_sizes_signatures_and_sources(tmp_path):
    with pytest.raises(PickleReadError, match=f"declares {2**40} bytes"):
        restricted_load(b"\x80\x04\x8e" + (2**40).to_bytes(8, "little") + b".", PLAIN)
    with pytest.raises(PickleReadError, match="more than max_bytes=8"):
        restricted_load(pickle.dumps(list(range(100))), PLAIN, max_bytes=8)
    zipped = UnpicklingPolicy(purpose="x", foreign_signatures=((b"PK\x03\x04", "a zip archive"),))
    with pytest.raises(PickleReadError, match="archive.bin is a zip archive"):
        restricted_load(io.BytesIO(b"PK\x03\x04rest"), zipped, name="archive.bin")
    with pytest.raises(PickleReadError, match="is not a file"):
        restricted_load(tmp_path, PLAIN)
    path = tmp_path / "list.pkl"
    path.write_bytes(pickle.dumps([1, "two", 3.0]))
    assert restricted_load(path, PLAIN) == restricted_load(os.fspath(path), PLAIN) == [1, "two", 3.0]
    with pytest.raises(PickleReadError, match="is empty"):
        restricted_load(b"", PLAIN)
