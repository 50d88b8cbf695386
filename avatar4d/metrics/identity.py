"""ID similarity: the cosine similarity of ArcFace embeddings (Deng et al. 2019) of the source
portrait and each generated frame, on faces aligned by five landmarks as ArcFace expects.

The network is insightface's ``arcface_torch`` IResNet, written here with its parameter names and
shapes (``conv1``, ``bn1``, ``prelu``, ``layer1..4.k.{bn1,conv1,bn2,prelu,conv2,bn3,downsample}``,
``bn2``, ``fc``, ``features``) so its released ``backbone.pth`` files load as they are (IResNet-100:
layers 3, 13, 30, 3; no maintained PyPI package ships the architecture without insightface's
ONNX runtime stack). ``tiny`` is a small random IResNet. Alignment: the similarity transform
(Umeyama) that maps the eyes' centres, the nose tip and the mouth corners of the 68 iBUG landmarks
onto ArcFace's 112² template, applied with ``grid_sample``.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar4d.checkpoint.io import load_state_dict_strict
from avatar4d.errors import UserError
from avatar4d.metrics.config import IdentityConfig
from avatar4d.metrics.weights import read_weights_file

logger = logging.getLogger(__name__)

#: insightface's 112×112 template: left eye, right eye, nose tip, left and right mouth corners (pixels)
ARCFACE_TEMPLATE = ((38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366), (41.5493, 92.3655),
                    (70.7299, 92.2041))


class IBasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = (nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                                         nn.BatchNorm2d(planes, eps=1e-5))
                           if stride != 1 or inplanes != planes else None)

    def forward(self, x: Tensor) -> Tensor:
        # x [N, Cin, H, W] → [N, C, H / stride, W / stride]
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class IResNet(nn.Module):
    """ArcFace's IResNet: images [N, 3, S, S] in [−1, 1] → embeddings [N, E]."""

    def __init__(self, config: IdentityConfig) -> None:
        super().__init__()
        self.config = config
        widths = config.widths
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0], eps=1e-5)
        self.prelu = nn.PReLU(widths[0])
        inplanes = widths[0]
        for index, (blocks, planes) in enumerate(zip(config.layers, widths), start=1):
            layer = [IBasicBlock(inplanes, planes, 2)] + [IBasicBlock(planes, planes, 1) for _ in range(blocks - 1)]
            setattr(self, f"layer{index}", nn.Sequential(*layer))
            inplanes = planes
        self.bn2 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.dropout = nn.Dropout(0.0)
        side = config.input_size // 16
        self.fc = nn.Linear(inplanes * side * side, config.embedding_size)
        self.features = nn.BatchNorm1d(config.embedding_size, eps=1e-5)

    def forward(self, x: Tensor) -> Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))  # [N, W0, S, S]
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # [N, W3, S/16, S/16]
        x = self.dropout(self.bn2(x).flatten(1))  # [N, W3 · (S/16)²]
        return self.features(self.fc(x))  # [N, E]


def load_iresnet(config: IdentityConfig, *, seed: int = 0) -> IResNet:
    """The IResNet of ``config`` with its checkpoint's weights (keys and shapes checked), else random."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = IResNet(config)
    if config.checkpoint is not None:
        path, state = read_weights_file(config.checkpoint, "ArcFace")
        if not isinstance(state, dict):
            raise UserError(f"{path} is not an IResNet state dict")
        load_state_dict_strict(model, state, what=f"ArcFace IResNet (layers {list(config.layers)}) of {path}")
        logger.info("ArcFace IResNet loaded from %s", path)
    return model.requires_grad_(False).eval()


def five_points(landmarks: Tensor) -> Tensor:
    """68 iBUG landmarks [N, 68, 2] → eyes' centres, nose tip, mouth corners [N, 5, 2]."""
    return torch.stack([landmarks[:, 36:42].mean(1), landmarks[:, 42:48].mean(1), landmarks[:, 30],
                        landmarks[:, 48], landmarks[:, 54]], dim=1)


def similarity_transform(source: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Least-squares similarity (Umeyama 1991) with ``target ≈ scale · R @ source + t`` per batch row:
    points [N, K, 2] → scale [N], rotation [N, 2, 2], translation [N, 2]."""
    mu_s, mu_t = source.mean(1, keepdim=True), target.mean(1, keepdim=True)
    s, t = source - mu_s, target - mu_t  # [N, K, 2]
    covariance = t.transpose(1, 2) @ s / source.shape[1]  # [N, 2, 2]
    u, sigma, vh = torch.linalg.svd(covariance)
    sign = torch.ones_like(sigma)
    sign[:, 1] = torch.sign(torch.linalg.det(u @ vh))  # no reflections
    rotation = u @ torch.diag_embed(sign) @ vh
    variance = s.square().sum(dim=(1, 2)) / source.shape[1]
    scale = (sigma * sign).sum(1) / variance.clamp_min(1e-12)
    translation = mu_t[:, 0] - scale[:, None] * (rotation @ mu_s[:, 0, :, None])[..., 0]
    return scale, rotation, translation


def align_faces(images: Tensor, landmarks: Tensor, size: int) -> Tensor:
    """Crops [N, 3, size, size] of images [N, 3, H, W] whose landmarks [N, 68, 2] (normalised, x right,
    y down) land on ArcFace's template."""
    template = torch.tensor(ARCFACE_TEMPLATE, dtype=torch.float32, device=images.device) / 112.0  # [5, 2]
    source = five_points(landmarks.to(images.device).float())
    scale, rotation, translation = similarity_transform(source, template.expand_as(source))
    # output [0, 1] coordinate d ↦ input coordinate Rᵀ (d − t) / s; affine_grid works in [−1, 1]
    inverse = rotation.transpose(1, 2) / scale[:, None, None]  # [N, 2, 2]
    offset = -(inverse @ translation[..., None])[..., 0]  # [N, 2]
    theta = torch.cat([inverse, (inverse.sum(-1) + 2 * offset - 1)[..., None]], dim=-1)  # [N, 2, 3]
    grid = F.affine_grid(theta, [images.shape[0], 3, size, size], align_corners=False)
    return F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class IdentitySimilarity(nn.Module):
    """Cosine similarity [N] of ArcFace embeddings of generated frames and their sources (aligned by landmarks)."""

    def __init__(self, config: IdentityConfig, *, seed: int = 0) -> None:
        super().__init__()
        self.net = load_iresnet(config, seed=seed)
        self.size = config.input_size

    @torch.no_grad()
    def embed(self, images: Tensor, landmarks: Tensor) -> Tensor:
        """images [N, 3, H, W] in [0, 1], landmarks [N, 68, 2] → unit embeddings [N, E]."""
        device = next(self.net.parameters()).device
        crops = align_faces(images.to(device), landmarks, self.size)  # [N, 3, S, S]
        return F.normalize(self.net(crops * 2 - 1).float(), dim=-1)

    @torch.no_grad()
    def forward(self, sources: Tensor, source_landmarks: Tensor, generated: Tensor,
                generated_landmarks: Tensor) -> Tensor:
        source = self.embed(sources, source_landmarks)
        frames = self.embed(generated, generated_landmarks)
        return (source.expand_as(frames) * frames).sum(-1)
