"""FLAME loader on synthetic files that mimic generic_model.pkl (chumpy + scipy sparse objects)."""

import os
import pickle
import sys
import types

import numpy as np
import pytest
import torch

from avatar4d.geometry.morphable import FaceParams, FlameConfig, UnsafePickleError, load_flame, save_obj
from avatar4d.geometry.morphable.procedural_mesh import build_sphere_grid, unit_directions

NUM_SHAPE, NUM_EXPRESSION, NUM_JOINTS = 8, 4, 5


class _FakeCh:
    """Pickles like chumpy.ch.Ch: a NEWOBJ/_reconstructor of chumpy.ch.Ch plus a state dict with 'x'."""

    def __init__(self, x):
        self.x = x
        self._dirty_vars = set()
        self._itr = None
        self._depends_on_deps = {}
        self._make_dense = False
        self._make_sparse = False


class _FakeCsc:
    """Pickles like an (old) scipy.sparse.csc.csc_matrix: its __dict__ as state."""

    def __init__(self, dense):
        rows, cols = dense.shape
        self._shape = (rows, cols)
        self.maxprint = 50
        self.format = "csc"
        indices, indptr, data = [], [0], []
        for c in range(cols):
            nz = np.flatnonzero(dense[:, c])
            indices += nz.tolist()
            data += dense[nz, c].tolist()
            indptr.append(len(indices))
        self.indices, self.indptr, self.data = np.array(indices, np.int32), np.array(indptr, np.int32), np.array(data)


@pytest.fixture
def fake_chumpy_scipy(monkeypatch):
    """Mimic classes named chumpy.ch.Ch and scipy.sparse.csc.csc_matrix, importable while pickling."""
    classes = {}
    for base, module, name in ((_FakeCh, "chumpy.ch", "Ch"), (_FakeCsc, "scipy.sparse.csc", "csc_matrix")):
        cls = type(name, (base,), {"__module__": module, "__qualname__": name})
        fake = types.ModuleType(module)
        setattr(fake, name, cls)
        monkeypatch.setitem(sys.modules, module, fake)
        classes[name] = cls
    monkeypatch.setitem(sys.modules, "chumpy", types.ModuleType("chumpy"))
    return classes


def _synthetic_flame(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    grid = build_sphere_grid(16, 6)
    template = 0.1 * unit_directions(grid.theta, grid.phi)
    num_vertices = len(template)
    regressor = np.zeros((NUM_JOINTS, num_vertices))
    for j in range(NUM_JOINTS):
        picks = rng.choice(num_vertices, 4, replace=False)
        regressor[j, picks] = rng.random(4)
    regressor /= regressor.sum(1, keepdims=True)
    weights = rng.random((num_vertices, NUM_JOINTS)) ** 3
    weights /= weights.sum(1, keepdims=True)
    return {
        "v_template": template,
        "shapedirs": 0.01 * rng.standard_normal((num_vertices, 3, NUM_SHAPE + NUM_EXPRESSION)),
        "posedirs": 0.01 * rng.standard_normal((num_vertices, 3, 9 * (NUM_JOINTS - 1))),
        "J_regressor": regressor,
        "weights": weights,
        "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64),
        "f": grid.faces.astype(np.uint32),
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }


def _as_pickled_structure(data: dict, classes: dict) -> dict:
    wrapped = dict(data)
    for key in ("v_template", "shapedirs", "weights"):
        wrapped[key] = classes["Ch"](data[key])
    wrapped["J_regressor"] = classes["csc_matrix"](data["J_regressor"])
    return wrapped


def _rodrigues(r: np.ndarray) -> np.ndarray:
    angle = np.linalg.norm(r)
    k = r / angle
    skew = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * skew + (1 - np.cos(angle)) * skew @ skew


def _reference_vertices(data: dict, shape: np.ndarray, expression: np.ndarray, jaw: np.ndarray) -> np.ndarray:
    """Full FLAME LBS over the kinematic tree (only the jaw rotated), computed independently."""
    dirs = data["shapedirs"]
    v = data["v_template"] + dirs[:, :, :NUM_SHAPE] @ shape + dirs[:, :, NUM_SHAPE:] @ expression
    joints = data["J_regressor"] @ v
    rotations = [np.eye(3)] * NUM_JOINTS
    rotations[2] = _rodrigues(jaw)
    pose_feature = np.concatenate([(rotations[k] - np.eye(3)).ravel() for k in range(1, NUM_JOINTS)])
    v = v + data["posedirs"] @ pose_feature
    parents = data["kintree_table"][0]
    world = []
    for k in range(NUM_JOINTS):
        local = np.eye(4)
        local[:3, :3] = rotations[k]
        local[:3, 3] = joints[k] - (joints[parents[k]] if k > 0 else 0)
        world.append(local if k == 0 else world[parents[k]] @ local)
    skinned = np.zeros_like(v)
    homogeneous = np.concatenate([v, np.ones((len(v), 1))], 1)
    for k in range(NUM_JOINTS):
        relative = world[k].copy()
        relative[:3, 3] -= world[k][:3, :3] @ joints[k]
        skinned += data["weights"][:, k:k + 1] * (homogeneous @ relative.T)[:, :3]
    return skinned


@pytest.mark.parametrize("protocol", [0, 2])
def test_pickle_with_chumpy_and_sparse_loads_and_matches_lbs(tmp_path, fake_chumpy_scipy, protocol):
    data = _synthetic_flame()
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(pickle.dumps(_as_pickled_structure(data, fake_chumpy_scipy), protocol=protocol))
    config = FlameConfig(num_identity=NUM_SHAPE, num_expression=NUM_EXPRESSION, shape_basis_size=NUM_SHAPE)
    model = load_flame(path, config=config)
    assert model.num_vertices == len(data["v_template"]) and model.identity_dim == NUM_SHAPE
    assert model.expression_dim == NUM_EXPRESSION and len(model.expression_names) == NUM_EXPRESSION
    assert torch.equal(model.faces, torch.from_numpy(data["f"].astype(np.int64)))  # already outward
    rng = np.random.default_rng(1)
    shape, expression = rng.standard_normal((2, NUM_SHAPE)), rng.standard_normal((2, NUM_EXPRESSION))
    jaw = np.array([[0.0, 0.0, 0.0], [0.3, 0.05, -0.02]])
    params = FaceParams(torch.tensor(shape), torch.tensor(expression), torch.tensor(jaw))
    verts = model.to(torch.float64).vertices(params)
    assert verts.shape == (2, model.num_vertices, 3) and verts.dtype == torch.float64
    # jaw at rest: exactly the blendshape sum
    dirs = data["shapedirs"]
    blend = data["v_template"] + dirs[:, :, :NUM_SHAPE] @ shape[0] + dirs[:, :, NUM_SHAPE:] @ expression[0]
    np.testing.assert_allclose(verts[0].numpy(), blend, atol=1e-6)
    np.testing.assert_allclose(verts[1].numpy(), _reference_vertices(data, shape[1], expression[1], jaw[1]), atol=1e-6)


def test_npz_truncation_scale_translation(tmp_path):
    data = _synthetic_flame(2)
    path = tmp_path / "flame.npz"
    np.savez(path, **{k: v for k, v in data.items() if isinstance(v, np.ndarray)})
    config = FlameConfig(num_identity=3, num_expression=2, shape_basis_size=NUM_SHAPE, scale=2.0,
                         translation=(0.0, 0.1, 0.0))
    model = load_flame(path, config=config)
    params = model.neutral_params(1)
    params.identity[0, 2] = 1.0
    params.expression[0, 1] = -1.0
    expected = 2.0 * (data["v_template"] + data["shapedirs"][:, :, 2] - data["shapedirs"][:, :, NUM_SHAPE + 1])
    expected += np.array([0.0, 0.1, 0.0])
    np.testing.assert_allclose(model.vertices(params)[0].numpy(), expected, atol=1e-5)
    with pytest.raises(ValueError, match="landmarks"):
        _ = model.landmark_indices
    with pytest.raises(ValueError, match="UVs"):
        _ = model.uv_coords
    with pytest.raises(ValueError, match="asked for"):
        load_flame(path, config=FlameConfig(num_identity=NUM_SHAPE + 1, shape_basis_size=NUM_SHAPE))


def test_uvs_from_npz_or_obj_and_barycentric_landmarks(tmp_path):
    data = _synthetic_flame(3)
    model_path = tmp_path / "flame.npz"
    np.savez(model_path, **{k: v for k, v in data.items() if isinstance(v, np.ndarray)})
    faces = data["f"].astype(np.int64)
    rng = np.random.default_rng(0)
    vt = rng.random((len(faces) * 3, 2))
    ft = np.arange(len(faces) * 3).reshape(-1, 3)
    np.savez(tmp_path / "FLAME_texture.npz", vt=vt, ft=ft)
    face_idx = rng.choice(len(faces), 68)
    bary = rng.random((68, 3))
    bary /= bary.sum(1, keepdims=True)
    np.save(tmp_path / "landmark_embedding.npy",
            {"full_lmk_faces_idx": face_idx[None], "full_lmk_bary_coords": bary[None],
             "static_lmk_faces_idx": face_idx[:51]})
    config = FlameConfig(num_identity=NUM_SHAPE, num_expression=NUM_EXPRESSION, shape_basis_size=NUM_SHAPE)
    model = load_flame(model_path, texture_path=tmp_path / "FLAME_texture.npz",
                       landmark_path=tmp_path / "landmark_embedding.npy", config=config)
    np.testing.assert_allclose(model.uv_coords.numpy(), vt, atol=1e-6)
    assert torch.equal(model.uv_faces, torch.from_numpy(ft))
    verts = model.vertices(model.random_params(2, generator=torch.Generator().manual_seed(0)))
    weights = torch.tensor(bary, dtype=torch.float32)[None, :, :, None]
    expected = (verts[:, torch.from_numpy(faces[face_idx])] * weights).sum(2)
    torch.testing.assert_close(model.landmarks(verts), expected)
    assert torch.equal(model.landmark_indices, torch.from_numpy(faces[face_idx, bary.argmax(1)]))
    # the same UVs through an OBJ with v/vt faces
    save_obj(tmp_path / "head.obj", torch.tensor(data["v_template"]), torch.from_numpy(faces),
             torch.tensor(vt), torch.from_numpy(ft))
    from_obj = load_flame(model_path, texture_path=tmp_path / "head.obj", landmark_indices=np.arange(68), config=config)
    np.testing.assert_allclose(from_obj.uv_coords.numpy(), vt, atol=1e-5)
    assert torch.equal(from_obj.landmark_indices, torch.arange(68))
    with pytest.raises(ValueError, match="68"):
        load_flame(model_path, landmark_indices=np.arange(51), config=config)


def test_malicious_pickle_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    data = {k: v for k, v in _synthetic_flame().items()}
    data["bs_style"] = Payload()
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(pickle.dumps(data, protocol=2))
    with pytest.raises(UnsafePickleError, match="system"):
        load_flame(path)
    assert isinstance(UnsafePickleError("x"), ValueError)
    assert not marker.exists()


def test_missing_keys_and_files(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, v_template=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="missing key"):
        load_flame(path)
    with pytest.raises(ValueError, match="not found"):
        load_flame(tmp_path / "nope.pkl")
