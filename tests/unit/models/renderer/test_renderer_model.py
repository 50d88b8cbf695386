"""The motion-aware renderer and motion encoder: release structure, shapes, checkpoints, user errors."""

from __future__ import annotations

import pytest
import torch

from avatar4d.errors import UserError
from avatar4d.geometry.camera import orbit_camera
from avatar4d.geometry.morphable import default_head_model
from avatar4d.models.renderer import (
    MOTION_ENCODER_PRESETS,
    RENDERER_PRESETS,
    MotionAwareRenderer,
    MotionEncoder,
    MotionEncoderConfig,
)
from tests.support.manifests import load_manifest

MANIFEST = "avatarartist-release/render_TriPlaneReconstructorNeutralize.json"


def test_paper_preset_has_every_name_and_shape_of_the_release():
    manifest = load_manifest(MANIFEST)
    with torch.device("meta"):
        model = MotionAwareRenderer(RENDERER_PRESETS.get("paper"))
    ours = {name: list(value.shape) for name, value in model.state_dict().items()}
    aliases = {alias for _, alias in manifest["state_dict_aliases"]}  # <p>.weight, folded into <p>.conv.weight
    release = {name: shape for name, shape in manifest["tensors"] if name not in aliases}
    assert ours == release
    assert sum(p.numel() for p in model.parameters()) == manifest["num_params"] == 266_615_896
    assert not model.config.residual_fusion  # the release's fusion: its conv_last_2 outputs the planes
    by_module = {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}
    for name, count in manifest["num_params_by_top_level_module"].items():
        assert by_module[name] == count, name


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    head = default_head_model()
    return MotionAwareRenderer(RENDERER_PRESETS.get("tiny"), head=head), head


def test_tiny_forward_gives_every_output_and_the_motion_changes_the_face(tiny, tmp_path):
    renderer, head = tiny
    torch.manual_seed(1)
    source = torch.rand(2, 3, 64, 64) * 2 - 1
    triplane = torch.randn(2, 4, 8, 64, 64) * 0.3
    vertices = head.vertices(head.random_params(2, generator=torch.Generator().manual_seed(0))).float()
    camera = orbit_camera(torch.tensor([0.0, 0.3]), torch.tensor([0.0, 0.1]))
    planes = renderer(source, triplane, torch.randn(2, 32), vertices, camera.to_label())["planes"]
    base = renderer.composed_planes(triplane, renderer.rasterize(vertices))
    assert torch.equal(planes, base)  # residual fusion from zero: untrained, it renders the un-refined planes
    for block in renderer.encoder_canonical.trans_blocks_motion:  # the release starts them at zero
        torch.nn.init.normal_(block.attn2.proj.weight, std=0.5)
    torch.nn.init.normal_(renderer.generator_triplane.conv_last_2.weight, std=0.1)  # as training would move it
    motion = torch.randn(2, 32)
    out = renderer(source, triplane, motion, vertices, camera.to_label(), source_motion=torch.zeros(2, 32))
    shapes = {key: tuple(value.shape) for key, value in out.items()}
    assert shapes == {"image": (2, 3, 64, 64), "image_raw": (2, 3, 16, 16), "depth": (2, 1, 16, 16),
                      "opacity": (2, 1, 16, 16), "features": (2, 8, 16, 16), "planes": (2, 3, 8, 64, 64)}
    assert all(torch.isfinite(v).all() for v in out.values())
    other = renderer(source, triplane, -motion, vertices, camera, source_motion=torch.zeros(2, 32))
    assert not torch.allclose(out["planes"], other["planes"])
    renderer.save_pretrained(tmp_path / "ckpt")
    loaded = MotionAwareRenderer.from_pretrained(tmp_path / "ckpt", head=head)
    assert all(torch.equal(a, b) for a, b in zip(renderer.state_dict().values(), loaded.state_dict().values()))


def test_bad_inputs_are_named(tiny):
    renderer, head = tiny
    vertices = head.vertices(head.random_params(1)).float()
    with pytest.raises(ValueError, match="parametric_triplane must be"):
        renderer(torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 8, 64, 64), torch.zeros(1, 32), vertices,
                 torch.zeros(1, 25))
    with pytest.raises(ValueError, match="motion must be"):
        renderer(torch.zeros(1, 3, 64, 64), torch.zeros(1, 4, 8, 64, 64), torch.zeros(1, 5), vertices,
                 orbit_camera(0.0, 0.0))


def test_motion_encoder_gives_a_vector_and_loads_a_torchscript_export(tmp_path):
    encoder = MotionEncoder(MOTION_ENCODER_PRESETS.get("tiny"))
    images = torch.rand(3, 3, 80, 80) * 2 - 1
    assert encoder(images).shape == (3, 32)
    scripted = torch.jit.script(torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(),
                                                    torch.nn.Linear(48, 548)))
    torch.jit.save(scripted, str(tmp_path / "pdfgc.pt"))
    external = MotionEncoder(MotionEncoderConfig(kind="torchscript", path=str(tmp_path / "pdfgc.pt")))
    assert external(images).shape == (3, 548) and not any(p.requires_grad for p in external.parameters())
    with pytest.raises(UserError, match="not found"):
        MotionEncoder(MotionEncoderConfig(kind="torchscript", path=str(tmp_path / "missing.pt")))
    (tmp_path / "junk.pt").write_bytes(b"not an archive")
    with pytest.raises(UserError, match="not a TorchScript archive"):
        MotionEncoder(MotionEncoderConfig(kind="torchscript", path=str(tmp_path / "junk.pt")))
