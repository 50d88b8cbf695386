"""The embedded default landmark detector: a small CNN trained on the procedural world's renders.

Input: RGB images [B, 3, S, S] in [0, 1] framed like the world (the head centred, EG3D/FFHQ crop;
resized to ``input_size``). Output: the 68 iBUG landmarks in normalised image coordinates
[B, 68, 2] (x right, y down, [0, 1] across the image: the projections of the head model's 3D
landmarks, occluded ones included) and a face-presence logit [B]. The shipped checkpoint
(``avatar4d/tracking/weights/landmarks``, < 1 MB) is made by :mod:`avatar4d.tracking.train_regressor`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import Tensor, nn

from avatar4d.config import Config

COMPONENT = "landmark_regressor"
DEFAULT_CHECKPOINT = Path(__file__).parent / "weights" / "landmarks"


@dataclasses.dataclass
class RegressorConfig(Config):
    input_size: int = 64
    channels: tuple[int, ...] = (16, 32, 48, 64)
    hidden: int = 128

    def __post_init__(self) -> None:
        if self.input_size % (2 ** len(self.channels)) != 0:
            raise ValueError(f"input_size {self.input_size} must be divisible by 2^{len(self.channels)}")


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class LandmarkRegressor(nn.Module):
    """Image [B, 3, S, S] → (landmarks [B, 68, 2] normalised, presence logit [B])."""

    def __init__(self, config: RegressorConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or RegressorConfig()
        layers, cin = [], 5  # RGB + two coordinate channels (CoordConv)
        for cout in config.channels:
            layers.append(_block(cin, cout))
            cin = cout
        self.features = nn.Sequential(*layers)
        cells = (config.input_size // 2 ** len(config.channels)) ** 2
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(cin * cells, config.hidden), nn.ReLU(),
                                  nn.Linear(config.hidden, 68 * 2 + 1))
        self.register_buffer("mean_shape", torch.full((68, 2), 0.5))  # set from the training data

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        size = self.config.input_size
        if images.shape[-2:] != (size, size):
            images = nn.functional.interpolate(images, size=(size, size), mode="bilinear", antialias=True,
                                               align_corners=False)
        batch = images.shape[0]
        ramp = torch.linspace(-1, 1, size, device=images.device, dtype=images.dtype)
        coords = torch.stack(torch.meshgrid(ramp, ramp, indexing="xy")).expand(batch, 2, size, size)
        x = torch.cat([images * 2 - 1, coords], dim=1)  # [B, 5, S, S]
        out = self.head(self.features(x))  # [B, 137]
        landmarks = self.mean_shape + 0.1 * out[:, :136].reshape(batch, 68, 2)  # [B, 68, 2]
        return landmarks, out[:, 136]


def save_regressor(model: LandmarkRegressor, directory: str | Path, *, metadata: dict | None = None) -> Path:
    """Save as an avatar4d checkpoint, weights in float16 (the shipped file stays under 1 MB)."""
    from avatar4d.checkpoint.io import save_checkpoint

    state = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    return save_checkpoint(directory, state, component=COMPONENT, config=model.config, metadata=metadata).path


def load_regressor(directory: str | Path | None = None, device: str | torch.device = "cpu") -> LandmarkRegressor:
    """The regressor in ``directory`` (default: the shipped checkpoint), in eval mode, float32."""
    from avatar4d.checkpoint.io import load_checkpoint, load_state_dict_strict

    state, info = load_checkpoint(DEFAULT_CHECKPOINT if directory is None else directory, component=COMPONENT)
    model = LandmarkRegressor(RegressorConfig.from_dict(info.config))
    load_state_dict_strict(model, {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()},
                           what="landmark regressor")
    return model.to(device).eval()
