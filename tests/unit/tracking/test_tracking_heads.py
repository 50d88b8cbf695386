"""The fitter with the loaders' head models (FLAME: full-mesh path; landmark-only path checked)."""

from __future__ import annotations

import numpy as np
import torch

from avatar4d.geometry.camera import PoseSampler, PoseSamplerConfig
from avatar4d.geometry.morphable import load_flame
from avatar4d.geometry.morphable.procedural_mesh import build_sphere_grid, unit_directions
from avatar4d.tracking import FitConfig, LandmarkFitter, project_landmarks
from avatar4d.tracking.fitting import landmark_head


def _synthetic_flame_npz(path, seed: int = 0):
    """A tiny FLAME-layout model (sphere template, random blendshapes, 5 joints) saved as .npz."""
    rng = np.random.default_rng(seed)
    grid = build_sphere_grid(16, 8)
    template = 0.3 * unit_directions(grid.theta, grid.phi) * np.array([0.8, 1.0, 0.9])
    count = len(template)
    regressor = np.zeros((5, count))
    for j in range(5):
        regressor[j, rng.choice(count, 4, replace=False)] = 0.25
    weights = rng.random((count, 5)) ** 3
    np.savez(path, v_template=template, shapedirs=0.01 * rng.standard_normal((count, 3, 12)),
             posedirs=0.001 * rng.standard_normal((count, 3, 36)), J_regressor=regressor,
             weights=weights / weights.sum(1, keepdims=True),
             kintree_table=np.array([[-1, 0, 1, 1, 1], [0, 1, 2, 3, 4]]), f=grid.faces)
    return rng.choice(np.flatnonzero(template[:, 2] > 0.05), 68, replace=False)  # front-facing landmark vertices


def test_flame_head_is_fitted_on_the_full_mesh(tmp_path):
    indices = _synthetic_flame_npz(tmp_path / "flame.npz")
    from avatar4d.geometry.morphable import FlameConfig

    config = FlameConfig(num_identity=8, num_expression=4, shape_basis_size=8)
    head = load_flame(tmp_path / "flame.npz", landmark_indices=indices, config=config)
    assert landmark_head(head) is head  # the jaw joint is regressed from the whole mesh
    gen = torch.Generator().manual_seed(0)
    params = head.random_params(6, generator=gen, expression_scale=0.5)
    sampler = PoseSampler(PoseSamplerConfig(yaw_range=(-0.5, 0.5), pitch_range=(-0.2, 0.4), roll_range=(-0.1, 0.1)))
    camera = sampler.sample(6, gen).camera
    target = project_landmarks(head, params, camera)
    fit = LandmarkFitter(head).fit(target)
    start = LandmarkFitter(head, FitConfig(iterations=1, rigid_iterations=0, learning_rate=1e-9,
                                           final_learning_rate=1e-9)).fit(target)
    # an ellipsoid with random blendshapes has near-symmetric poses: most frames fit, a few find a local minimum
    assert fit.error_px.median() < 2.0 and fit.error_px.mean() < 0.2 * start.error_px.mean(), fit.error_px


def test_cli_places_a_flame_head_in_the_world_frame(tmp_path, monkeypatch):
    import functools

    import avatar4d.geometry.morphable as morphable
    from avatar4d.commands.track import load_head
    from avatar4d.geometry.morphable import FlameConfig, default_head_model

    # the synthetic file has 8 + 4 components (FLAME 2020: 300 + 100, the config's defaults)
    monkeypatch.setattr(morphable, "FlameConfig", functools.partial(FlameConfig, num_identity=8, num_expression=4,
                                                                    shape_basis_size=8))

    indices = _synthetic_flame_npz(tmp_path / "flame.npz")
    np.save(tmp_path / "landmarks.npy", indices)
    reference = default_head_model()
    head = load_head("flame", tmp_path / "flame.npz", tmp_path / "landmarks.npy")
    ours = head.landmarks(head.vertices(head.neutral_params()))[0]
    theirs = reference.landmarks(reference.vertices(reference.neutral_params()))[0]
    assert torch.allclose(ours.mean(0), theirs.mean(0), atol=1e-4)
    radius = lambda points: (points - points.mean(0)).norm(dim=-1).mean()  # noqa: E731
    assert torch.isclose(radius(ours), radius(theirs), rtol=1e-4)
