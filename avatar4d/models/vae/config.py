"""Config and presets of the triplane VAE.

``paper`` is structurally identical to the released AvatarArtist VAE (``AutoencoderKL`` with
``vae_model.yaml``: n_hiddens 128, downsample [4, 8, 8], z 8 channels, embed_dim 8; 310,273,544
parameters): a 4 × 32 × 256 × 256 parametric triplane becomes a latent of 8 × 4 × 32 × 32. The
paper text says 64 × 64; the release (and so this preset) compresses 8× per side.
"""

from __future__ import annotations

import dataclasses

from avatar4d.config import Config, PresetRegistry
from avatar4d.models.vae.layers import PADDING_MODES

LATENT_SCALE_FACTOR = 0.3994218
"""The release's ``scale_factor``: DiT samples are divided by it before decoding. A VAE trained here
estimates its own (1 / std of its latents, :mod:`avatar4d.models.vae.statistics`) and stores it in
its checkpoint's config."""


@dataclasses.dataclass
class TriplaneVAEConfig(Config):
    """Sizes of :class:`~avatar4d.models.vae.TriplaneVAE`.

    Widths follow the release: encoder ``conv_first`` in_channels → base, stage i base·2^i →
    base·2^(i+1) (stride (1, 2, 2)), final GN + SiLU + conv → 2·z_channels; decoder stage 0
    z_channels → base·2^n, stage i base·2^(n-i+1) → base·2^(n-i), ``conv_out`` base·2 →
    in_channels, with n = ``num_downsamples``; each decoder stage ends in ``decoder_res_blocks``
    residual blocks (``res1``, ``res2`` in the release). ``quant_conv`` maps 2·z_channels → 2·embed_dim
    (mean and log-variance), ``post_quant_conv`` embed_dim → z_channels; the latent has
    ``embed_dim`` channels. ``normalize_triplanes`` adds mean/std buffers [planes, channels] (per-plane
values broadcast over channels, as the release's, or per (plane, channel)) that
    :meth:`~avatar4d.models.vae.TriplaneVAE.encode_triplane` and ``decode_triplane`` apply.
    ``channels_last`` is a memory-layout hint only (same parameters, same results up to rounding):
    encoder and decoder run on ``torch.channels_last_3d`` activations, whose oneDNN kernels take
    about a third less time on the CPU at the tiny widths; outputs are returned contiguous.
    """

    in_channels: int = 32               # triplane feature channels per plane (the release's image_channel)
    num_planes: int = 4                 # plane 0: UV neural texture, planes 1-3: static triplane
    resolution: int = 256               # triplane side R the model is trained at
    base_channels: int = 128            # n_hiddens
    num_downsamples: int = 3            # stride-(1,2,2) stages: latent side = resolution / 2**num_downsamples
    decoder_res_blocks: int = 2         # residual blocks after each decoder upsampling (release: res1, res2)
    z_channels: int = 8                 # encoder output (doubled for mean/logvar) and decoder input width
    embed_dim: int = 8                  # latent channels
    norm_groups: int = 32
    norm_eps: float = 1e-6
    padding_mode: str = "replicate"
    logvar_min: float = -30.0
    logvar_max: float = 20.0
    latent_scale_factor: float = LATENT_SCALE_FACTOR  # the release's; training here stores its own estimate
    normalize_triplanes: bool = False   # register triplane_mean / triplane_std [num_planes, in_channels]
    channels_last: bool = False         # channels_last_3d activations (CPU: ~1/3 faster at tiny widths)

    def __post_init__(self) -> None:
        for name in ("in_channels", "num_planes", "resolution", "base_channels", "num_downsamples",
                     "decoder_res_blocks", "z_channels", "embed_dim", "norm_groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.base_channels % self.norm_groups:
            raise ValueError(f"base_channels ({self.base_channels}) must be divisible by norm_groups "
                             f"({self.norm_groups}): every GroupNorm width is a multiple of it")
        if self.resolution % 2 ** self.num_downsamples:
            raise ValueError(f"resolution {self.resolution} is not divisible by 2**num_downsamples "
                             f"= {2 ** self.num_downsamples}")
        if self.padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {self.padding_mode!r}")
        if not self.logvar_min < self.logvar_max:
            raise ValueError(f"logvar_min ({self.logvar_min}) must be below logvar_max ({self.logvar_max})")
        if self.latent_scale_factor <= 0:
            raise ValueError(f"latent_scale_factor must be > 0, got {self.latent_scale_factor}")

    @property
    def downsample_factor(self) -> int:
        """Spatial compression per side (the plane axis is never resampled)."""
        return 2 ** self.num_downsamples

    @property
    def latent_resolution(self) -> int:
        return self.resolution // self.downsample_factor

    def triplane_shape(self) -> tuple[int, int, int, int]:
        """Per-sample VAE input in model layout: (C, F, R, R)."""
        return (self.in_channels, self.num_planes, self.resolution, self.resolution)

    def latent_shape(self) -> tuple[int, int, int, int]:
        """Per-sample latent: (embed_dim, F, R / 2**n, R / 2**n); paper (8, 4, 32, 32)."""
        return (self.embed_dim, self.num_planes, self.latent_resolution, self.latent_resolution)

    def encoder_widths(self) -> list[int]:
        """Channel widths after conv_first and after each downsampling stage."""
        return [self.base_channels * 2 ** i for i in range(self.num_downsamples + 1)]

    def decoder_widths(self) -> list[int]:
        """Output widths of the decoder's upsampling stages (widest first)."""
        return [self.base_channels * 2 ** (self.num_downsamples - i) for i in range(self.num_downsamples)]


VAE_PRESETS: PresetRegistry[TriplaneVAEConfig] = PresetRegistry("triplane VAE")


@VAE_PRESETS.register("paper")
def _paper() -> TriplaneVAEConfig:
    """The released VAE: 4 × 32 × 256² → 8 × 4 × 32², 310,273,544 parameters."""
    return TriplaneVAEConfig()


@VAE_PRESETS.register("tiny")
def _tiny() -> TriplaneVAEConfig:
    """CPU size for the tiny pipeline: the tiny factory's 4 × 8 × 64² planes → 8 × 4 × 16² (4× per side, 16×
    fewer values), which the tiny DiT sees as 8 × 64 × 16 (its ``input_size``); widths 2-4-8 (encoder) and
    8-4 (decoder, one residual block per stage), channels-last convolutions; 22,650 parameters, ≥ 5 training
    steps/s at micro-batch 4 on one CPU thread with the tiny recipe's rendered losses
    (benchmarks/results/tiny_steps.md)."""
    return TriplaneVAEConfig(in_channels=8, resolution=64, base_channels=2, num_downsamples=2, decoder_res_blocks=1,
                             norm_groups=2, channels_last=True)
