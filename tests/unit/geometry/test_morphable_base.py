"""FaceParams, rotations, winding orientation and OBJ export of the morphable-model interface."""

import math

import numpy as np
import pytest
import torch

from avatar4d.geometry.mesh import face_normals
from avatar4d.geometry.morphable import (
    FaceParams,
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
