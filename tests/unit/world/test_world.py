"""The procedural world makes pictures of heads, not noise, and its triplane is the scene.

Statistics that a random generator fails: a uniform background, one compact head, a symmetric
neutral frontal view, expressions that change only the face, depth maps that agree across
cameras, domains that look different; plus the exactness claims (pass-through decoder, the stored
triplane renders to the row's image through the VAE trainer's renderer).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from avatar4d.geometry.camera import Camera, orbit_camera
from avatar4d.geometry.morphable import FaceParams, default_head_model
from avatar4d.rendering.parametric import fill_holes
from avatar4d.world import WORLD_PRESETS, ProceduralWorldGenerator, load_world, save_world, style_for_domain

RESOLUTION = 48


@pytest.fixture(scope="module")
def head():
    return default_head_model()


def world(head, domain: str = "realistic") -> ProceduralWorldGenerator:
    config = WORLD_PRESETS.get("tiny", style=style_for_domain(domain), neural_resolution=RESOLUTION,
                               image_resolution=RESOLUTION)
    generator = ProceduralWorldGenerator(config, head).eval()
    generator.renderer.config = generator.renderer.config.replace(deterministic=True)
    return generator


def face(head, identity: torch.Tensor, **expressions: float) -> FaceParams:
    batch = identity.shape[0]
    params = FaceParams(identity, torch.zeros(batch, head.expression_dim), torch.zeros(batch, 3))
    for name, value in expressions.items():
        if name == "jaw_open":
            params.jaw[:, 0] = value
        else:
            params.expression[:, head.expression_index(name)] = value
    return params


def render(generator, head, z, camera, **expressions):
    identity = generator.identity_for_latent(z, 0.7)
    vertices = head.vertices(face(head, identity, **expressions))
    with torch.no_grad():
        return generator(z, camera, vertices, truncation_psi=0.7)


def frontal(n: int = 1) -> Camera:
    return orbit_camera(torch.zeros(n), torch.zeros(n), torch.zeros(n))


def latents(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 32, generator=torch.Generator().manual_seed(seed))


def test_decoder_passes_plane_sums_through_exactly(head):
    generator = world(head)
    samples = torch.randn(2, 3, 50, 8) * 3
    samples[..., 7] = 1.0  # the box channel: inside the box on every plane
    out = generator.decoder(samples)
    total = samples.sum(1)  # [2, 50, 8]
    expected_sigma = generator.config.density_scale * total[..., 3]
    assert torch.allclose(out["sigma"][..., 0], expected_sigma, rtol=1e-4, atol=0.05)
    features = torch.sigmoid(total[..., :7]) * 1.002 - 0.001
    assert torch.allclose(out["rgb"][..., :7], features, atol=1e-5)
    samples[..., 3] = torch.tensor([0.8, 1.0, 1.0])[:, None]  # the largest density terms the painter makes
    samples[:, 2, :, :] = 0.0  # a plane read outside the box: every feature of it is 0
    assert (generator.decoder(samples)["sigma"] < -400).all(), "nothing is dense outside the box"


def test_heads_on_a_uniform_background_with_one_compact_mask(head):
    out = render(world(head), head, latents(4, 0), frontal(4))
    opacity, image = out.opacity[:, 0], out.image
    background = opacity < 0.01
    # FFHQ framing (EG3D's intrinsics): the head fills the height, both sides are background
    assert background[:, :, :3].all() and background[:, :, -3:].all(), "the sides are background"
    assert (image.permute(0, 2, 3, 1)[background] + 1).abs().max() < 0.02, "background is uniform black"
    head_mask = (opacity > 0.5).float()[:, None]
    area = head_mask.mean((1, 2, 3))
    assert ((area > 0.2) & (area < 0.75)).all(), area
    filled, holes = fill_holes(head_mask, seed="border")  # topological holes (the head spans the height)
    assert holes.sum((1, 2, 3)).max() < 0.01 * RESOLUTION ** 2, "no holes in the head"
    assert (opacity[(opacity > 0.05)] > 0.9).float().mean() > 0.8, "a sharp silhouette, not fog"
    # a noise generator fails this: neighbouring pixels inside the head are similar
    inside = head_mask[:, :, 1:, :] * head_mask[:, :, :-1, :]
    step = ((image[:, :, 1:, :] - image[:, :, :-1, :]).abs().mean(1, keepdim=True) * inside).sum() / inside.sum()
    assert step < 0.08, step


def test_neutral_frontal_view_is_left_right_symmetric(head):
    generator = world(head)
    z = latents(3, 1)
    z[:, :head.identity_dim] = 0  # the mean head (identity blendshapes are symmetric)
    out = render(generator, head, z, frontal(3))
    mirrored = out.image.flip(-1)
    assert (out.image - mirrored).abs().mean() < 0.03
    assert (out.depth - out.depth.flip(-1)).abs().median() < 1e-3


def test_expressions_change_the_face_only(head):
    generator = world(head)
    z = latents(2, 2)
    neutral = render(generator, head, z, frontal(2))
    x0, x1, y0, y1 = generator.face_box.world_bounds(1.0)
    corners = torch.tensor([[x, y, 0.3] for x in (x0, x1) for y in (y0, y1)])[None].expand(2, 4, 3)
    uv, _ = frontal(2).project(corners)
    lo, hi = (uv.amin(1) * RESOLUTION).floor() - 2, (uv.amax(1) * RESOLUTION).ceil() + 2  # [2, 2] (col, row)
    rows, cols = torch.arange(RESOLUTION)[:, None], torch.arange(RESOLUTION)[None, :]
    for expression in ({"jaw_open": 0.3}, {"smile": 1.0}, {"blink_left": 1.0, "blink_right": 1.0}):
        moved = render(generator, head, z, frontal(2), **expression)
        change = (moved.image - neutral.image).abs().mean(1)  # [2, H, W]
        assert change.amax((1, 2)).min() > 0.08, f"{expression} is visible"
        inside = torch.stack([(cols >= lo[i, 0]) & (cols <= hi[i, 0]) & (rows >= lo[i, 1]) & (rows <= hi[i, 1])
                              for i in range(2)])
        assert (change * inside).sum() / change.sum() > 0.99, f"{expression} stays in the face box"


def test_depth_maps_agree_across_cameras(head):
    generator = world(head)
    z = latents(1, 3).expand(2, -1)
    cameras = orbit_camera(torch.tensor([0.0, 0.35]), torch.tensor([0.0, 0.1]), torch.zeros(2))
    out = render(generator, head, z, cameras)
    from avatar4d.rendering.rays import camera_rays

    origins, directions = camera_rays(cameras, RESOLUTION)
    points = origins[0] + directions[0] * out.depth[0, 0].reshape(-1, 1)  # camera 0's surface points
    solid = out.opacity[0, 0].reshape(-1) > 0.98
    uv, _ = cameras[1:].project(points[solid][None])
    pixel = (uv[0] * RESOLUTION).floor().long()
    ok = ((pixel >= 0) & (pixel < RESOLUTION)).all(-1)
    pixel, seen = pixel[ok], points[solid][ok]
    distance = (seen - origins[1, 0]).norm(dim=-1)  # from camera 1
    depth_b = out.depth[1, 0][pixel[:, 1], pixel[:, 0]]
    error = (distance - depth_b).abs()
    visible = error < 0.1  # points hidden from camera 1 are occluded, not inconsistent
    assert visible.float().mean() > 0.8
    assert error[visible].median() < 0.01, error[visible].median()


def test_domains_look_different(head):
    z = latents(6, 4)
    means = {}
    for domain in ("realistic", "pixar", "greek_statue", "zombie"):
        out = render(world(head, domain), head, z, frontal(6))
        mask = out.opacity > 0.5
        means[domain] = torch.stack([out.image[i][:, mask[i, 0]].mean(1) for i in range(6)])  # [6, 3]
    spread = max(m.std(0).norm() for m in means.values())
    names = list(means)
    gaps = [(means[a].mean(0) - means[b].mean(0)).norm() for i, a in enumerate(names) for b in names[i + 1:]]
    assert min(gaps) > 2 * spread, (gaps, spread)


def test_same_latent_same_head_and_checkpoint_round_trip(head, tmp_path):
    generator = world(head, "pixar")
    z = latents(2, 5)
    first, second = render(generator, head, z, frontal(2)), render(generator, head, z, frontal(2))
    assert torch.equal(first.image, second.image) and torch.equal(first.triplane.stacked(), second.triplane.stacked())
    info = save_world(tmp_path / "pixar", generator)
    loaded, loaded_info = load_world(tmp_path / "pixar", head=head)
    assert loaded_info.weights_sha256 == info.weights_sha256
    painted = loaded.painter(generator.mapping(z, truncation_psi=0.7)[:, 0])
    assert torch.equal(painted.stacked(), first.triplane.stacked())
    other = save_world(tmp_path / "lego", world(head, "lego"))
    assert other.weights_sha256 != info.weights_sha256, "the style is part of the checkpoint's hash"


def test_checkpoints_written_before_a_new_config_field_still_load_and_edited_configs_do_not(head, tmp_path):
    import hashlib
    import json

    from avatar4d.checkpoint.io import CheckpointError, save_checkpoint
    from avatar4d.world.checkpoint import COMPONENT

    # a checkpoint written when the world config had no `truncation_cutoff` yet: its JSON and digest lack it
    generator = world(head, "pixar")
    older = generator.config.to_dict()
    del older["truncation_cutoff"]
    digest = hashlib.sha256(json.dumps(older, indent=2, sort_keys=True).encode()).digest()
    generator.config_digest.copy_(torch.tensor(list(digest), dtype=torch.uint8))
    save_checkpoint(tmp_path / "older", generator.state_dict(), component=COMPONENT, config=older)
    loaded, _ = load_world(tmp_path / "older", head=head)
    assert loaded.config.truncation_cutoff == world(head, "pixar").config.truncation_cutoff  # today's default
    # a hand edit of a stored config is refused
    save_world(tmp_path / "pixar", world(head, "pixar"))
    info_file = tmp_path / "pixar" / "checkpoint.json"  # the config the loader reads (config.json is a copy)
    edited = json.loads(info_file.read_text())
    edited["config"]["style"]["saturation"] = 0.2
    info_file.write_text(json.dumps(edited))
    with pytest.raises(CheckpointError, match="edited by hand"):
        load_world(tmp_path / "pixar", head=head)


def test_stored_triplane_renders_to_the_rows_image(head, tmp_path):
    """What the VAE trainer renders from a stored fp16 triplane and the row's mesh is the row's image."""
    from train.vae.renderers import DomainRenderer

    generator = world(head, "greek_statue")
    save_world(tmp_path / "greek", generator)
    z = latents(2, 6)
    identity = generator.identity_for_latent(z, 0.7)
    vertices = head.vertices(face(head, identity, smile=0.8, jaw_open=0.15))
    camera = orbit_camera(torch.tensor([0.3, -0.2]), torch.tensor([0.1, 0.0]), torch.zeros(2))
    with torch.no_grad():
        out = generator(z, camera, vertices, truncation_psi=0.7)
        renderer = DomainRenderer(tmp_path / "greek", head, torch.device("cpu"))
        stored = out.triplane.stacked().half().float()
        again = renderer.render(renderer.planes(stored, vertices), camera, RESOLUTION)
    mse = F.mse_loss((again.rgb + 1) / 2, (out.image_raw + 1) / 2)
    assert 10 * torch.log10(1 / mse) > 40
