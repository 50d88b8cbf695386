import pickle

import numpy as np
import pytest
import torch

from avatar4d.checkpoint.legacy_pickle import LegacyPickleError, load_legacy_pickle
from avatar4d.checkpoint.next3d_pkl import (
    MAX_MODULE_DEPTH,
    Next3DPickleError,
    PlaneConventionError,
    infer_plane_convention,
    plane_axis_pairs,
    read_next3d_pickle,
    to_plain,
)
from tests.support.legacy_pickles import (
    NEXT3D_MANIFEST,
    NEXT3DPP_MANIFEST,
    SHRUNK_DIM,
    build_release_pickle,
    load_gan_manifest,
)

EG3D_MATRICES = torch.tensor([[[1, 0, 0], [0, 1, 0], [0, 0, 1]], [[1, 0, 0], [0, 0, 1], [0, 1, 0]],
                              [[0, 0, 1], [1, 0, 0], [0, 1, 0]]], dtype=torch.float32)
NEXT3D_MATRICES = torch.tensor([[[1, 0, 0], [0, 1, 0], [0, 0, 1]], [[1, 0, 0], [0, 0, 1], [0, 1, 0]],
                                [[0, 0, 1], [0, 1, 0], [1, 0, 0]]], dtype=torch.float32)


def _manifest(name):
    return load_gan_manifest(name)


@pytest.fixture(scope="module")
def next3dpp(tmp_path_factory):
    manifest = _manifest(NEXT3DPP_MANIFEST)
    folder = tmp_path_factory.mktemp("next3dpp")
    release = build_release_pickle(folder / "ani3dgan512.pkl", manifest, marker=folder / "module_src_ran")
    return manifest, release, read_next3d_pickle(release.path)


@pytest.fixture(scope="module")
def next3d(tmp_path_factory):
    manifest = _manifest(NEXT3D_MANIFEST)
    folder = tmp_path_factory.mktemp("next3d")
    release = build_release_pickle(folder / "next3d_ffhq_512.pkl", manifest, marker=folder / "module_src_ran",
                                   extra_root_buffers={"dataset_label_std": [75]}, seed=1)
    return manifest, release, read_next3d_pickle(release.path)


def _shrunk(shape):
    return [min(d, SHRUNK_DIM) for d in shape]


def test_next3dpp_state_dict_matches_the_manifest_key_list_in_order(next3dpp):
    manifest, release, generator = next3dpp
    assert list(generator.state_dict) == [name for name, _ in manifest["tensors"]]
    assert len(generator.state_dict) == manifest["num_state_dict_entries"] == 444
    assert [list(t.shape) for t in generator.state_dict.values()] == [_shrunk(s) for _, s in manifest["tensors"]]
    assert list(generator.buffer_names) == [name for name, _, _ in manifest["buffers"]]
    assert len(generator.parameter_names) == manifest["num_parameter_tensors"] == 332
    assert list(generator.parameter_names) == release.expected_parameter_names
    # the same names and order torch gives for the module tree that was pickled
    assert list(generator.state_dict) == list(release.expected_state_dict)
    result = release.generator.load_state_dict(generator.state_dict, strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert not release.marker.exists()


def test_next3dpp_values_config_and_attributes(next3dpp):
    manifest, release, generator = next3dpp
    for name, expected in release.expected_state_dict.items():
        assert generator.state_dict[name].dtype == expected.dtype and torch.equal(generator.state_dict[name], expected)
    some = generator.state_dict["backbone.mapping.fc0.weight"]
    assert some.view(torch.int32).tolist() == release.expected_state_dict["backbone.mapping.fc0.weight"].view(
        torch.int32).tolist()  # bit-exact, not just numerically equal
    assert generator.class_name == "TriPlaneGenerator" and generator.init_args == ()
    assert generator.init_kwargs == manifest["config"]["constructor_kwargs"]
    assert type(generator.init_kwargs["mapping_kwargs"]) is dict
    assert generator.root_attributes["neural_rendering_resolution"] == 128
    assert generator.root_attributes["rendering_kwargs"]["box_warp"] == 1
    assert sorted(generator.attributes) == ["renderer.plane_axes"]
    stored = manifest["plain_tensor_attributes_in_pickle"][0]["value"]
    assert torch.equal(generator.plane_axes, torch.tensor(stored))
    assert generator.module_classes["renderer"] == \
        "training_avatar_texture.volumetric_rendering.renderer.ImportanceRenderer_bsMotion"
    assert generator.module_classes["decoder.net.1"] == "torch.nn.modules.activation.Softplus"
    assert generator.module_classes["backbone.synthesis.b4.conv1"].endswith(".SynthesisLayer")


def test_next3dpp_plane_convention_is_read_from_the_pickled_renderer(next3dpp):
    manifest, _, generator = next3dpp
    assert generator.renderer_stores_inverse() is True
    assert generator.plane_convention() == "next3dpp"
    assert generator.plane_axis_pairs() == ((0, 1), (0, 2), (2, 0))  # (x,y), (x,z), (z,x)
    point = torch.tensor([0.1, 0.2, 0.3])
    expected = manifest["plain_tensor_attributes_in_pickle"][1]["projection_of_(0.1,0.2,0.3)"]
    for (a, b), (u, v) in zip(generator.plane_axis_pairs(), expected, strict=True):
        assert (point[a].item(), point[b].item()) == pytest.approx((u, v))


def test_next3d_root_buffers_attributes_and_convention(next3d):
    manifest, release, generator = next3d
    names = [name for name, _ in manifest["tensors"]]
    after = names.index("face_uvcoords") + 1
    expected = names[:after] + ["dataset_label_std"] + names[after:]
    assert list(generator.state_dict) == expected and len(expected) == 675
    assert generator.state_dict["faces"].dtype == torch.int64
    assert generator.state_dict["uvcoords"].dtype == torch.float32
    for name, tensor in release.expected_state_dict.items():
        assert torch.equal(generator.state_dict[name], tensor)
    assert sorted(generator.attributes) == ["orth_scale", "orth_shift", "renderer.plane_axes", "uv_face_mask"]
    assert generator.attributes["orth_scale"].tolist() == [[5.0]]
    assert torch.equal(generator.attributes["uv_face_mask"], release.expected_attributes["uv_face_mask"])
    assert generator.module_classes["decoder"] == "training_avatar_texture.triplane_v13_neural_blending.OSGDecoder"
    assert generator.module_classes["rasterizer"].endswith(".Pytorch3dRasterizer")
    assert generator.renderer_stores_inverse() is None  # the class name is shared by Next3D and InvertAvatar...
    assert generator.plane_convention() == "next3d"  # ...but these matrices read the same either way
    assert generator.plane_axis_pairs() == ((0, 1), (0, 2), (2, 1))


def test_exact_manifest_shapes_and_parameter_counts(tmp_path):
    manifest = _manifest(NEXT3DPP_MANIFEST)
    release = build_release_pickle(tmp_path / "exact.pkl", manifest, marker=tmp_path / "m", shrink=False,
                                   training_entries=False,
                                   include=lambda key: key.startswith(("decoder.", "superresolution.")))
    generator = read_next3d_pickle(release.path)
    shapes = {name: shape for name, shape in manifest["tensors"]}
    assert all(list(tensor.shape) == shapes[name] for name, tensor in generator.state_dict.items())
    per_module = manifest["num_params_by_top_level_module"]
    assert generator.num_parameters == per_module["decoder"] + per_module["superresolution"] == 1_653_835


def test_other_keys_and_missing_keys(next3dpp):
    _, release, generator = next3dpp
    g = read_next3d_pickle(release.path, key="G")
    assert list(g.state_dict) == list(generator.state_dict)
    assert torch.equal(g.state_dict["decoder.net.0.weight"], generator.state_dict["decoder.net.0.weight"])
    with pytest.raises(Next3DPickleError, match=r"no 'G_emma' entry \(it has 'training_set_kwargs', 'G', 'D'"):
        read_next3d_pickle(release.path, key="G_emma")
    with pytest.raises(Next3DPickleError, match="'augment_pipe' is a NoneType, not a pickled module"):
        read_next3d_pickle(release.path, key="augment_pipe")


def test_files_without_a_usable_generator_raise_clear_errors(tmp_path):
    manifest = _manifest(NEXT3DPP_MANIFEST)
    release = build_release_pickle(tmp_path / "empty_g.pkl", manifest, marker=tmp_path / "m",
                                   include=lambda key: False, training_entries=False)
    with pytest.raises(Next3DPickleError, match="TriPlaneGenerator\\) contains no tensors"):
        read_next3d_pickle(release.path)
    listing = tmp_path / "list.pkl"
    listing.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(Next3DPickleError, match="top-level object is a list"):
        read_next3d_pickle(listing)
    for file_name, content, message in (("empty.pkl", b"", "is empty"),
                                        ("noise.pkl", np.random.default_rng(1).bytes(10_000), "noise.pkl")):
        (tmp_path / file_name).write_bytes(content)
        with pytest.raises(LegacyPickleError, match=message):  # reader errors come through unchanged
            read_next3d_pickle(tmp_path / file_name)


def test_plane_convention_inference_from_matrices():
    assert infer_plane_convention(EG3D_MATRICES, pre_inverted=False) == "eg3d"  # NVlabs: p @ inv(M)
    assert infer_plane_convention(torch.linalg.inv(EG3D_MATRICES), pre_inverted=True) == "next3dpp"
    assert infer_plane_convention(EG3D_MATRICES, pre_inverted=True) == "corrected"  # (x,y), (x,z), (y,z)
    assert infer_plane_convention(NEXT3D_MATRICES, pre_inverted=None) == "next3d"
    assert plane_axis_pairs(EG3D_MATRICES, pre_inverted=False) == ((0, 1), (0, 2), (2, 0))
    with pytest.raises(PlaneConventionError, match="pass pre_inverted"):
        infer_plane_convention(EG3D_MATRICES, pre_inverted=None)
    rotated = EG3D_MATRICES.clone()
    rotated[0, :2, :2] = torch.tensor([[0.6, -0.8], [0.8, 0.6]])
    with pytest.raises(PlaneConventionError, match="signed permutation"):
        infer_plane_convention(rotated, pre_inverted=False)


def test_cycles_and_runaway_nesting_are_reported_not_recursed_into(tmp_path):
    looped = []
    looped.append(looped)
    with pytest.raises(LegacyPickleError, match="reference cycle"):
        to_plain(load_legacy_pickle(_write(tmp_path / "loop.pkl", {"G_ema": looped}))["G_ema"])
    chain = torch.nn.Linear(2, 2)
    for _ in range(MAX_MODULE_DEPTH + 1):
        chain = torch.nn.Sequential(chain)
    with pytest.raises(Next3DPickleError, match=f"deeper than {MAX_MODULE_DEPTH} levels"):
        read_next3d_pickle(_write(tmp_path / "deep.pkl", {"G_ema": chain}))
    nested = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Linear(2, 3)), torch.nn.Softplus())
    shallow = read_next3d_pickle(_write(tmp_path / "shallow.pkl", {"G_ema": nested}))
    assert list(shallow.state_dict) == ["0.0.weight", "0.0.bias"] and shallow.parameter_names == ("0.0.weight",
                                                                                                  "0.0.bias")
    assert shallow.class_name == "torch.nn.modules.container.Sequential" and shallow.source_sha256 is None
    assert torch.equal(shallow.state_dict["0.0.weight"], nested[0][0].weight.detach())

def _write(path, obj):
    path.write_bytes(pickle.dumps(obj))
    return path
