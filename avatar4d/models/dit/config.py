"""Config and presets of the image-conditioned DiT.

``paper`` is structurally identical to the released AvatarArtist DiT (``TriDitCLIPDINO_XL_2`` with
``input_size=(128, 32)``, 726,157,504 parameters): DiT-XL/2 with PixArt adaLN-single, the VAE latent
8×4×32×32 seen as 8×128×32 (planes stacked along H) → 64×16 = 1,024 tokens, CLIP ViT-H
``hidden_states[-2]`` (257×1280) → 16 resampled tokens for cross-attention, DINOv2-base
``last_hidden_state`` (257×768) → 256 resampled tokens joined to every self-attention.
"""

from __future__ import annotations

import dataclasses

from avatar4d.config import Config, ConfigError, PresetRegistry

POS_EMBED_GRIDS = ("release", "true")
NULL_CLIP_MODES = ("zero_image", "zeros", "learned")
INIT_STYLES = ("adaln_zero", "pixart")


@dataclasses.dataclass
class DiTConfig(Config):
    """Sizes and behaviour of :class:`~avatar4d.models.dit.ImageConditionedDiT`.

    ``input_size`` is the (H, W) of the latent the DiT sees (planes stacked along H).
    ``pos_embed_grid``: ``"release"`` reproduces the released model's fixed sin-cos embedding, which
    is computed on a ``√T×√T`` grid (32×32 for the paper's 64×16 tokens; token m gets
    w = (m % 32)/2 and h = 2·(m // 32)); ``"true"`` uses the real token grid (row, column).
    ``null_clip``: what replaces the raw CLIP tokens of a dropped condition (CFG). ``"zero_image"``
    (the ``paper`` default, the release): the CLIP tokens *of an all-zero image*, which only the image
    encoder can compute, so the caller passes them as ``null_clip_tokens=`` (the encode stage stores
    them in ``encoded_null_condition.safetensors``) and the model refuses a dropped or unconditional
    branch without them instead of guessing; no parameters, the state dict stays the release's.
    ``"zeros"``: all-zero tokens (our earlier default; not what the release does). ``"learned"``: a
    trained ``y_embedder.null_tokens`` table, PixArt style. DINO tokens are never dropped (the release
    keeps them the same in both CFG branches).
    ``init``: ``"pixart"`` (the ``paper`` default) is the release's/PixArt's init: only the
    cross-attention output projection and the final layer are zero, so the self-attention and MLP
    branches are active from the start. ``"adaln_zero"`` also zeroes the gate rows of ``t_block`` and of
    every ``scale_shift_table``, so every block is the identity at initialisation (DiT's adaLN-Zero
    carried over to adaLN-single).
    ``condition_dropout`` is the probability the trainer uses to build ``drop_condition`` masks
    (:meth:`ImageConditionedDiT.sample_drop_mask`).
    """

    input_size: tuple[int, int] = (128, 32)
    in_channels: int = 8
    patch_size: int = 2
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    learn_sigma: bool = True
    frequency_embedding_size: int = 256
    clip_channels: int = 1280
    clip_tokens: int = 257
    clip_latents: int = 16
    dino_channels: int = 768
    dino_tokens: int = 257
    dino_latents: int = 256
    resampler_depth: int = 4
    resampler_heads: int = 12
    resampler_head_dim: int = 64
    resampler_ff_mult: int = 4
    pos_embed_grid: str = "release"
    null_clip: str = "zero_image"
    init: str = "pixart"
    condition_dropout: float = 0.1

    def __post_init__(self) -> None:
        height, width = self.input_size
        if height % self.patch_size or width % self.patch_size:
            raise ConfigError(f"input_size {self.input_size} must be divisible by patch_size {self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"hidden_size {self.hidden_size} must be divisible by num_heads {self.num_heads}")
        if self.hidden_size % 4:
            raise ConfigError(f"hidden_size must be divisible by 4 (2-D sin-cos embedding), got {self.hidden_size}")
        if self.frequency_embedding_size % 2:
            raise ConfigError(f"frequency_embedding_size must be even, got {self.frequency_embedding_size}")
        if self.pos_embed_grid not in POS_EMBED_GRIDS:
            raise ConfigError(f"pos_embed_grid must be one of {POS_EMBED_GRIDS}, got {self.pos_embed_grid!r}")
        if self.pos_embed_grid == "release" and round(self.num_tokens ** 0.5) ** 2 != self.num_tokens:
            raise ConfigError(f"pos_embed_grid 'release' needs a square number of tokens, got {self.num_tokens}; "
                             "use pos_embed_grid='true'")
        if self.null_clip not in NULL_CLIP_MODES:
            raise ConfigError(f"null_clip must be one of {NULL_CLIP_MODES}, got {self.null_clip!r}")
        if self.init not in INIT_STYLES:
            raise ConfigError(f"init must be one of {INIT_STYLES}, got {self.init!r}")
        if not 0.0 <= self.condition_dropout < 1.0:
            raise ConfigError(f"condition_dropout must be in [0, 1), got {self.condition_dropout}")
        for name in ("depth", "in_channels", "clip_channels", "clip_tokens", "clip_latents", "dino_channels",
                     "dino_tokens", "dino_latents", "resampler_depth", "resampler_heads", "resampler_head_dim",
                     "resampler_ff_mult"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def out_channels(self) -> int:
        """Predicted channels: eps, plus as many variance-interpolation channels with ``learn_sigma``."""
        return 2 * self.in_channels if self.learn_sigma else self.in_channels

    @property
    def token_grid(self) -> tuple[int, int]:
        """(rows, columns) of latent tokens: 64×16 for ``paper``."""
        return self.input_size[0] // self.patch_size, self.input_size[1] // self.patch_size

    @property
    def num_tokens(self) -> int:
        rows, cols = self.token_grid
        return rows * cols

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)


DIT_PRESETS: PresetRegistry[DiTConfig] = PresetRegistry("dit")


@DIT_PRESETS.register("paper")
def _paper() -> DiTConfig:
    """The released AvatarArtist DiT (DiT-XL/2, 1,024 latent tokens, 726,157,504 parameters)."""
    return DiTConfig()


@DIT_PRESETS.register("tiny")
def _tiny() -> DiTConfig:
    """CPU size: the tiny VAE's latent 8×64×16 (4 planes of 16×16) → 256 tokens, hidden 64, 2 blocks, the tiny
    condition encoders' CLIP [5, 32] / DINO [5, 24] tokens; 242,592 parameters. It keeps the adaLN-Zero init
    and a learned null condition, with which its learning is measured (tests/integration/test_learning.py)."""
    return DiTConfig(
        input_size=(64, 16), in_channels=8, patch_size=2, hidden_size=64, depth=2, num_heads=4,
        frequency_embedding_size=32, clip_channels=32, clip_tokens=5, clip_latents=4, dino_channels=24,
        dino_tokens=5, dino_latents=8, resampler_depth=1, resampler_heads=2, resampler_head_dim=16,
        resampler_ff_mult=2, pos_embed_grid="true", null_clip="learned", init="adaln_zero")
