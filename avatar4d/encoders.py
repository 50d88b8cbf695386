"""Image encoders of the DiT's conditions: CLIP vision tokens and DINOv2 tokens.

What the released AvatarArtist DiT consumes (see ``reference/avatarartist-release``):

- CLIP: the IP-Adapter ViT-H/14 image encoder, ``hidden_states[-2]`` → [B, 257, 1280] (the output of
  the penultimate transformer block, before the final LayerNorm; class token first);
- DINOv2-base: ``last_hidden_state`` → [B, 257, 768] (after the final LayerNorm).

Nothing downloads: the ``paper`` preset needs local weights (``clip.checkpoint``: an open_clip
checkpoint file holding ``visual.*`` keys, e.g. ``open_clip_pytorch_model.bin`` of ViT-H-14, or a
Hugging Face ``CLIPVisionModel(WithProjection)`` folder such as IP-Adapter's ``image_encoder``;
``dino.checkpoint``: a Hugging Face ``Dinov2Model`` folder such as ``dinov2-base``). The ``tiny``
preset builds small randomly initialised models from ``init_seed`` (the same weights on every
machine). open_clip models are built from our config (``open_clip.transformer.VisionTransformer``,
no model registry, no network); DINOv2 comes from ``transformers`` (``Dinov2Config`` + ``Dinov2Model``).

Preprocessing follows the Hugging Face processors the release uses: resize the shortest side to
``resize`` (bicubic), centre-crop ``image_size``, scale to [0, 1], normalise with the encoder's
mean/std (CLIP: OpenAI's constants; DINOv2: ImageNet's). The release's DINO processor resizes to
256 and crops 224, so its tokens see the central 87.5 % of the portrait.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar4d.config import Config, ConfigError, PresetRegistry
from avatar4d.errors import UserError

logger = logging.getLogger(__name__)

# the same values as open_clip.constants.OPENAI_DATASET_MEAN/STD and transformers' IMAGENET_DEFAULT_MEAN/STD
# (a test checks it); kept here so that reading a config does not import either library
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _check_preprocess(name: str, image_size: int, resize: int, patch_size: int) -> None:
    if min(image_size, resize, patch_size) < 1:
        raise ConfigError(f"{name}: image_size, resize and patch_size must be >= 1")
    if image_size % patch_size:
        raise ConfigError(f"{name}: image_size {image_size} is not a multiple of patch_size {patch_size}")
    if resize < image_size:
        raise ConfigError(f"{name}: resize {resize} is smaller than the crop image_size {image_size}")


@dataclasses.dataclass
class ClipEncoderConfig(Config):
    """CLIP vision tower (open_clip ``VisionTransformer`` sizes; ``paper`` = ViT-H/14).

    ``hidden_layer`` indexes the hidden states as Hugging Face counts them (``-1`` = the last
    block's output, ``-2`` = the penultimate block's; the release uses ``-2``). ``checkpoint``: an
    open_clip checkpoint file or a Hugging Face CLIP vision folder; None = random init.
    """

    image_size: int = 224
    resize: int = 224
    patch_size: int = 14
    width: int = 1280
    layers: int = 32
    head_width: int = 80
    mlp_ratio: float = 4.0
    output_dim: int = 1024
    hidden_layer: int = -2
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    checkpoint: str | None = None

    def __post_init__(self) -> None:
        _check_preprocess("clip", self.image_size, self.resize, self.patch_size)
        if self.width % self.head_width:
            raise ConfigError(f"clip: width {self.width} is not a multiple of head_width {self.head_width}")
        if not -self.layers <= self.hidden_layer <= -1:
            raise ConfigError(f"clip: hidden_layer must be in [-{self.layers}, -1], got {self.hidden_layer}")

    @property
    def token_shape(self) -> tuple[int, int]:
        """(tokens, channels) of one image: class token + patch grid; paper (257, 1280)."""
        return ((self.image_size // self.patch_size) ** 2 + 1, self.width)

    @property
    def block_index(self) -> int:
        """0-based index of the transformer block whose output is taken."""
        return self.layers + self.hidden_layer


@dataclasses.dataclass
class DinoEncoderConfig(Config):
    """DINOv2 (``transformers.Dinov2Config`` sizes; ``paper`` = dinov2-base).

    ``pretrain_image_size`` sizes the position-embedding grid (518 for the released DINOv2 models;
    transformers interpolates it to the input). ``checkpoint``: a Hugging Face ``Dinov2Model`` folder;
    None = random init.
    """

    image_size: int = 224
    resize: int = 256
    patch_size: int = 14
    hidden_size: int = 768
    layers: int = 12
    heads: int = 12
    mlp_ratio: int = 4
    pretrain_image_size: int = 518
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    checkpoint: str | None = None

    def __post_init__(self) -> None:
        _check_preprocess("dino", self.image_size, self.resize, self.patch_size)
        if self.hidden_size % self.heads:
            raise ConfigError(f"dino: hidden_size {self.hidden_size} is not a multiple of heads {self.heads}")

    @property
    def token_shape(self) -> tuple[int, int]:
        """(tokens, channels) of one image: class token + patch grid; paper (257, 768)."""
        return ((self.image_size // self.patch_size) ** 2 + 1, self.hidden_size)


@dataclasses.dataclass
class EncoderConfig(Config):
    """Both encoders. ``require_pretrained``: refuse to run without local weights (the ``paper``
    preset); otherwise a missing checkpoint means random weights drawn from ``init_seed``."""

    clip: ClipEncoderConfig = dataclasses.field(default_factory=ClipEncoderConfig)
    dino: DinoEncoderConfig = dataclasses.field(default_factory=DinoEncoderConfig)
    require_pretrained: bool = False
    init_seed: int = 0


ENCODER_PRESETS: PresetRegistry[EncoderConfig] = PresetRegistry("image encoders")


@ENCODER_PRESETS.register("paper")
def _paper() -> EncoderConfig:
    """The release's encoders: CLIP ViT-H/14 (257 × 1280) and DINOv2-base (257 × 768); local weights required."""
    return EncoderConfig(require_pretrained=True)


@ENCODER_PRESETS.register("tiny")
def _tiny() -> EncoderConfig:
    """Random CPU-size encoders matching the tiny DiT: CLIP [5, 32] and DINO [5, 24] tokens from 16² inputs."""
    return EncoderConfig(
        clip=ClipEncoderConfig(image_size=16, resize=16, patch_size=8, width=32, layers=2, head_width=16,
                               output_dim=32),
        dino=DinoEncoderConfig(image_size=16, resize=16, patch_size=8, hidden_size=24, layers=2, heads=2,
                               pretrain_image_size=16))


def preprocess_images(images: Tensor, *, resize: int, image_size: int, mean: tuple[float, ...],
                      std: tuple[float, ...]) -> Tensor:
    """uint8 [B, 3, H, W] (or float in [0, 1]) → normalised float32 [B, 3, image_size, image_size]:
    shortest side resized to ``resize`` (bicubic, antialiased), centre crop, (x − mean) / std."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [B, 3, H, W], got {list(images.shape)}")
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    height, width = x.shape[-2:]
    scale = resize / min(height, width)
    size = (max(resize, round(height * scale)), max(resize, round(width * scale)))
    if size != (height, width):
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0.0, 1.0)
    top, left = (size[0] - image_size) // 2, (size[1] - image_size) // 2
    x = x[:, :, top:top + image_size, left:left + image_size]  # [B, 3, S, S]
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device)[None, :, None, None]
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device)[None, :, None, None]
    return (x - mean_t) / std_t


def _seeded(seed: int, build: Any) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _checkpoint_path(path: str, what: str) -> Path:
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise UserError(f"{what} checkpoint not found: {path}")
    return resolved


def _load_state_dict_file(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is the user's input
        raise UserError(f"cannot read CLIP checkpoint {path}: {type(error).__name__}: {error}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"CLIP checkpoint {path} does not hold a state dict")
    return state


class ClipImageEncoder(nn.Module):
    """CLIP vision tokens ``hidden_states[hidden_layer]`` [B, T, D] (class token first)."""

    def __init__(self, config: ClipEncoderConfig, *, require_pretrained: bool = False, init_seed: int = 0) -> None:
        super().__init__()
        self.config = config
        self.backend = "open_clip"
        if config.checkpoint is None:
            if require_pretrained:
                raise UserError("these CLIP encoders need local weights: give --clip-checkpoint (an open_clip "
                                "checkpoint file or a Hugging Face CLIP vision folder); nothing is downloaded")
            self.model = _seeded(init_seed, self._build_open_clip)
        else:
            path = _checkpoint_path(config.checkpoint, "CLIP")
            if path.is_dir():
                self.backend = "transformers"
                self.model = self._load_hf(path)
            else:
                self.model = self._build_open_clip()
                self._load_open_clip(path)
        if self.backend == "open_clip":  # drop the blocks after the one we read, and the pooling head
            self.model.prune_intermediate_layers(indices=[config.block_index], prune_head=True)
        self.requires_grad_(False).eval()

    def _build_open_clip(self) -> nn.Module:
        from open_clip.transformer import VisionTransformer

        cfg = self.config
        return VisionTransformer(image_size=cfg.image_size, patch_size=cfg.patch_size, width=cfg.width,
                                 layers=cfg.layers, heads=cfg.width // cfg.head_width, mlp_ratio=cfg.mlp_ratio,
                                 output_dim=cfg.output_dim)

    def _load_open_clip(self, path: Path) -> None:
        state = _load_state_dict_file(path)
        if any(key.startswith("visual.") for key in state):  # a whole CLIP: keep the vision tower
            state = {key[len("visual."):]: value for key, value in state.items() if key.startswith("visual.")}
        cfg = self.config
        tower = f"the configured tower (width {cfg.width}, {cfg.layers} layers, patch {cfg.patch_size})"
        try:
            result = self.model.load_state_dict(state, strict=False)
        except RuntimeError as error:  # shape mismatches
            reason = next((line.strip() for line in str(error).splitlines() if "size mismatch" in line), str(error))
            raise UserError(f"CLIP checkpoint {path} does not fit {tower}: {reason}") from None
        if result.missing_keys or result.unexpected_keys:
            raise UserError(f"CLIP checkpoint {path} does not fit {tower}: missing {result.missing_keys[:3]}, "
                            f"unexpected {result.unexpected_keys[:3]}")
        logger.info("loaded CLIP vision weights from %s", path)

    def _load_hf(self, path: Path) -> nn.Module:
        from transformers import CLIPVisionModel

        model = CLIPVisionModel.from_pretrained(str(path), local_files_only=True)
        got = model.config
        expected = (self.config.width, self.config.patch_size, self.config.image_size, self.config.layers)
        found = (got.hidden_size, got.patch_size, got.image_size, got.num_hidden_layers)
        if found != expected:
            raise UserError(f"CLIP folder {path} has (width, patch, image size, layers) {found}, the encoder config "
                            f"says {expected}; set the clip config to match the weights")
        logger.info("loaded CLIP vision model (transformers) from %s", path)
        return model

    def forward(self, pixels: Tensor) -> Tensor:
        # pixels: [B, 3, S, S] normalised
        if self.backend == "transformers":
            hidden = self.model(pixel_values=pixels, output_hidden_states=True).hidden_states
            return hidden[self.config.hidden_layer]  # [B, T, D]
        out = self.model.forward_intermediates(pixels, indices=[self.config.block_index], stop_early=True,
                                               intermediates_only=True, output_fmt="NLC", output_extra_tokens=True)
        prefix = out["image_intermediates_prefix"][0]  # [B, 1, D] class token
        patches = out["image_intermediates"][0]        # [B, T-1, D]
        return torch.cat([prefix, patches], dim=1)     # [B, T, D]


class DinoImageEncoder(nn.Module):
    """DINOv2 ``last_hidden_state`` [B, T, D] (class token first, final LayerNorm applied)."""

    def __init__(self, config: DinoEncoderConfig, *, require_pretrained: bool = False, init_seed: int = 0) -> None:
        super().__init__()
        from transformers import Dinov2Config, Dinov2Model

        self.config = config
        if config.checkpoint is None:
            if require_pretrained:
                raise UserError("these DINO encoders need local weights: give --dino-checkpoint (a Hugging Face "
                                "Dinov2Model folder, e.g. dinov2-base); nothing is downloaded")
            hf_config = Dinov2Config(hidden_size=config.hidden_size, num_hidden_layers=config.layers,
                                     num_attention_heads=config.heads, mlp_ratio=config.mlp_ratio,
                                     patch_size=config.patch_size, image_size=config.pretrain_image_size)
            self.model = _seeded(init_seed + 1, lambda: Dinov2Model(hf_config))
        else:
            path = _checkpoint_path(config.checkpoint, "DINO")
            if not path.is_dir():
                raise UserError(f"DINO checkpoint must be a Hugging Face Dinov2Model folder, got the file {path}")
            self.model = Dinov2Model.from_pretrained(str(path), local_files_only=True)
            got = self.model.config
            found, expected = (got.hidden_size, got.patch_size), (config.hidden_size, config.patch_size)
            if found != expected:
                raise UserError(f"DINO folder {path} has (hidden size, patch) {found}, the encoder config says "
                                f"{expected}; set the dino config to match the weights")
            logger.info("loaded DINOv2 from %s", path)
        self.requires_grad_(False).eval()

    def forward(self, pixels: Tensor) -> Tensor:
        # pixels: [B, 3, S, S] normalised -> [B, T, D]
        return self.model(pixel_values=pixels).last_hidden_state


class ImageEncoders(nn.Module):
    """CLIP + DINOv2 with their preprocessing: uint8 images → (clip tokens, dino tokens) in float32."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.clip = ClipImageEncoder(config.clip, require_pretrained=config.require_pretrained,
                                     init_seed=config.init_seed)
        self.dino = DinoImageEncoder(config.dino, require_pretrained=config.require_pretrained,
                                     init_seed=config.init_seed)
        self._sha256 = self._weights_sha256()  # on the CPU, before any move to an accelerator

    @property
    def clip_token_shape(self) -> tuple[int, int]:
        return self.config.clip.token_shape

    @property
    def dino_token_shape(self) -> tuple[int, int]:
        return self.config.dino.token_shape

    def preprocess(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """uint8 [B, 3, H, W] → (CLIP pixels, DINO pixels), each normalised for its encoder."""
        clip, dino = self.config.clip, self.config.dino
        return (preprocess_images(images, resize=clip.resize, image_size=clip.image_size, mean=clip.mean, std=clip.std),
                preprocess_images(images, resize=dino.resize, image_size=dino.image_size, mean=dino.mean, std=dino.std))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        # images: [B, 3, H, W] uint8
        device = next(self.parameters()).device
        clip_pixels, dino_pixels = self.preprocess(images.to(device))
        return self.encode_pixels(clip_pixels, dino_pixels)

    def encode_pixels(self, clip_pixels: Tensor, dino_pixels: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised pixels → (clip tokens [B, Tc, Dc], dino tokens [B, Td, Dd]), float32."""
        clip_tokens, dino_tokens = self.clip(clip_pixels).float(), self.dino(dino_pixels).float()
        for name, tokens, shape in (("clip", clip_tokens, self.clip_token_shape),
                                    ("dino", dino_tokens, self.dino_token_shape)):
            if tuple(tokens.shape[1:]) != shape:
                raise RuntimeError(f"{name} encoder returned tokens {list(tokens.shape[1:])}, expected {list(shape)}")
        return clip_tokens, dino_tokens

    def null_condition(self) -> tuple[Tensor, Tensor]:
        """Tokens of an all-zero (normalised) input, the release's unconditional branch: ([Tc, Dc], [Td, Dd])."""
        device = next(self.parameters()).device
        clip, dino = self.config.clip, self.config.dino
        clip_tokens, dino_tokens = self.encode_pixels(
            torch.zeros(1, 3, clip.image_size, clip.image_size, device=device),
            torch.zeros(1, 3, dino.image_size, dino.image_size, device=device))
        return clip_tokens[0], dino_tokens[0]

    @property
    def weights_sha256(self) -> str:
        """SHA-256 over both encoders' weights (as used, after pruning) and their preprocessing."""
        return self._sha256

    def _weights_sha256(self) -> str:
        digest = hashlib.sha256()
        preprocessing = {name: {key: value for key, value in getattr(self.config, name).to_dict().items()
                                if key in ("image_size", "resize", "mean", "std", "hidden_layer")}
                         for name in ("clip", "dino")}
        digest.update(json.dumps(preprocessing, sort_keys=True).encode())
        for prefix, module in (("clip", self.clip.model), ("dino", self.dino.model)):
            for name, tensor in module.state_dict().items():
                digest.update(f"{prefix}.{name}:{list(tensor.shape)}:{tensor.dtype}".encode())
                digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()
