"""End-to-end triplane rendering: background, an analytic sphere, gradients, invariances, config."""

import math

import pytest
import torch

from avatar4d.geometry.camera import orbit_camera
from avatar4d.rendering import RENDERING_PRESETS, OSGDecoder, RenderingConfig, TriplaneRenderer, plane_axis_pairs

C, R, RES = 8, 16, 16
SMALL = dict(depth_resolution=16, depth_resolution_importance=16)


def set_effective(layer, weight, bias):
    """Load effective (run-time) weights into an equalised-lr FullyConnectedLayer."""
    with torch.no_grad():
        layer.weight.copy_(weight / layer.weight_gain)
        layer.bias.copy_(bias / layer.bias_gain)


def empty_decoder() -> OSGDecoder:
    decoder = OSGDecoder(C, 16, C)
    with torch.no_grad():
        decoder.net[2].weight[0].zero_()
        decoder.net[2].bias[0] = -100.0 / decoder.net[2].bias_gain
    return decoder


def sphere_scene(radius: float = 0.25, sharpness: float = 2000.0):
    """'corrected' triplanes + decoder whose density is sharpness * (r0^2 - rho^2) inside a sphere
    at the origin (rho: grid-scaled radius, r0 = 2 * radius) and ~0 outside."""
    centres = (torch.arange(32, dtype=torch.float32) * 2 + 1) / 32 - 1
    gy, gx = torch.meshgrid(centres, centres, indexing="ij")
    planes = torch.zeros(1, 3, C, 32, 32)
    planes[:, :, 0] = 1.0 - (gx**2 + gy**2)  # mean over planes = 1 - (2/3) rho^2
    decoder = OSGDecoder(C, C, C)
    r0_sq, offset = (2 * radius) ** 2, 50.0
    w0, b0 = torch.zeros(C, C), torch.zeros(C)
    w0[0, 0] = 1.5 * sharpness
    b0[0] = sharpness * (r0_sq - 1.5) + offset
    w2, b2 = torch.zeros(C + 1, C), torch.zeros(C + 1)
    w2[0, 0] = 1.0
    b2[0] = -offset
    set_effective(decoder.net[0], w0, b0)
    set_effective(decoder.net[2], w2, b2)
    return planes, decoder


def test_empty_triplane_renders_the_background():
    planes = torch.zeros(2, 3, C, R, R)
    camera = orbit_camera(torch.tensor([0.0, 0.3]), 0.1)
    for white in (False, True):
        renderer = TriplaneRenderer(RenderingConfig(white_back=white, deterministic=True, **SMALL))
        out = renderer(planes, empty_decoder(), camera, RES)
        assert out.features.shape == (2, C, RES, RES) and out.rgb.shape == (2, 3, RES, RES)
        assert out.depth.shape == out.opacity.shape == (2, 1, RES, RES)
        assert out.opacity.abs().max() < 1e-6
        torch.testing.assert_close(out.rgb, torch.full_like(out.rgb, 1.0 if white else -1.0))
        torch.testing.assert_close(out.depth, torch.full_like(out.depth, 3.3))  # no weight: far end


def test_auto_range_background_depth_is_the_far_end():
    camera = orbit_camera(torch.tensor([0.0, 0.5]), 0.0, radius=torch.tensor([2.7, 3.1]))
    renderer = TriplaneRenderer(RenderingConfig(ray_start=None, ray_end=None, deterministic=True, **SMALL))
    out = renderer(torch.zeros(2, 3, C, R, R), empty_decoder(), camera, 8)
    far = camera.origin.norm(dim=-1) + 0.6
    torch.testing.assert_close(out.depth.amax(dim=(1, 2, 3)), far)


def test_sphere_opacity_and_first_hit_depth():
    planes, decoder = sphere_scene()
    res = 17
    config = RenderingConfig(plane_convention="corrected", deterministic=True, depth_resolution=24,
                             depth_resolution_importance=24)
    camera = orbit_camera(0.0, 0.0)
    out = TriplaneRenderer(config)(planes, decoder, camera, res)
    centre = (res // 2, res // 2)
    assert out.opacity[0, 0][centre].item() == pytest.approx(1.0, abs=1e-3)
    first_hit = camera.origin.norm().item() - 0.25  # camera on the z axis, sphere at the origin
    spacing = (3.3 - 2.25) / (24 - 1)
    assert abs(out.depth[0, 0][centre].item() - first_hit) < spacing
    assert out.opacity[0, 0, 0, 0].item() < 1e-3  # a corner ray misses the sphere
    assert (out.opacity >= 0).all() and (out.opacity <= 1 + 1e-6).all()
    opaque = out.opacity > 0.5
    assert opaque.sum() > 10
    assert ((out.depth[opaque] >= 2.25) & (out.depth[opaque] <= 3.3)).all()


def test_random_scene_ranges_and_gradients():
    torch.manual_seed(0)
    planes = (torch.randn(2, 3, C, R, R) * 2).requires_grad_()
    decoder = OSGDecoder(C, 16, C)
    camera = orbit_camera(torch.tensor([0.2, -0.3]), 0.1)
    out = TriplaneRenderer(RenderingConfig(**SMALL))(planes, decoder, camera, 8, torch.Generator().manual_seed(3))
    assert (out.opacity >= 0).all() and (out.opacity <= 1).all()
    assert (out.features >= -1.002).all() and (out.features <= 1.002).all()
    assert ((out.depth >= 2.25) & (out.depth <= 3.3 + 1.05 / 15)).all()  # jitter may pass the far end
    (out.features.square().mean() + out.depth.mean() + out.opacity.mean()).backward()
    assert torch.isfinite(planes.grad).all() and planes.grad.abs().sum() > 0
    for name, param in decoder.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_rendering_does_not_depend_on_the_rest_of_the_batch():
    torch.manual_seed(1)
    planes = torch.randn(3, 3, C, R, R) * 2
    decoder = OSGDecoder(C, 16, C)
    camera = orbit_camera(torch.tensor([0.3, -0.2, 0.0]), torch.tensor([0.0, 0.1, -0.1]),
                          radius=torch.tensor([2.7, 2.9, 2.6]))
    for auto in (False, True):
        config = RenderingConfig(deterministic=True, **SMALL)
        if auto:
            config = config.replace(ray_start=None, ray_end=None)
        renderer = TriplaneRenderer(config)
        together = renderer(planes, decoder, camera, 8)
        for i in range(3):
            alone = renderer(planes[i:i + 1], decoder, camera[i], 8)
            torch.testing.assert_close(alone.features, together.features[i:i + 1], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(alone.depth, together.depth[i:i + 1], atol=1e-5, rtol=1e-5)


def mirror_symmetric(planes: torch.Tensor, convention: str) -> torch.Tensor:
    """Average each plane with its reflection along whichever grid axis carries world x."""
    out = planes.clone()
    for k, (first, second) in enumerate(plane_axis_pairs(convention)):
        if first == 0:
            out[:, k] = 0.5 * (out[:, k] + out[:, k].flip(-1))
        if second == 0:
            out[:, k] = 0.5 * (out[:, k] + out[:, k].flip(-2))
    return out


@pytest.mark.parametrize("convention", ["corrected", "eg3d"])
def test_mirrored_cameras_give_mirrored_images(convention):
    torch.manual_seed(2)
    planes = mirror_symmetric(torch.randn(1, 3, C, R, R) * 3, convention)
    decoder = OSGDecoder(C, 16, C)
    renderer = TriplaneRenderer(RenderingConfig(plane_convention=convention, deterministic=True, **SMALL))
    left = renderer(planes, decoder, orbit_camera(0.4, 0.15), RES)
    right = renderer(planes, decoder, orbit_camera(-0.4, 0.15), RES)
    torch.testing.assert_close(left.features, right.features.flip(-1), atol=2e-4, rtol=0)
    torch.testing.assert_close(left.depth, right.depth.flip(-1), atol=2e-4, rtol=0)
    # the image itself is not symmetric, so the check has teeth
    assert (left.features - left.features.flip(-1)).abs().max() > 0.05


def test_chunking_and_seeds():
    torch.manual_seed(4)
    planes = torch.randn(2, 3, C, R, R)
    decoder = OSGDecoder(C, 16, C)
    camera = orbit_camera(torch.tensor([0.1, -0.1]), 0.0)
    whole = TriplaneRenderer(RenderingConfig(**SMALL))
    chunked = TriplaneRenderer(RenderingConfig(max_points_per_chunk=700, **SMALL))
    a = whole(planes, decoder, camera, 8, torch.Generator().manual_seed(7))
    b = chunked(planes, decoder, camera, 8, torch.Generator().manual_seed(7))
    c = whole(planes, decoder, camera, 8, torch.Generator().manual_seed(8))
    torch.testing.assert_close(a.features, b.features, atol=1e-6, rtol=0)
    torch.testing.assert_close(a.depth, b.depth, atol=1e-6, rtol=0)
    assert (a.features - c.features).abs().max() > 1e-4
    # one camera broadcasts over the batch
    single = whole(planes, decoder, camera[0], 8, torch.Generator().manual_seed(7))
    assert single.features.shape == (2, C, 8, 8)


def test_no_importance_samples():
    planes, decoder = sphere_scene(sharpness=20000.0)
    config = RenderingConfig(plane_convention="corrected", deterministic=True, depth_resolution=64,
                             depth_resolution_importance=0)
    out = TriplaneRenderer(config)(planes, decoder, orbit_camera(0.0, 0.0), 9)
    assert out.opacity[0, 0, 4, 4].item() == pytest.approx(1.0, abs=1e-3)
    assert abs(out.depth[0, 0, 4, 4].item() - (2.7 - 0.25)) < 1.05 / 63  # camera 2.7 from the origin (EG3D)


@pytest.mark.parametrize("overrides", [
    dict(plane_convention="xzy"), dict(box_warp=0.0), dict(ray_start=None), dict(ray_end=None),
    dict(ray_start=3.0, ray_end=2.0), dict(ray_start=-1.0), dict(depth_resolution=1),
    dict(depth_resolution=3, depth_resolution_importance=4), dict(depth_resolution_importance=-1),
    dict(clamp_mode="exp"), dict(max_points_per_chunk=0),
    dict(disparity_space_sampling=True, ray_start=0.0),
])
def test_bad_config_values(overrides):
    with pytest.raises(ValueError):
        RenderingConfig(**overrides)
    with pytest.raises(ValueError):
        RenderingConfig.from_dict(overrides)


def test_bad_inputs_and_presets():
    renderer = TriplaneRenderer(RenderingConfig(**SMALL))
    decoder = OSGDecoder(C, 16, C)
    camera = orbit_camera(torch.zeros(2), 0.0)
    with pytest.raises(ValueError, match="planes must be"):
        renderer(torch.zeros(2, 4, C, R, R), decoder, camera, 8)
    with pytest.raises(ValueError, match="channels"):
        renderer(torch.zeros(2, 3, C + 1, R, R), decoder, camera, 8)
    with pytest.raises(ValueError, match="cameras"):
        renderer(torch.zeros(3, 3, C, R, R), decoder, camera, 8)
    assert list(renderer.parameters()) == []
    paper = RENDERING_PRESETS.get("paper")
    assert paper.plane_convention == "next3dpp" and paper.ray_start is None and paper.ray_end is None
    assert paper.pixel_centers is False
    assert paper.depth_resolution == paper.depth_resolution_importance == 48
    assert RENDERING_PRESETS.get("eg3d").plane_convention == "eg3d"
    assert RenderingConfig.from_json(paper.to_json()) == paper
    assert math.isclose(RenderingConfig().ray_end, 3.3)


class TransparentDecoder(torch.nn.Module):
    """Exactly zero density everywhere: every ray's depth is EG3D's 0/0 → +inf before the clamp."""

    def forward(self, samples, directions):
        # samples [B, 3, N, C] → sigma [B, N, 1], rgb [B, N, 3]
        return {"sigma": torch.full((samples.shape[0], samples.shape[2], 1), -1e4),
                "rgb": torch.zeros(samples.shape[0], samples.shape[2], 3)}


def test_official_batch_coupling_and_evaluation_jitter_are_selectable():
    """Issue 9 item 5: the official auto ray range uses the batch's mean camera distance and the depth
    clamp the whole batch's sample range (batch_statistics); the official evaluation keeps the stratified
    jitter (jitter_in_deterministic). Defaults stay per camera / per ray / jitter-free."""
    from avatar4d.rendering.sampling import resolve_ray_range

    near = orbit_camera(torch.tensor([0.0, 0.0]), torch.tensor([0.0, 0.0]), radius=torch.tensor([2.7, 3.5]))
    start, end = resolve_ray_range(near.origin, None, None)
    assert torch.allclose(start[:, 0], torch.tensor([2.25, 3.05]))
    start, end = resolve_ray_range(near.origin, None, None, batch_mean=True)
    assert torch.allclose(start[:, 0], torch.tensor([2.65, 2.65]))
    assert torch.allclose(end[:, 0], torch.tensor([3.7, 3.7]))

    planes = torch.zeros(2, 3, C, R, R)
    base = dict(plane_convention="corrected", deterministic=True, depth_resolution=8, depth_resolution_importance=0,
                ray_start=None, ray_end=None)  # the auto range
    per_ray = TriplaneRenderer(RenderingConfig(**base))(planes, TransparentDecoder(), near, 4)
    assert torch.allclose(per_ray.depth[0], torch.full((1, 4, 4), 2.7 + 0.6))  # each ray's own far end
    assert torch.allclose(per_ray.depth[1], torch.full((1, 4, 4), 3.5 + 0.6))
    batch = TriplaneRenderer(RenderingConfig(**base, batch_statistics=True))(planes, TransparentDecoder(), near, 4)
    assert torch.allclose(batch.depth, torch.full((2, 1, 4, 4), 3.1 + 0.6))  # the batch's far end, for both

    sphere_planes, decoder = sphere_scene()
    camera = orbit_camera(0.0, 0.0)
    renders = {}
    for jitter in (False, True):
        config = RenderingConfig(plane_convention="corrected", deterministic=True, jitter_in_deterministic=jitter,
                                 **SMALL)
        renders[jitter] = [TriplaneRenderer(config)(sphere_planes, decoder, camera, 9,
                                                    generator=torch.Generator().manual_seed(seed)).depth
                           for seed in (0, 1)]
    assert torch.equal(*renders[False])
    assert not torch.equal(*renders[True])
