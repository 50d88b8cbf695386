"""Next3D++ generator (tiny preset, CPU): outputs, determinism, truncation, gradients, expressions."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import torch

from avatar4d.geometry.camera import Camera, PoseSampler
from avatar4d.geometry.morphable import FaceParams, default_head_model
from avatar4d.models.next3d import GENERATOR_PRESETS, GeneratorConfig, GeneratorOutput, Next3DGenerator
from avatar4d.rendering.rays import camera_rays
from avatar4d.rendering.sampling import resolve_ray_range

MANIFEST = Path(__file__).resolve().parents[3] / "tests/data/reference/gan-release/invertavatar_next3dpp.json"


def _tiny_config(deterministic: bool = False) -> GeneratorConfig:
    config = GENERATOR_PRESETS.get("tiny")
    if deterministic:
        config = config.replace(rendering=config.rendering.replace(deterministic=True))
    return config


def _generator(seed: int = 0, deterministic: bool = False) -> Next3DGenerator:
    torch.manual_seed(seed)
    return Next3DGenerator(_tiny_config(deterministic)).eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine, two OpenMP threads stall whenever another
    process holds a core (forward passes measured 10-50x slower), and results do not depend on it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def head():
    return default_head_model()


@pytest.fixture(scope="module")
def generator() -> Next3DGenerator:
    return _generator(0)


def _expression_params(head, batch: int = 1) -> FaceParams:
    """jaw_open + smile at full strength (coefficient 1)."""
    params = head.neutral_params(batch)
    params.expression[:, head.expression_index("jaw_open")] = 1.0
    params.expression[:, head.expression_index("smile")] = 1.0
    return params


def _inputs(config: GeneratorConfig, head, batch: int, seed: int) -> tuple[torch.Tensor, Camera, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, config.backbone.z_dim, generator=gen)
    camera = PoseSampler().sample(batch, gen).camera
    vertices = head.vertices(head.random_params(batch, generator=gen))
    return z, camera, vertices


def _outputs_equal(a: GeneratorOutput, b: GeneratorOutput) -> bool:
    tensors = ("image", "image_raw", "depth", "opacity", "features", "planes", "ws")
    return (all(torch.equal(getattr(a, name), getattr(b, name)) for name in tensors)
            and torch.equal(a.triplane.stacked(), b.triplane.stacked()))


def test_output_shapes_and_ranges(generator, head):
    cfg = generator.config
    z, camera, vertices = _inputs(cfg, head, batch=2, seed=1)
    with torch.no_grad():
        out = generator(z, camera, vertices, generator=torch.Generator().manual_seed(0))
    c, r = cfg.plane_channels, cfg.plane_resolution
    assert (c, r, generator.num_ws) == (8, 64, 10)
    assert out.image.shape == (2, 3, 64, 64)
    assert out.image_raw.shape == (2, 3, 16, 16)
    assert out.depth.shape == (2, 1, 16, 16) and out.opacity.shape == (2, 1, 16, 16)
    assert out.features.shape == (2, c, 16, 16)
    assert out.planes.shape == (2, 3, c, r, r)
    assert out.triplane.stacked().shape == (2, 4, c, r, r)
    assert out.ws.shape == (2, 10, cfg.backbone.w_dim)
    assert torch.isfinite(out.image).all() and torch.isfinite(out.planes).all()
    assert out.image_raw.min() >= -1 and out.image_raw.max() <= 1
    assert torch.equal(out.image_raw, out.features[:, :3])
    assert out.opacity.min() >= 0 and out.opacity.max() <= 1
    # auto ray range [d - 0.45, d + 0.6], d = camera distance to the origin
    distance = torch.linalg.vector_norm(camera.origin, dim=-1)  # [B]
    near, far = (distance - 0.45).view(2, 1, 1, 1), (distance + 0.6).view(2, 1, 1, 1)
    start, end = resolve_ray_range(camera.origin, None, None)
    assert torch.allclose(start.flatten(), near.flatten()) and torch.allclose(end.flatten(), far.flatten())
    assert ((out.depth >= near - 1e-5) & (out.depth <= far + 1e-5)).all()
    # a random tiny generator renders a hazy volume (max opacity 0.14-0.67 over seeds 0-3): not empty, not flat
    assert out.opacity.min() > 0 and out.opacity.max() > 1.2 * out.opacity.min()


def test_fixed_seed_is_bit_identical_across_calls_and_instances(head):
    first, second = _generator(7), _generator(7)
    z, camera, vertices = _inputs(first.config, head, batch=2, seed=3)

    def run(model: Next3DGenerator, render_seed: int) -> GeneratorOutput:
        with torch.no_grad():
            return model(z, camera, vertices, noise_mode="const", generator=torch.Generator().manual_seed(render_seed))

    a, b, c = run(first, 11), run(first, 11), run(second, 11)
    assert _outputs_equal(a, b) and _outputs_equal(a, c)
    other = run(first, 12)  # the renderer's jitter comes only from the generator we pass
    assert torch.equal(other.planes, a.planes) and not torch.equal(other.image_raw, a.image_raw)
    # deterministic rendering: no torch.Generator needed
    det1, det2 = _generator(7, deterministic=True), _generator(7, deterministic=True)
    with torch.no_grad():
        assert _outputs_equal(det1(z, camera, vertices), det2(z, camera, vertices))


def test_truncation_pulls_ws_toward_w_avg_up_to_the_cutoff(head):
    model = _generator(1)
    mapping = model.backbone.mapping
    z, camera, _ = _inputs(model.config, head, batch=4, seed=5)
    assert not mapping.w_avg.any()
    with torch.no_grad():
        for _ in range(3):
            ws_batch = model.mapping(z, camera, update_emas=True)
    beta = model.config.backbone.w_avg_beta
    expected_avg = ws_batch[:, 0].mean(0) * (1 - beta ** 3)  # three EMA steps from zero, same batch
    assert torch.allclose(mapping.w_avg, expected_avg, atol=1e-6)
    assert mapping.w_avg.abs().max() > 0
    w_avg = mapping.w_avg.clone()

    psi, cutoff = 0.5, 4
    with torch.no_grad():
        ws = model.mapping(z, camera)
        cut = model.mapping(z, camera, truncation_psi=psi, truncation_cutoff=cutoff)
        everything = model.mapping(z, camera, truncation_psi=psi)
        collapsed = model.mapping(z, camera, truncation_psi=0.0)
    assert torch.allclose(cut[:, :cutoff] - w_avg, psi * (ws[:, :cutoff] - w_avg), atol=1e-6)
    distance = lambda w: torch.linalg.vector_norm(w - w_avg, dim=-1)  # noqa: E731
    assert torch.allclose(distance(cut[:, :cutoff]), psi * distance(ws[:, :cutoff]), rtol=1e-5)
    assert torch.equal(cut[:, cutoff:], ws[:, cutoff:])
    assert torch.allclose(everything - w_avg, psi * (ws - w_avg), atol=1e-6)
    assert torch.allclose(collapsed, w_avg.expand_as(ws), atol=1e-6)
    # forward passes the truncation through to the returned ws
    with torch.no_grad():
        out = model(z[:1], camera[:1], head.vertices(head.neutral_params(1)), truncation_psi=psi,
                    truncation_cutoff=cutoff, neural_resolution=8)
    assert torch.allclose(out.ws, cut[:1]) and out.image_raw.shape == (1, 3, 8, 8)


def _release_dead_parameters_at_tiny_size(model: Next3DGenerator) -> set[str]:
    """The manifest's never-used parameters of the release, with block resolutions scaled from the
    256² paper backbones to this model's plane resolution (b256 -> b64 for tiny), among the parameters
    the model has (tiny's mappings have one layer, the release's two: no ``mapping.fc1``)."""
    manifest = json.loads(MANIFEST.read_text())
    scale = 256 // model.config.plane_resolution
    rename = lambda name: re.sub(r"\.b(\d+)\.", lambda m: f".b{int(m.group(1)) // scale}.", name)  # noqa: E731
    names = {name for name, _ in model.named_parameters()}
    return {rename(name) for name in manifest["unused_at_inference"]["names"]} & names


def test_forward_backward_time_and_gradient_flow(head):
    model = _generator(2).train()
    z, camera, vertices = _inputs(model.config, head, batch=2, seed=9)
    weights = torch.Generator().manual_seed(0)
    image_weight = torch.randn(2, 3, 64, 64, generator=weights)
    raw_weight = torch.randn(2, 3, 16, 16, generator=weights)

    def step() -> float:
        model.zero_grad(set_to_none=True)
        begin = time.perf_counter()
        out = model(z, camera, vertices, generator=torch.Generator().manual_seed(0))
        loss = (out.image * image_weight).mean() + (out.image_raw * raw_weight).mean() + out.depth.mean()
        loss.backward()
        return time.perf_counter() - begin

    step()  # warm-up
    seconds = min(step(), step())
    assert seconds < 2.0, f"tiny forward + backward at batch 2 took {seconds:.2f} s"

    without_grad = {name for name, p in model.named_parameters() if p.grad is None or not p.grad.any()}
    assert without_grad == _release_dead_parameters_at_tiny_size(model)
    for prefix in ("backbone.synthesis.", "texture_backbone.synthesis.b8.", "face_backbone.synthesis.",
                   "decoder.", "superresolution.", "backbone.mapping."):
        reached = [p.grad.abs().sum() for name, p in model.named_parameters()
                   if name.startswith(prefix) and name not in without_grad]
        assert reached and all(torch.isfinite(g) and g > 0 for g in reached), prefix


def test_expressions_change_only_the_face_region(head):
    model = _generator(3, deterministic=True)
    camera = PoseSampler().frontal(1)
    neutral = head.vertices(head.neutral_params(1))
    expressive = head.vertices(_expression_params(head))
    with torch.no_grad():
        ws = model.mapping(torch.randn(1, model.config.backbone.z_dim), camera)  # one identity
        a = model.synthesis(ws, camera, neutral)
        b = model.synthesis(ws, camera, expressive)

    assert torch.equal(a.triplane.static, b.triplane.static)
    assert torch.equal(a.triplane.texture, b.triplane.texture)
    assert torch.equal(a.planes[:, 1:], b.planes[:, 1:])
    box = model.face_box
    inside_box = torch.zeros(box.resolution, box.resolution, dtype=torch.bool)
    inside_box[box.row0:box.row1, box.col0:box.col1] = True
    plane0_changed = (a.planes[0, 0] != b.planes[0, 0]).any(dim=0)  # [R, R]
    assert plane0_changed.any() and not plane0_changed[~inside_box].any()

    # face region of the image: pixels whose rays cross the head's front depth inside the face box
    x0, x1, y0, y1 = box.world_bounds(model.config.rendering.box_warp)
    front_z = neutral[0, :, 2].max()
    res = model.config.neural_resolution
    origins, directions = camera_rays(camera, res, model.config.rendering.pixel_centers)  # [1, M, 3]
    hits = origins + ((front_z - origins[..., 2]) / directions[..., 2])[..., None] * directions
    face = ((hits[..., 0] >= x0) & (hits[..., 0] <= x1) & (hits[..., 1] >= y0) & (hits[..., 1] <= y1))
    face = face.view(res, res)
    assert 0.3 < face.float().mean() < 0.9
    diff = (a.image_raw - b.image_raw).abs().mean(dim=(0, 1))  # [N, N]
    inside, outside = diff[face].mean(), diff[~face].mean()
    assert inside > 0
    assert inside >= 5 * outside, f"face-region ratio {inside / outside:.1f}"


def test_mesh_conditioner_covers_the_face_box(generator, head):
    conditioner = generator.mesh_conditioner
    vertices = torch.cat([head.vertices(head.neutral_params(1)), head.vertices(_expression_params(head))])
    uv_grid, mask = conditioner(vertices)
    res = generator.face_box.resolution
    assert uv_grid.shape == (2, res, res, 2) and mask.shape == (2, 1, res, res)
    assert 0.5 < mask.mean() < 1.0
    assert uv_grid.min() >= -1 and uv_grid.max() <= 1
    assert not uv_grid[mask[:, 0] == 0].any()  # uncovered pixels carry no UV
    assert (mask[0] != mask[1]).any()  # the open jaw changes the silhouette
    with pytest.raises(ValueError, match="vertices"):
        conditioner(vertices[:, :-1])
    with pytest.raises(ValueError):
        conditioner(vertices[0])


def test_a_custom_head_topology_is_used():
    small_head = default_head_model("tiny")
    torch.manual_seed(0)
    model = Next3DGenerator(_tiny_config(deterministic=True), head=small_head)
    assert model.mesh_conditioner.num_vertices == small_head.num_vertices == 2306
    assert not any(name.startswith("mesh_conditioner") for name in model.state_dict())
    with torch.no_grad():
        out = model(torch.randn(1, 64), PoseSampler().frontal(1), small_head.vertices(small_head.neutral_params(1)),
                    neural_resolution=8)
    assert out.image.shape == (1, 3, 64, 64)
    with pytest.raises(ValueError):
        model(torch.randn(1, 64), PoseSampler().frontal(1), default_head_model().vertices(
            default_head_model().neutral_params(1)))


def test_bf16_autocast_forward_stays_close_to_fp32(generator, head):
    z, camera, vertices = _inputs(generator.config, head, batch=1, seed=4)
    with torch.inference_mode():
        full = generator(z, camera, vertices, generator=torch.Generator().manual_seed(0))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = generator(z, camera, vertices, generator=torch.Generator().manual_seed(0))
    assert half.image.shape == full.image.shape and torch.isfinite(half.image).all()
    assert half.planes.dtype == torch.float32  # the skip images stay float32
    assert (half.image_raw.float() - full.image_raw).abs().mean() < 0.02
    assert (half.image.float() - full.image).abs().mean() < 0.1
