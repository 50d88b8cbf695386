"""Image encoders of the encode stage: token shapes, preprocessing, hidden-layer semantics, weights."""

import pytest
import torch

from avatar4d.errors import UserError
from factory.stages.encoders import (
    CLIP_MEAN,
    CLIP_STD,
    ENCODER_PRESETS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClipImageEncoder,
    DinoImageEncoder,
    ImageEncoders,
    preprocess_images,
)


@pytest.fixture(scope="module")
def tiny():
    return ENCODER_PRESETS.get("tiny")


@pytest.fixture(scope="module")
def encoders(tiny):
    return ImageEncoders(tiny)


def _images(n: int = 3, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_presets_document_token_shapes(tiny, encoders):
    paper = ENCODER_PRESETS.get("paper")
    assert paper.clip.token_shape == (257, 1280) and paper.dino.token_shape == (257, 768)
    assert paper.clip.block_index == 30 and paper.require_pretrained  # hidden_states[-2] of 32 blocks
    assert tiny.clip.token_shape == (5, 32) and tiny.dino.token_shape == (5, 24)
    clip, dino = encoders(_images())
    assert clip.shape == (3, 5, 32) and dino.shape == (3, 5, 24)
    assert clip.dtype == dino.dtype == torch.float32 and torch.isfinite(clip).all() and torch.isfinite(dino).all()
    null_clip, null_dino = encoders.null_condition()
    assert null_clip.shape == (5, 32) and null_dino.shape == (5, 24)


def test_normalisation_constants_are_the_libraries():
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    assert CLIP_MEAN == tuple(OPENAI_DATASET_MEAN) and CLIP_STD == tuple(OPENAI_DATASET_STD)
    assert IMAGENET_MEAN == tuple(IMAGENET_DEFAULT_MEAN) and IMAGENET_STD == tuple(IMAGENET_DEFAULT_STD)


def test_preprocess_resizes_shortest_side_and_centre_crops():
    white = torch.full((2, 3, 40, 80), 255, dtype=torch.uint8)
    out = preprocess_images(white, resize=20, image_size=16, mean=CLIP_MEAN, std=CLIP_STD)
    assert out.shape == (2, 3, 16, 16)
    expected = (1 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert torch.allclose(out[0, :, 5, 5], expected, atol=1e-5)
    # shortest side already at `resize`: no resampling, the crop is the centre (rows 2..17, columns 7..22)
    columns = torch.arange(30, dtype=torch.uint8).expand(1, 3, 20, 30).contiguous()
    crop = preprocess_images(columns, resize=20, image_size=16, mean=(0.0,) * 3, std=(1 / 255,) * 3)
    assert crop[0, 0, 0].tolist() == pytest.approx(list(range(7, 23)))
    with pytest.raises(ValueError, match="B, 3, H, W"):
        preprocess_images(torch.zeros(3, 8, 8, dtype=torch.uint8), resize=8, image_size=8, mean=CLIP_MEAN, std=CLIP_STD)


def test_clip_tokens_are_the_penultimate_block_output(tiny):
    """hidden_states[-2]: class token + patches after block L-2, no final LayerNorm (rebuilt by hand)."""
    from open_clip.transformer import VisionTransformer

    cfg = tiny.clip.replace(layers=3)
    encoder = ClipImageEncoder(cfg, init_seed=5)
    torch.manual_seed(5)
    full = VisionTransformer(image_size=cfg.image_size, patch_size=cfg.patch_size, width=cfg.width, layers=3,
                             heads=cfg.width // cfg.head_width, mlp_ratio=cfg.mlp_ratio, output_dim=cfg.output_dim)
    full.eval()
    pixels = torch.randn(2, 3, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        x = full.conv1(pixels).flatten(2).transpose(1, 2)                             # [2, 4, 32]
        x = torch.cat([full.class_embedding.expand(2, 1, -1), x], dim=1) + full.positional_embedding
        x = full.ln_pre(x)
        for block in full.transformer.resblocks[:2]:
            x = block(x)
        tokens = encoder(pixels)
    assert len(encoder.model.transformer.resblocks) == 2  # the last block is pruned
    torch.testing.assert_close(tokens, x, rtol=1e-5, atol=1e-5)
    last = ClipImageEncoder(cfg.replace(hidden_layer=-1), init_seed=5)
    assert not torch.allclose(last(pixels), tokens)


def test_random_weights_are_reproducible_from_the_seed(tiny, encoders):
    again = ImageEncoders(tiny)
    assert again.weights_sha256 == encoders.weights_sha256
    images = _images(2)
    for a, b in zip(again(images), encoders(images)):
        assert torch.equal(a, b)
    other = ImageEncoders(tiny.replace(init_seed=1))
    assert other.weights_sha256 != encoders.weights_sha256
    moved = ImageEncoders(tiny.replace(dino=tiny.dino.replace(resize=20)))  # preprocessing is part of the hash
    assert moved.weights_sha256 != encoders.weights_sha256


def test_open_clip_checkpoint_file_loads_the_visual_tower(tiny, tmp_path):
    from open_clip.transformer import VisionTransformer

    source = ClipImageEncoder(tiny.clip, init_seed=3)
    cfg = tiny.clip
    torch.manual_seed(3)
    full = VisionTransformer(image_size=cfg.image_size, patch_size=cfg.patch_size, width=cfg.width, layers=cfg.layers,
                             heads=cfg.width // cfg.head_width, mlp_ratio=cfg.mlp_ratio, output_dim=cfg.output_dim)
    state = {f"visual.{k}": v for k, v in full.state_dict().items()}  # every block, ln_post and proj
    state["text_projection"] = torch.zeros(4, 4)  # a whole CLIP checkpoint also holds the text tower
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(state, path)
    loaded = ClipImageEncoder(tiny.clip.replace(checkpoint=str(path)), require_pretrained=True)
    pixels = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(loaded(pixels), source(pixels))
    with pytest.raises(UserError, match="does not fit the configured tower"):
        ClipImageEncoder(tiny.clip.replace(width=64, checkpoint=str(path)))


def test_hugging_face_folders_load_offline(tiny, tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModel, Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    clip_model = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=128, num_hidden_layers=2,
                                                  num_attention_heads=2, image_size=16, patch_size=8)).eval()
    clip_model.save_pretrained(tmp_path / "image_encoder")
    dino_model = Dinov2Model(Dinov2Config(hidden_size=24, num_hidden_layers=2, num_attention_heads=2, patch_size=8,
                                          image_size=16)).eval()
    dino_model.save_pretrained(tmp_path / "dinov2")
    pixels = torch.randn(2, 3, 16, 16)
    clip = ClipImageEncoder(tiny.clip.replace(checkpoint=str(tmp_path / "image_encoder")), require_pretrained=True)
    dino = DinoImageEncoder(tiny.dino.replace(checkpoint=str(tmp_path / "dinov2")), require_pretrained=True)
    with torch.no_grad():
        expected_clip = clip_model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
        expected_dino = dino_model(pixel_values=pixels).last_hidden_state
        assert clip.backend == "transformers"
        torch.testing.assert_close(clip(pixels), expected_clip)
        torch.testing.assert_close(dino(pixels), expected_dino)
    with pytest.raises(UserError, match="hidden size, patch"):
        DinoImageEncoder(tiny.dino.replace(hidden_size=48, heads=2, checkpoint=str(tmp_path / "dinov2")))


def test_missing_weights_are_one_line_errors(tiny, tmp_path):
    paper = ENCODER_PRESETS.get("paper")
    with pytest.raises(UserError, match="--clip-checkpoint") as error:
        ImageEncoders(paper)
    assert "\n" not in str(error.value)
    with pytest.raises(UserError, match="CLIP checkpoint not found"):
        ClipImageEncoder(tiny.clip.replace(checkpoint=str(tmp_path / "missing.bin")))
    with pytest.raises(UserError, match="--dino-checkpoint"):
        DinoImageEncoder(tiny.dino, require_pretrained=True)
    (tmp_path / "weights.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="Dinov2Model folder"):
        DinoImageEncoder(tiny.dino.replace(checkpoint=str(tmp_path / "weights.bin")))
    with pytest.raises(UserError, match="cannot read CLIP checkpoint"):
        ClipImageEncoder(tiny.clip.replace(checkpoint=str(tmp_path / "weights.bin")))


def test_config_rejects_impossible_sizes(tiny):
    from avatar4d.config import ConfigError

    with pytest.raises(ConfigError, match="multiple of patch_size"):
        tiny.clip.replace(image_size=20)
    with pytest.raises(ConfigError, match="hidden_layer"):
        tiny.clip.replace(hidden_layer=-3)
    with pytest.raises(ConfigError, match="smaller than the crop"):
        tiny.dino.replace(resize=8)
