"""Next3D++ generator: the ``paper`` preset against the release manifest, and config validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from avatar4d.models.next3d import GENERATOR_PRESETS, GeneratorConfig, Next3DGenerator
from avatar4d.models.stylegan2 import BACKBONE_PRESETS

MANIFEST = Path(__file__).resolve().parents[3] / "tests/data/reference/gan-release/invertavatar_next3dpp.json"


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads(MANIFEST.read_text())


@pytest.fixture(scope="module")
def paper_generator() -> Next3DGenerator:
    with torch.device("meta"):
        return Next3DGenerator(GENERATOR_PRESETS.get("paper"))


def test_paper_state_dict_matches_the_release_key_for_key_in_order(paper_generator, manifest):
    state = paper_generator.state_dict()
    expected = [(name, tuple(shape)) for name, shape in manifest["tensors"]]
    assert len(state) == manifest["num_state_dict_entries"] == 444
    assert list(state) == [name for name, _ in expected]  # same keys, same order
    assert [(name, tuple(t.shape)) for name, t in state.items()] == expected
    assert all(t.dtype == torch.float32 for t in state.values())
    buffers = {name for name, _ in paper_generator.named_buffers()} & set(state)
    assert len(buffers) == manifest["num_buffer_tensors"] == 112


def test_paper_parameter_counts(paper_generator, manifest):
    assert sum(p.numel() for p in paper_generator.parameters()) == manifest["num_params"] == 88_301_010
    assert len(list(paper_generator.parameters())) == manifest["num_parameter_tensors"]
    by_module = {name: sum(p.numel() for p in module.parameters())
                 for name, module in paper_generator.named_children()}
    assert {k: v for k, v in by_module.items() if v} == manifest["num_params_by_top_level_module"]
    assert paper_generator.num_ws == manifest["config"]["num_ws"] == 14


def test_paper_config_follows_the_release(manifest):
    config = GENERATOR_PRESETS.get("paper")
    kwargs = manifest["config"]["constructor_kwargs"]
    assert config.image_resolution == kwargs["img_resolution"] == 512
    assert config.plane_resolution == 256 and config.plane_channels == 32
    assert config.neural_resolution == manifest["config"]["runtime_attributes"]["neural_rendering_resolution"]
    assert (config.backbone.z_dim, config.backbone.w_dim, config.backbone.c_dim) == (512, 512, 25)
    rendering = config.rendering
    assert (rendering.depth_resolution, rendering.depth_resolution_importance) == (48, 48)
    assert rendering.plane_convention == "next3dpp" and rendering.box_warp == 1
    assert rendering.ray_start is None and rendering.ray_end is None  # v20's auto range
    assert config.superresolution.noise_mode == kwargs["rendering_kwargs"]["superresolution_noise_mode"]


def test_plane_channels_must_match_the_backbones():
    with pytest.raises(ValueError, match="plane_channels"):
        GENERATOR_PRESETS.get("tiny", plane_channels=16)
    with pytest.raises(ValueError, match="plane_channels"):
        GeneratorConfig(backbone=BACKBONE_PRESETS.get("tiny", img_channels=32),
                        superresolution=GENERATOR_PRESETS.get("tiny").superresolution, plane_channels=8)
    with pytest.raises(ValueError, match="in_channels"):
        GENERATOR_PRESETS.get("tiny").replace(superresolution=GENERATOR_PRESETS.get("paper").superresolution)
    with pytest.raises(ValueError, match="face_box"):
        GENERATOR_PRESETS.get("tiny", face_box=(57, 185, 64, 180))


@pytest.mark.parametrize("preset", ["tiny", "paper"])
def test_config_json_round_trip(preset):
    config = GENERATOR_PRESETS.get(preset)
    restored = GeneratorConfig.from_json(config.to_json())
    assert restored == config
    assert isinstance(restored.face_box, tuple) and restored.to_json() == config.to_json()
