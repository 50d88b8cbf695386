"""FaceParams, rotations, winding orientation and OBJ export of the morphable-model interface."""

import math

import numpy as np
import pytest
import torch

from avatar4d.geometry.mesh import face_normals
from avatar4d.geometry.morphable import (
    FaceParams,
    MorphableModel,
    axis_angle_to_matrix,
    default_head_model,
    orient_faces_outward,
    save_obj,
)
from avatar4d.geometry.morphable.procedural_mesh import build_sphere_grid, unit_directions


def test_face_params_vector_round_trip_and_device_moves():
    params = FaceParams(torch.randn(4, 12), torch.randn(4, 10), torch.randn(4, 3))
    assert params.batch_size == 4
    vector = params.to_vector()
    assert vector.shape == (4, FaceParams.vector_dim(12, 10)) == (4, 25)
    back = FaceParams.from_vector(vector, 12, 10)
    for a, b in zip((params.identity, params.expression, params.jaw), (back.identity, back.expression, back.jaw),
                    strict=True):
        assert torch.equal(a, b)
    single = FaceParams.from_vector(vector[0], 12, 10)
    assert single.batch_size == 1 and torch.equal(single.jaw[0], params.jaw[0])
    assert params.to("cpu", torch.float64).identity.dtype == torch.float64
    zeros = FaceParams.zeros(2, 3, 4)
    assert zeros.to_vector().abs().sum() == 0 and zeros.to_vector().shape == (2, 10)


def test_face_params_validation():
    with pytest.raises(ValueError, match="25"):
        FaceParams.from_vector(torch.zeros(2, 24), 12, 10)
    with pytest.raises(ValueError, match="batch sizes"):
        FaceParams(torch.zeros(2, 3), torch.zeros(3, 4), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="axis-angle"):
        FaceParams(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="tensor"):
        FaceParams(np.zeros((2, 3)), torch.zeros(2, 4), torch.zeros(2, 3))


def test_axis_angle_to_matrix():
    quarter = axis_angle_to_matrix(torch.tensor([[math.pi / 2, 0.0, 0.0]], dtype=torch.float64))[0]
    # a positive rotation about x takes +z (forward) to -y (down): how the jaw opens
    torch.testing.assert_close(quarter @ torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64),
                               torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64))
    rotations = axis_angle_to_matrix(torch.randn(16, 3, dtype=torch.float64))
    identity = torch.eye(3, dtype=torch.float64).expand(16, 3, 3)
    torch.testing.assert_close(rotations @ rotations.transpose(1, 2), identity)
    torch.testing.assert_close(torch.linalg.det(rotations), torch.ones(16, dtype=torch.float64))
    zero = torch.zeros(1, 3, requires_grad=True)
    matrix = axis_angle_to_matrix(zero)
    assert torch.equal(matrix[0], torch.eye(3))
    matrix.sum().backward()
    assert torch.isfinite(zero.grad).all()
    tiny = torch.tensor([[1e-5, -2e-5, 3e-5]], dtype=torch.float64)
    axis = tiny / tiny.norm()
    expected = torch.eye(3, dtype=torch.float64) + math.sin(tiny.norm()) * torch.tensor(
        [[0, -axis[0, 2], axis[0, 1]], [axis[0, 2], 0, -axis[0, 0]], [-axis[0, 1], axis[0, 0], 0]], dtype=torch.float64)
    torch.testing.assert_close(axis_angle_to_matrix(tiny)[0], expected, atol=1e-9, rtol=0)


def test_orient_faces_outward():
    grid = build_sphere_grid(16, 8)
    verts = unit_directions(grid.theta, grid.phi)
    assert np.array_equal(orient_faces_outward(verts, grid.faces), grid.faces)
    assert np.array_equal(orient_faces_outward(verts, grid.faces[:, [0, 2, 1]]), grid.faces)
    normals = face_normals(torch.tensor(verts)[None], torch.from_numpy(grid.faces))[0]
    centres = torch.tensor(verts)[torch.from_numpy(grid.faces)].mean(1)
    assert ((normals * centres).sum(-1) > 0).all()


def test_save_obj(tmp_path):
    head = default_head_model("tiny")
    verts = head.vertices(head.neutral_params(1))
    save_obj(tmp_path / "head.obj", verts, head.faces, head.uv_coords, head.uv_faces)
    lines = (tmp_path / "head.obj").read_text().splitlines()
    assert sum(line.startswith("v ") for line in lines) == head.num_vertices
    assert sum(line.startswith("vt ") for line in lines) == head.uv_coords.shape[0]
    faces = [line for line in lines if line.startswith("f ")]
    assert len(faces) == head.faces.shape[0]
    first = [int(c.split("/")[0]) - 1 for c in faces[0].split()[1:]]
    assert first == head.faces[0].tolist()
    save_obj(tmp_path / "plain.obj", verts[0], head.faces)
    assert "/" not in (tmp_path / "plain.obj").read_text()
    with pytest.raises(ValueError, match="both"):
        save_obj(tmp_path / "bad.obj", verts[0], head.faces, head.uv_coords)
    with pytest.raises(ValueError, match="one mesh"):
        save_obj(tmp_path / "bad.obj", verts.expand(2, -1, -1), head.faces)


class _Tetrahedron(MorphableModel):
    """The smallest linear model: 4 vertices, 2 identity and 1 expression components, no UVs."""

    missing_landmarks_message = "tetrahedra have no landmarks"

    def __init__(self) -> None:
        super().__init__()
        template = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        basis = np.arange(4 * 3 * 3, dtype=np.float64).reshape(4, 3, 3) / 10
        self.register_shape_space(template, basis[:, :, :2], basis[:, :, 2:])
        self.register_topology(np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]]))
        self.expression_names = ["puff"]


def test_base_model_derives_sizes_vertices_and_missing_data_from_its_constants():
    model = _Tetrahedron().to(torch.float64)
    assert (model.num_vertices, model.identity_dim, model.expression_dim) == (4, 2, 1)
    assert model.faces.dtype == torch.long and model.float_dtype == torch.float64 and model.supports_jaw
    params = FaceParams(torch.tensor([[1.0, -2.0]]), torch.tensor([[0.5]]), torch.zeros(1, 3))
    basis = np.arange(36, dtype=np.float64).reshape(4, 3, 3) / 10
    expected = model.template.numpy() + basis[:, :, 0] - 2.0 * basis[:, :, 1] + 0.5 * basis[:, :, 2]
    np.testing.assert_allclose(model.vertices(params)[0].numpy(), expected, atol=1e-6)
    assert model.expression_index("puff") == 0
    with pytest.raises(ValueError, match="unknown expression 'smile'"):
        model.expression_index("smile")
    with pytest.raises(ValueError, match="_Tetrahedron has no uv_coords"):
        _ = model.uv_coords
    with pytest.raises(ValueError, match="tetrahedra have no landmarks"):
        model.landmarks(model.vertices(params))
    with pytest.raises(AttributeError, match="read-only"):
        model.faces = torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"identity_basis must be \[4, 3, K\]"):
        _Tetrahedron().register_shape_space(np.zeros((4, 3)), np.zeros((5, 3, 1)), np.zeros((4, 3, 1)))
    assert set(model.state_dict()) == set()  # model data stays out of checkpoints
