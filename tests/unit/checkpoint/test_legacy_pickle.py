import collections
import hashlib
import io
import os
import pickle

import numpy as np
import pytest
import torch

from avatar4d.checkpoint.legacy_pickle import (
    LegacyPickleError,
    PersistentStub,
    ReferenceStub,
    UnsafePickleError,
    load_legacy_pickle,
)
from tests.support.legacy_pickles import (
    MODULE_SRC_TEMPLATE,
    NEXT3D_MANIFEST,
    NEXT3DPP_MANIFEST,
    ReducePayload,
    build_release_pickle,
    import_getattr_gadget,
    load_gan_manifest,
    persistent_id_gadget,
)


def _manifest(name):
    return load_gan_manifest(name)


def _decoder_only(key):
    return key.startswith("decoder.")


def _dump(obj, path, protocol=pickle.DEFAULT_PROTOCOL):
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


# ---------------------------------------------------------------------------- plain torch/numpy data


def test_tensors_and_containers_survive_bit_exactly(tmp_path):
    torch.manual_seed(0)
    base = torch.randn(4, 6)
    data = {
        "f32": base, "transposed": base.t(), "row": base[2], "f16": torch.randn(3, 5).half(),
        "bf16": torch.randn(7).bfloat16(), "i64": torch.arange(-5, 5), "bool": torch.tensor([True, False]),
        "param": torch.nn.Parameter(torch.randn(2, 3)), "ordered": collections.OrderedDict(a=1, b=(2, 3)),
        "set": {1, 2}, "frozen": frozenset({"x"}), "slice": slice(1, 9, 2), "complex": 1 + 2j,
        "np_scalar": np.float64(0.125), "np_array": np.arange(6, dtype=np.int32).reshape(2, 3),
        "size": torch.Size([2, 3]), "dtype": torch.float16,
    }
    for protocol in (2, 4, 5):
        loaded = load_legacy_pickle(_dump(data, tmp_path / f"p{protocol}.pkl", protocol))
        for key in ("f32", "transposed", "row", "f16", "bf16", "i64", "bool", "param"):
            assert type(loaded[key]) is torch.Tensor and loaded[key].dtype == data[key].dtype
            assert torch.equal(loaded[key], data[key].detach()) and loaded[key].stride() == data[key].stride()
        assert isinstance(loaded["ordered"], collections.OrderedDict) and loaded["ordered"] == data["ordered"]
        assert (loaded["set"], loaded["frozen"], loaded["slice"], loaded["complex"]) == (
            {1, 2}, frozenset({"x"}), slice(1, 9, 2), 1 + 2j)
        assert loaded["np_scalar"] == 0.125 and loaded["np_scalar"].dtype == np.float64
        np.testing.assert_array_equal(loaded["np_array"], data["np_array"])
        assert loaded["size"] == torch.Size([2, 3]) and loaded["dtype"] is torch.float16
    # a view comes back as a view: same offset into a copy of the whole storage
    assert loaded["row"].storage_offset() == 12 and loaded["row"].untyped_storage().nbytes() == 24 * 4


def test_torch_module_pickled_by_reference_becomes_a_reference_stub(tmp_path):
    torch.manual_seed(0)
    sequential = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Softplus(beta=2.0))
    loaded = load_legacy_pickle(_dump(sequential, tmp_path / "seq.pkl"))
    assert isinstance(loaded, ReferenceStub) and loaded.qualname == "torch.nn.modules.container.Sequential"
    linear, softplus = loaded.state["_modules"]["0"], loaded.state["_modules"]["1"]
    assert linear.qualname == "torch.nn.modules.linear.Linear"
    assert torch.equal(linear.state["_parameters"]["weight"], sequential[0].weight.detach())
    assert softplus.state["beta"] == 2.0 and softplus.args == ()


# ---------------------------------------------------------------------------- persistent objects


def test_persistent_objects_become_stubs_and_module_src_never_runs(tmp_path):
    manifest = _manifest(NEXT3DPP_MANIFEST)
    marker = tmp_path / "module_src_ran"
    release = build_release_pickle(tmp_path / "g.pkl", manifest, marker=marker, include=_decoder_only)
    data = load_legacy_pickle(release.path)
    assert sorted(data) == ["D", "G", "G_ema", "augment_pipe", "training_set_kwargs"]
    assert data["augment_pipe"] is None
    g_ema = data["G_ema"]
    assert isinstance(g_ema, PersistentStub) and g_ema.class_name == "TriPlaneGenerator" and g_ema.version == 6
    source = MODULE_SRC_TEMPLATE.format(marker=str(marker), class_name="TriPlaneGenerator")
    assert g_ema.module_src_sha256 == hashlib.sha256(source.encode()).hexdigest()
    assert g_ema.state["_init_kwargs"]["c_dim"] == 25
    assert not marker.exists()
    exec(compile(source, "<synthetic module_src>", "exec"), {})  # control: the source is a live payload
    assert marker.exists()


def test_synthetic_release_requests_the_globals_the_release_uses(tmp_path, monkeypatch):
    from avatar4d.checkpoint import safe_pickle

    requested = []
    original = safe_pickle.RestrictedUnpickler.find_class
    monkeypatch.setattr(safe_pickle.RestrictedUnpickler, "find_class",
                        lambda self, module, name: requested.append(f"{module}.{name}") or original(self, module, name))
    for name in (NEXT3DPP_MANIFEST, NEXT3D_MANIFEST):
        manifest = _manifest(name)
        requested.clear()
        release = build_release_pickle(tmp_path / "g.pkl", manifest, marker=tmp_path / "m", training_entries=False)
        load_legacy_pickle(release.path)
        normalise = lambda g: g.split(" (")[0].replace("numpy._core.", "numpy.core.")  # noqa: E731
        assert {normalise(g) for g in requested} == {normalise(g) for g in
                                                     manifest["pickle_format"]["by_reference_globals_expected"]}


# ---------------------------------------------------------------------------- hostile pickles


_REFUSED_NAMES = {"os.system": f"{os.system.__module__}.system", "builtins.exec": "builtins.exec",
                  "builtins.eval": "builtins.eval", "subprocess.call": "subprocess.call",
                  "torch.load": "torch.serialization.load"}


@pytest.mark.parametrize("call", sorted(_REFUSED_NAMES))
def test_dangerous_reduce_inside_the_state_is_refused_and_never_called(tmp_path, call):
    marker = tmp_path / "payload_ran"
    release = build_release_pickle(tmp_path / "evil.pkl", _manifest(NEXT3DPP_MANIFEST), marker=marker,
                                   include=_decoder_only, training_entries=False,
                                   payload=ReducePayload(call, marker))
    with pytest.raises(UnsafePickleError, match=_REFUSED_NAMES[call].replace(".", r"\.")):
        load_legacy_pickle(release.path)
    assert not marker.exists()


def test_exec_payload_is_live_under_plain_pickle(tmp_path):
    marker = tmp_path / "payload_ran"
    pickle.loads(pickle.dumps(ReducePayload("builtins.exec", marker)))  # control for the test above
    assert marker.read_text() == "payload ran"


def test_reduce_of_an_unknown_project_callable_only_records_the_call(tmp_path):
    marker = tmp_path / "payload_ran"
    release = build_release_pickle(tmp_path / "p.pkl", _manifest(NEXT3DPP_MANIFEST), marker=marker,
                                   include=_decoder_only, training_entries=False,
                                   payload=ReducePayload("project", marker))
    payload = load_legacy_pickle(release.path)["G_ema"].state["_payload"]
    assert isinstance(payload, ReferenceStub) and payload.qualname == "dnnlib.util.call_func_by_name"
    assert payload.args == (str(marker),)
    assert not marker.exists()


def test_import_getattr_gadget_is_refused(tmp_path):
    marker = tmp_path / "gadget_ran"
    path = tmp_path / "gadget.pkl"
    path.write_bytes(import_getattr_gadget(marker))
    with pytest.raises(UnsafePickleError, match=r"builtins\.getattr"):
        load_legacy_pickle(path)
    assert not marker.exists()


@pytest.mark.parametrize("payload, message", [
    (persistent_id_gadget(), "persistent ids"),
    (b"\x80\x02cshutil\nrmtree\nX\x01\x00\x00\x00/\x85R.", r"shutil\.rmtree"),
    (b"\x80\x02ccollections\nOrderedDict\n)R}X\x01\x00\x00\x00aK\x01sb.", "state of a OrderedDict"),
    (b"\x80\x02ccollections\nOrderedDict\n}X\x08\x00\x00\x00__repr__K\x01sb.", "state of a type"),
    (b"\x80\x02\x82\x01.", "extension codes"),
])
def test_other_hostile_opcodes_are_refused(tmp_path, payload, message):
    path = tmp_path / "hostile.pkl"
    path.write_bytes(payload)
    with pytest.raises(UnsafePickleError, match=message):
        load_legacy_pickle(path)
    assert callable(collections.OrderedDict.__repr__)  # BUILD on the class did not monkeypatch it


def test_object_arrays_and_overrunning_tensor_views_are_refused(tmp_path):
    with pytest.raises(UnsafePickleError, match="not a plain numeric dtype"):
        load_legacy_pickle(_dump(np.array([1, "a"], dtype=object), tmp_path / "object.pkl"))

    class OverrunningView:  # a view claiming 100 elements of a 4-element storage
        def __reduce__(self):
            storage = torch.arange(4.0).untyped_storage()
            typed = torch.storage.TypedStorage(wrap_storage=storage, dtype=torch.float32, _internal=True)
            return (torch._utils._rebuild_tensor_v2, (typed, 0, (100,), (1,), False, collections.OrderedDict()))

    with pytest.raises(UnsafePickleError, match="overruns its storage of 4"):
        load_legacy_pickle(_dump(OverrunningView(), tmp_path / "overrun.pkl"))
    expanded = torch.zeros(1).expand(10**12)  # 4 bytes on disk, 4 TB if anything copied the view
    with pytest.raises(UnsafePickleError, match="more elements than its storage of 1"):
        load_legacy_pickle(_dump(expanded, tmp_path / "expanded.pkl"))


# ---------------------------------------------------------------------------- not a pickle


def test_non_pickles_raise_clear_errors(tmp_path):
    empty = tmp_path / "empty.pkl"
    empty.write_bytes(b"")
    with pytest.raises(LegacyPickleError, match="is empty"):
        load_legacy_pickle(empty)
    noise = tmp_path / "noise.bin"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(LegacyPickleError, match="noise.bin"):
        load_legacy_pickle(noise)
    zipped = tmp_path / "new_format.pt"
    torch.save({"w": torch.zeros(2)}, zipped)
    with pytest.raises(LegacyPickleError, match="zip archive"):
        load_legacy_pickle(zipped)
    legacy = tmp_path / "legacy_format.pt"
    torch.save({"w": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(LegacyPickleError, match="legacy torch.save file"):
        load_legacy_pickle(legacy)
    with pytest.raises(LegacyPickleError, match="is not a file"):
        load_legacy_pickle(tmp_path)


def test_truncated_and_oversized_files_are_refused_before_allocating(tmp_path):
    whole = pickle.dumps({"w": torch.randn(64, 64)})
    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(LegacyPickleError, match="truncated"):
        load_legacy_pickle(truncated)
    claims_huge_bytes = b"\x80\x04\x8e" + (2**40).to_bytes(8, "little") + b"."
    with pytest.raises(LegacyPickleError, match=f"declares {2**40} bytes"):
        load_legacy_pickle(io.BytesIO(claims_huge_bytes))
    with pytest.raises(LegacyPickleError, match="more than max_bytes=100"):
        load_legacy_pickle(_dump({"w": torch.zeros(100)}, tmp_path / "big.pkl"), max_bytes=100)
