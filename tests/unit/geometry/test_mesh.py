import torch

from avatar4d.geometry.mesh import face_normals, vertex_normals


def _octahedron():
    verts = torch.tensor([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=torch.float32)
    faces = torch.tensor([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    return verts[None], faces


def test_normals_of_a_convex_ccw_mesh_point_outward():
    verts, faces = _octahedron()
    fn = face_normals(verts, faces)
    centres = verts[:, faces].mean(2)
    assert ((fn * centres).sum(-1) > 0).all()
    vn = vertex_normals(verts, faces)
    assert torch.allclose(vn, verts, atol=1e-6)  # by symmetry the vertex normal is the vertex direction
    assert torch.allclose(vn.norm(dim=-1), torch.ones(1, 6))


def test_area_weighting():
    verts, faces = _octahedron()
    area_normals = face_normals(verts, faces, normalize=False)
    # each octahedron face has area sqrt(3)/2, so |cross| = sqrt(3)
    assert torch.allclose(area_normals.norm(dim=-1), torch.full((1, 8), 3 ** 0.5))
