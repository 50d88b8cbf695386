"""FaceVerse loader on synthetic np.save'd dicts with the v2 / v3 key structure."""

import os

import numpy as np
import pytest
import torch

from avatar4d.geometry.morphable import FaceParams, FaceVerseConfig, UnsafePickleError, load_faceverse
from avatar4d.geometry.morphable.procedural_mesh import build_sphere_grid, unit_directions

NUM_ID, NUM_EX = 6, 5


def _synthetic_faceverse(version: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    grid = build_sphere_grid(12, 6)
    mean = 8.0 * unit_directions(grid.theta, grid.phi)
    num_vertices = len(mean)
    data = {
        "meanshape": mean.reshape(1, -1).astype(np.float32),
        "idBase": rng.standard_normal((3 * num_vertices, NUM_ID)).astype(np.float32),
        "exBase": rng.standard_normal((3 * num_vertices, NUM_EX)).astype(np.float32),
        "tri": grid.faces.astype(np.int32),
        "meantex": rng.random((1, 3 * num_vertices)).astype(np.float32),
        "texBase": rng.random((3 * num_vertices, 4)).astype(np.float32),
        "skinmask": np.ones((1, num_vertices), dtype=np.float32),
        "point_buf": np.zeros((num_vertices, 8), dtype=np.int64),
    }
    if version == 2:
        data["keypoints"] = np.arange(66).reshape(1, -1)
    else:
        data["meanshape"] = mean.astype(np.float32)
        data["mediapipe_keypoints"] = np.arange(num_vertices)
        data["uv"] = rng.random((len(grid.faces) * 3, 2))
        data["tri_uv"] = np.arange(len(grid.faces) * 3).reshape(-1, 3)
        data["exp_name_list"] = [f"blend_{k}" for k in range(NUM_EX)]
        data["ver_inds"] = np.array([0, 10, 20])
    return data


def test_v2_file_loads_and_matches_blendshape_sum(tmp_path):
    data = _synthetic_faceverse(2)
    np.save(tmp_path / "faceverse_simple_v2.npy", data)
    model = load_faceverse(tmp_path / "faceverse_simple_v2.npy")
    num_vertices = data["meanshape"].size // 3
    assert model.num_vertices == num_vertices and model.identity_dim == NUM_ID and model.expression_dim == NUM_EX
    assert model.faces.shape == (len(data["tri"]), 3) and not model.supports_jaw
    assert model.expression_names == [f"expression_{k:03d}" for k in range(NUM_EX)]
    # 66 OpenSeeFace points -> iBUG 68 with the inner mouth corners taken from the outer ones
    expected_landmarks = list(range(60)) + [48, 60, 61, 62, 54, 63, 64, 65]
    assert model.landmark_indices.tolist() == expected_landmarks
    rng = np.random.default_rng(1)
    identity, expression = rng.standard_normal((3, NUM_ID)), rng.standard_normal((3, NUM_EX))
    params = FaceParams(torch.tensor(identity, dtype=torch.float32), torch.tensor(expression, dtype=torch.float32),
                        torch.ones(3, 3))  # jaw is ignored
    verts = model.vertices(params)
    expected = (data["meanshape"].reshape(1, -1) + identity @ data["idBase"].T + expression @ data["exBase"].T)
    np.testing.assert_allclose(verts.numpy(), expected.reshape(3, -1, 3), rtol=1e-5, atol=1e-4)
    assert model.landmarks(verts).shape == (3, 68, 3)
    with pytest.raises(ValueError, match="UVs"):
        _ = model.uv_faces


def test_v3_file_with_uvs_names_and_frame_change(tmp_path):
    data = _synthetic_faceverse(3)
    np.save(tmp_path / "faceverse_v3.npy", data)
    config = FaceVerseConfig(flip_yz=True, scale=0.01, translation=(0.0, 0.02, 0.1))
    with pytest.raises(ValueError, match="landmark_indices"):
        _ = load_faceverse(tmp_path / "faceverse_v3.npy", config=config).landmark_indices
    model = load_faceverse(tmp_path / "faceverse_v3.npy", config=config, landmark_indices=torch.arange(68))
    assert model.expression_names == data["exp_name_list"]
    np.testing.assert_allclose(model.uv_coords.numpy(), data["uv"], atol=1e-6)
    params = model.neutral_params(1)
    params.identity[0, 1] = 2.0
    flip = np.array([1.0, -1.0, -1.0])
    expected = (data["meanshape"] + 2.0 * data["idBase"][:, 1].reshape(-1, 3)) * flip * 0.01
    expected += np.array([0.0, 0.02, 0.1])
    np.testing.assert_allclose(model.vertices(params)[0].numpy(), expected, atol=1e-6)
    # a proper rotation keeps the (outward) winding, so faces and UV faces are unchanged
    assert torch.equal(model.faces, torch.from_numpy(data["tri"].astype(np.int64)))
    assert torch.equal(model.uv_faces, torch.from_numpy(data["tri_uv"]))


def test_inward_winding_is_flipped_with_uv_faces(tmp_path):
    data = _synthetic_faceverse(3)
    data["tri"] = data["tri"][:, [0, 2, 1]]
    np.save(tmp_path / "inward.npy", data)
    model = load_faceverse(tmp_path / "inward.npy", landmark_indices=np.arange(68))
    assert torch.equal(model.faces, torch.from_numpy(data["tri"][:, [0, 2, 1]].astype(np.int64)))
    assert torch.equal(model.uv_faces, torch.from_numpy(data["tri_uv"][:, [0, 2, 1]]))


def test_uv_per_vertex_and_one_based_tri(tmp_path):
    data = _synthetic_faceverse(2)
    num_vertices = data["meanshape"].size // 3
    data["tri"] = data["tri"] + 1
    data["uv_per_ver"] = np.random.default_rng(0).random((num_vertices, 2))
    np.save(tmp_path / "fv.npy", data)
    model = load_faceverse(tmp_path / "fv.npy")
    assert model.faces.min() == 0 and torch.equal(model.uv_faces, model.faces)


def test_malicious_npy_never_runs_and_bad_files_raise(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    data = _synthetic_faceverse(2)
    data["keypoints"] = Payload()
    np.save(tmp_path / "evil.npy", data, allow_pickle=True)
    with pytest.raises(UnsafePickleError):
        load_faceverse(tmp_path / "evil.npy")
    assert not marker.exists()
    np.save(tmp_path / "partial.npy", {"meanshape": np.zeros(9)})
    with pytest.raises(ValueError, match="missing key"):
        load_faceverse(tmp_path / "partial.npy")
    np.save(tmp_path / "array.npy", np.zeros(3))
    with pytest.raises(ValueError, match="dict"):
        load_faceverse(tmp_path / "array.npy")
