"""The shipped procedural head: mesh validity, UV atlas, landmarks, blendshapes, determinism."""

import time

import numpy as np
import pytest
import torch

from avatar4d.geometry.mesh import face_normals
from avatar4d.geometry.morphable import FaceParams, ProceduralHead, ProceduralHeadConfig, default_head_model
from avatar4d.geometry.morphable.procedural import build_procedural_head_arrays


@pytest.fixture(scope="module")
def head() -> ProceduralHead:
    return default_head_model()


@pytest.fixture(scope="module")
def neutral(head):
    return head.vertices(head.neutral_params(1))[0]


def _edges(faces: np.ndarray) -> np.ndarray:
    return np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])


def test_mesh_is_closed_oriented_manifold_sphere(head, neutral):
    faces = head.faces.numpy()
    num_vertices = head.num_vertices
    assert 3000 <= num_vertices <= 6000
    directed = _edges(faces)
    # every directed edge once (consistent orientation), its reverse present (closed, 2 faces each)
    directed_keys = directed[:, 0] * num_vertices + directed[:, 1]
    assert len(np.unique(directed_keys)) == len(directed_keys)
    reverse_keys = set((directed[:, 1] * num_vertices + directed[:, 0]).tolist())
    assert reverse_keys == set(directed_keys.tolist())
    undirected = np.unique(np.sort(directed, axis=1), axis=0)
    assert len(undirected) * 2 == len(directed)
    assert num_vertices - len(undirected) + len(faces) == 2  # Euler characteristic of a sphere
    assert len(np.unique(faces)) == num_vertices  # no unused vertices
    # one connected component: propagate minimum labels along edges
    labels = np.arange(num_vertices)
    for _ in range(num_vertices):
        new = labels.copy()
        np.minimum.at(new, undirected[:, 0], labels[undirected[:, 1]])
        np.minimum.at(new, undirected[:, 1], labels[undirected[:, 0]])
        if np.array_equal(new, labels):
            break
        labels = new
    assert np.all(labels == 0)
    # vertex-manifold: each vertex's one-ring edges form a single cycle (count = valence)
    valence = np.bincount(undirected.ravel(), minlength=num_vertices)
    faces_per_vertex = np.bincount(faces.ravel(), minlength=num_vertices)
    assert np.array_equal(valence, faces_per_vertex)


def test_geometry_outward_inside_box_non_degenerate(head, neutral):
    verts = neutral.double()
    faces = head.faces
    v0, v1, v2 = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    signed_volume = (v0 * torch.linalg.cross(v1, v2, dim=-1)).sum() / 6.0
    assert signed_volume > 0.08  # outward normals; a head of ~0.12 cubic units
    normals = torch.linalg.cross(v1 - v0, v2 - v0, dim=-1)
    assert normals.norm(dim=-1).min() > 1e-9
    centre = torch.tensor([0.0, 0.02, 0.0], dtype=torch.float64)
    outward = ((normals * ((v0 + v1 + v2) / 3 - centre)).sum(-1) > 0).double().mean()
    assert outward > 0.97
    assert verts.abs().max() < 0.45
    lo, hi = verts.min(0).values, verts.max(0).values
    assert -0.37 < lo[1] < -0.31 and 0.38 < hi[1] < 0.42  # chin ... crown
    assert 0.24 < hi[0] < 0.3 and torch.isclose(lo[0], -hi[0])  # symmetric half width
    assert 0.32 < hi[2] < 0.4 and -0.38 < lo[2] < -0.3  # nose tip ... back of the head


def test_uv_atlas_in_unit_square_no_flips_no_overlaps(head):
    uv = head.uv_coords.double().numpy()
    tri = uv[head.uv_faces.numpy()]  # [F, 3, 2]
    assert uv.min() >= 0.0 and uv.max() <= 1.0
    area2 = ((tri[:, 1, 0] - tri[:, 0, 0]) * (tri[:, 2, 1] - tri[:, 0, 1])
             - (tri[:, 2, 0] - tri[:, 0, 0]) * (tri[:, 1, 1] - tri[:, 0, 1]))
    assert area2.min() > 1e-6  # all counter-clockwise, none degenerate
    size = 512
    coverage = np.zeros((size, size), dtype=np.int32)
    for a, b, c in tri:
        lo = np.floor(np.minimum(np.minimum(a, b), c) * size).astype(int)
        hi = np.ceil(np.maximum(np.maximum(a, b), c) * size).astype(int)
        xs, ys = np.meshgrid(np.arange(lo[0], hi[0]), np.arange(lo[1], hi[1]), indexing="ij")
        px, py = (xs + 0.5) / size, (ys + 0.5) / size
        d = (b[0] - a[0]) * (c[1] - a[1]) - (c[0] - a[0]) * (b[1] - a[1])
        w1 = ((px - a[0]) * (c[1] - a[1]) - (c[0] - a[0]) * (py - a[1])) / d
        w2 = ((b[0] - a[0]) * (py - a[1]) - (px - a[0]) * (b[1] - a[1])) / d
        inside = (w1 > 1e-9) & (w2 > 1e-9) & (w1 + w2 < 1 - 1e-9)
        np.add.at(coverage, (xs[inside], ys[inside]), 1)
    assert coverage.max() == 1  # no cell covered twice
    total_area = area2.sum() / 2
    assert abs(coverage.sum() / size**2 - total_area) < 0.01  # union area == sum of areas
    assert total_area > 0.95
    # the face is central in u and gets a larger share of the atlas than of the surface
    face_faces = head.region_masks["face"][head.faces].all(dim=1).numpy()
    assert abs(tri[face_faces, :, 0].mean() - 0.5) < 0.01
    verts = head.template.double()
    v0, v1, v2 = (verts[head.faces[:, k]] for k in range(3))
    surface = torch.linalg.cross(v1 - v0, v2 - v0, dim=-1).norm(dim=-1).numpy() / 2
    uv_share = area2[face_faces].sum() / area2.sum()
    surface_share = surface[face_faces].sum() / surface.sum()
    assert uv_share > 0.35 and uv_share > 1.5 * surface_share


def test_seam_vertices_are_split_in_uv(head):
    faces, uv_faces = head.faces.numpy(), head.uv_faces.numpy()
    assert head.uv_coords.shape[0] > head.num_vertices
    pairs = np.unique(np.stack([faces.ravel(), uv_faces.ravel()], 1), axis=0)
    assert len(np.unique(pairs[:, 1])) == len(pairs)  # every UV corner belongs to one vertex


def test_region_masks(head, neutral):
    masks = head.region_masks
    for name in ("face", "mouth", "left_eye", "right_eye", "back"):
        assert masks[name].dtype == torch.bool and masks[name].shape == (head.num_vertices,)
        assert masks[name].sum() > 20
    assert neutral[masks["left_eye"], 0].min() > 0 > neutral[masks["right_eye"], 0].max()
    assert neutral[masks["back"], 2].max() < -0.05
    assert not (masks["back"] & masks["face"]).any()
    assert neutral[masks["left_eye"], 1].min() > neutral[masks["mouth"], 1].max()


def test_landmarks_semantic_layout(head, neutral):
    idx = head.landmark_indices
    assert idx.shape == (68,) and idx.dtype == torch.long and len(set(idx.tolist())) == 68
    lm = head.landmarks(neutral[None])[0]
    x, y, z = lm.unbind(-1)
    assert torch.equal(lm, neutral[idx])
    assert int(idx[30]) == int(neutral[:, 2].argmax())  # nose tip is the most forward vertex
    assert torch.all(torch.diff(x[0:17]) > 0)  # jaw contour from the right (-x) to the left (+x)
    assert int(y[0:17].argmin()) == 8  # chin is the lowest contour point
    assert x[48] < x[54] and x[60] < x[64] and x[48] < -0.04 and x[54] > 0.04  # mouth corners
    assert y[36:48].min() > y[48:68].max()  # eyes above the mouth
    assert y[17:27].min() > y[36:48].max()  # brows above the eyes
    assert x[36] < x[39] < 0 < x[42] < x[45]  # eye corners, right eye at -x
    assert (y[[37, 38, 43, 44]] > y[[41, 40, 47, 46]]).all()  # upper lids above lower lids
    assert y[51] > y[62] > y[66] > y[57]  # outer upper lip, inner lips, outer lower lip
    masks = head.region_masks
    assert masks["right_eye"][idx[36:42]].all() and masks["left_eye"][idx[42:48]].all()
    assert masks["mouth"][idx[48:68]].all() and masks["face"][idx].all()


def _expression(head, name: str, value: float = 1.0) -> FaceParams:
    params = head.neutral_params(1)
    params.expression[0, head.expression_index(name)] = value
    return params


def test_expressions_move_face_and_keep_back_exactly_still(head, neutral):
    masks = head.region_masks
    features = masks["mouth"] | masks["left_eye"] | masks["right_eye"] | masks["left_brow"] | masks["right_brow"]
    for name in ("jaw_open", "smile", "blink_left", "blink_right", "brow_raise", "mouth_pucker", "frown"):
        assert name in head.expression_names
    for name in head.expression_names:
        moved = head.vertices(_expression(head, name))[0]
        displacement = (moved - neutral).norm(dim=-1)
        assert displacement[features].max() > 0.005, name
        assert torch.equal(moved[masks["back"]], neutral[masks["back"]]), name
        assert displacement[~masks["face"]].max() < displacement.max(), name


def test_named_expressions_do_what_they_say(head, neutral):
    lm0 = head.landmarks(neutral[None])[0]

    def landmarks_of(name):
        return head.landmarks(head.vertices(_expression(head, name)))[0]

    lm = landmarks_of("blink_left")
    open_gap = (lm0[[43, 44], 1] - lm0[[47, 46], 1]).mean()
    closed_gap = (lm[[43, 44], 1] - lm[[47, 46], 1]).mean()
    assert open_gap > 0.015 and closed_gap < 0.3 * open_gap
    assert (lm[[43, 44], 1] < lm0[[43, 44], 1] - 0.01).all()  # upper lid moved down
    assert torch.equal(lm[36:42], lm0[36:42])  # the right eye stays open
    lm = landmarks_of("blink_right")
    assert (lm[[37, 38], 1] - lm[[41, 40], 1]).mean() < 0.3 * open_gap
    lm = landmarks_of("jaw_open")
    assert lm[57, 1] < lm0[57, 1] - 0.02 and (lm[51] - lm0[51]).abs().max() < 0.002
    lm = landmarks_of("smile")
    assert lm[48, 1] > lm0[48, 1] + 0.005 and lm[54, 1] > lm0[54, 1] + 0.005
    assert lm[54, 0] - lm[48, 0] > lm0[54, 0] - lm0[48, 0]
    lm = landmarks_of("brow_raise")
    assert (lm[17:27, 1] > lm0[17:27, 1] + 0.005).all()


def test_jaw_rotation_opens_mouth_smoothly(head, neutral):
    params = head.neutral_params(2)
    params.jaw[1, 0] = 0.25
    verts = head.vertices(params)
    assert torch.equal(verts[0], neutral)
    lm = head.landmarks(verts)
    assert lm[1, 8, 1] < lm[0, 8, 1] - 0.05  # chin drops
    assert (lm[1, 57] - lm[1, 51]).norm() > (lm[0, 57] - lm[0, 51]).norm() + 0.02
    back, nose = head.region_masks["back"], head.region_masks["nose"]
    assert torch.equal(verts[1, back], neutral[back]) and torch.equal(verts[1, nose], neutral[nose])
    weights = head.jaw_weights
    assert weights.min() == 0 and weights.max() == 1
    edges = torch.cat([head.faces[:, [0, 1]], head.faces[:, [1, 2]]])
    assert (weights[edges[:, 0]] - weights[edges[:, 1]]).abs().max() < 0.6  # no hard cut


def test_identity_changes_shape_and_stays_in_box(head, neutral):
    assert head.identity_dim >= 8
    for k in range(head.identity_dim):
        params = head.neutral_params(1)
        params.identity[0, k] = 1.0
        assert (head.vertices(params)[0] - neutral).norm(dim=-1).max() > 0.003
    # plausible heads (Gaussian identities) with every expression at full strength and an open jaw
    extreme = head.neutral_params(256)
    extreme.identity[:] = torch.randn(256, head.identity_dim, generator=torch.Generator().manual_seed(0))
    extreme.expression[:] = 1.0
    extreme.jaw[:, 0] = 0.25
    assert head.vertices(extreme).abs().max() < 0.5


def test_expressions_do_not_fold_faces(head, neutral):
    n0 = face_normals(neutral[None], head.faces, normalize=False)[0]
    params = head.neutral_params(head.expression_dim + 1)
    params.expression[: head.expression_dim] = torch.eye(head.expression_dim)
    params.jaw[-1, 0] = 0.3
    n1 = face_normals(head.vertices(params), head.faces, normalize=False)  # [B, F, 3]
    assert ((n0[None] * n1).sum(-1) > 0).all()


def test_deterministic_cached_and_fast():
    first = default_head_model()
    build_procedural_head_arrays.cache_clear()
    start = time.perf_counter()
    second = default_head_model()
    assert time.perf_counter() - start < 0.5
    for name, buffer in first.named_buffers():
        assert torch.equal(buffer, dict(second.named_buffers())[name]), name
    assert first.template.data_ptr() != second.template.data_ptr()  # each call owns its tensors


def test_presets_and_to_device_dtype():
    tiny = default_head_model("tiny")
    assert tiny.num_vertices >= 2000
    with pytest.raises(ValueError):
        default_head_model("huge")
    with pytest.raises(ValueError):
        ProceduralHead(ProceduralHeadConfig(longitude_segments=4, latitude_rings=2))
    assert tiny.state_dict() == {}  # rebuilt, never stored in checkpoints
    model = tiny.to(torch.float64)
    assert model.faces.dtype == torch.long and model.template.dtype == torch.float64
    params = model.neutral_params(3)
    assert params.identity.dtype == torch.float64
    assert model.vertices(params).shape == (3, tiny.num_vertices, 3)
    with pytest.raises(ValueError):
        model.vertices(FaceParams.zeros(1, model.identity_dim + 1, model.expression_dim))
    random = model.random_params(4, generator=torch.Generator().manual_seed(1))
    assert random.batch_size == 4 and (random.jaw[:, 0] >= 0).all()
