"""CLIP score of a driven avatar: the cosine similarity of the CLIP image embeddings of the source
portrait and of each generated frame (AvatarArtist's cross-reenactment identity measure, CLIPScore
of Radford et al.'s image tower; 1 = the same embedding direction).

``paper``: an open_clip architecture (ViT-L/14 by default) built by ``open_clip.create_model``
from a local weights file (open_clip reads a file path without any network). ``tiny``: a small
random open_clip ``VisionTransformer`` (seeded). Preprocessing is CLIP's: shortest side resized to
the tower's input size (bicubic), centre crop, OpenAI's mean and std.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar4d.encoders import CLIP_MEAN, CLIP_STD, preprocess_images
from avatar4d.errors import UserError
from avatar4d.metrics.config import ClipScoreConfig

logger = logging.getLogger(__name__)


class ClipScore(nn.Module):
    """Embeds images with a CLIP image tower; :meth:`forward` scores generated frames against sources."""

    def __init__(self, config: ClipScoreConfig, *, seed: int = 0) -> None:
        super().__init__()
        import open_clip

        self.config = config
        if config.checkpoint is not None:
            path = Path(config.checkpoint).expanduser()
            if not path.is_file():
                raise UserError(f"CLIP checkpoint not found: {path}")
            try:
                model = open_clip.create_model(config.model, pretrained=str(path), pretrained_text=False)
            except RuntimeError as error:  # a file of another architecture or not a state dict
                raise UserError(f"{path} is not an open_clip {config.model} checkpoint: {str(error)[:200]}") from None
            self.visual = model.visual
            self.image_size = int(model.visual.image_size[0]) if isinstance(model.visual.image_size, tuple) \
                else int(model.visual.image_size)
            logger.info("CLIP score: %s from %s", config.model, path)
        else:
            from open_clip.transformer import VisionTransformer

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.visual = VisionTransformer(image_size=config.tiny_image_size, patch_size=config.tiny_patch_size,
                                                width=config.tiny_width, layers=config.tiny_layers,
                                                heads=max(config.tiny_width // 16, 1), mlp_ratio=4.0,
                                                output_dim=config.tiny_output_dim)
            self.image_size = config.tiny_image_size
        self.requires_grad_(False).eval()

    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:
        """images [N, 3, H, W] in [0, 1] → unit embeddings [N, D]."""
        device = next(self.visual.parameters()).device
        x = preprocess_images(images.to(device), resize=self.image_size, image_size=self.image_size,
                              mean=CLIP_MEAN, std=CLIP_STD)  # [N, 3, S, S]
        return F.normalize(self.visual(x).float(), dim=-1)

    @torch.no_grad()
    def forward(self, sources: Tensor, generated: Tensor) -> Tensor:
        """Cosine similarity [N] of generated frames [N, 3, H, W] to their sources [N or 1, 3, H', W']."""
        source, frames = self.embed(sources), self.embed(generated)
        return (source.expand_as(frames) * frames).sum(-1)
