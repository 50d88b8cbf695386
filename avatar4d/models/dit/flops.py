"""Forward FLOPs of the DiT (for MFU): 2 × multiply-accumulates of every matmul and attention product.

Counted: the patch-embedding convolution, all linear layers (timestep MLP, ``t_block``, resamplers,
blocks, final layer) and both products of every attention (QKᵀ and AV). Not counted: norms,
activations, softmax, modulation and residual adds (elementwise, < 1 % at paper size). Self-attention
is counted as this implementation computes it: queries for the N latent tokens only, keys and
values for N + N_dino tokens (the release also computes the unused DINO queries). A training step
(forward + backward) is about 3 × this number.
"""

from __future__ import annotations

from avatar4d.models.dit.config import DiTConfig


def _resampler_macs(num_inputs: int, in_channels: int, num_latents: int, hidden: int, cfg: DiTConfig) -> int:
    inner = cfg.resampler_heads * cfg.resampler_head_dim
    context = num_inputs + num_latents
    per_layer = (
        num_latents * hidden * inner  # to_q
        + context * hidden * 2 * inner  # to_kv
        + 2 * num_latents * context * inner  # QKᵀ and AV
        + num_latents * inner * hidden  # to_out
        + 2 * num_latents * hidden * hidden * cfg.resampler_ff_mult  # feed-forward
    )
    return num_inputs * in_channels * hidden + cfg.resampler_depth * per_layer + 2 * num_latents * hidden * hidden


def _block_macs(cfg: DiTConfig) -> int:
    tokens, hidden = cfg.num_tokens, cfg.hidden_size
    context = tokens + cfg.dino_latents
    self_attention = (tokens * hidden * hidden  # q
                      + context * hidden * 2 * hidden  # k, v (latent + DINO tokens)
                      + 2 * tokens * context * hidden  # QKᵀ and AV
                      + tokens * hidden * hidden)  # proj
    cross_attention = (tokens * hidden * hidden  # q_linear
                       + cfg.clip_latents * hidden * 2 * hidden  # kv_linear
                       + 2 * tokens * cfg.clip_latents * hidden  # QKᵀ and AV
                       + tokens * hidden * hidden)  # proj
    mlp = 2 * tokens * hidden * cfg.mlp_hidden
    return self_attention + cross_attention + mlp


def dit_flops(config: DiTConfig, batch: int = 1) -> int:
    """Forward FLOPs of ``batch`` samples (2 FLOPs per multiply-accumulate)."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    cfg, hidden, tokens = config, config.hidden_size, config.num_tokens
    macs = (
        tokens * cfg.in_channels * cfg.patch_size**2 * hidden  # patch embedding
        + cfg.frequency_embedding_size * hidden + hidden * hidden  # t_embedder
        + hidden * 6 * hidden  # t_block
        + _resampler_macs(cfg.clip_tokens, cfg.clip_channels, cfg.clip_latents, hidden, cfg)
        + _resampler_macs(cfg.dino_tokens, cfg.dino_channels, cfg.dino_latents, hidden, cfg)
        + cfg.depth * _block_macs(cfg)
        + tokens * hidden * cfg.patch_size**2 * cfg.out_channels  # final linear
    )
    return 2 * macs * batch
