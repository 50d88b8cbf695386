"""Train the embedded landmark regressor on procedural-world renders (CPU, minutes).

    python -m avatar4d.tracking.train_regressor --out avatar4d/tracking/weights/landmarks

made the shipped checkpoint (the command's defaults: 2,000 renders, 3,000 steps of 64; 28 minutes on a
busy, shared 2-core CPU, 7 of them rendering; held-out error 7.4 px mean at 512²). Data: ``--frames``
world renders of random identities, expressions and cameras in the paper's ranges over several
domains (:func:`avatar4d.tracking.world_data.random_world_frames`), augmented on the fly (random
similarity transforms, colour-channel shuffles and gains); one sample in five is a face-free image
(flat colour, smooth or pixel noise, a world render with its pixels shuffled) that teaches the
presence logit. Loss: L1 on landmark coordinates + BCE on presence.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from avatar4d.tracking.regressor import LandmarkRegressor, RegressorConfig, save_regressor
from avatar4d.tracking.world_data import random_world_frames

logger = logging.getLogger(__name__)


def random_similarity(batch: int, gen: torch.Generator, *, scale: float = 0.1, shift: float = 0.08,
                      rotation: float = 0.2) -> Tensor:
    """[B, 2, 3] affine maps (output → input, in [-1, 1] coordinates) of random similarity transforms."""
    s = 1 + scale * (2 * torch.rand(batch, generator=gen) - 1)
    a = rotation * (2 * torch.rand(batch, generator=gen) - 1)
    t = shift * (2 * torch.rand(batch, 2, generator=gen) - 1)
    cos, sin = torch.cos(a) / s, torch.sin(a) / s
    return torch.stack([torch.stack([cos, -sin, t[:, 0]], -1), torch.stack([sin, cos, t[:, 1]], -1)], 1)


def augment(images: Tensor, landmarks: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Random similarity warp + colour shuffle/gain of images [B, 3, S, S] and their landmarks [B, 68, 2]."""
    batch = images.shape[0]
    theta = random_similarity(batch, gen)  # output coords → input coords
    grid = nn.functional.affine_grid(theta, list(images.shape), align_corners=False)
    warped = nn.functional.grid_sample(images, grid, align_corners=False, padding_mode="zeros")
    full = torch.cat([theta, torch.tensor([0.0, 0.0, 1.0]).expand(batch, 1, 3)], 1)  # [B, 3, 3]
    inverse = torch.linalg.inv(full)  # input → output
    points = torch.cat([landmarks * 2 - 1, torch.ones_like(landmarks[..., :1])], -1)  # [B, 68, 3]
    moved = (points @ inverse.transpose(1, 2))[..., :2]
    perm = torch.stack([torch.randperm(3, generator=gen) for _ in range(batch)])  # [B, 3]
    warped = torch.gather(warped, 1, perm[:, :, None, None].expand_as(warped))
    gain = 0.7 + 0.6 * torch.rand(batch, 3, 1, 1, generator=gen)
    return (warped * gain).clamp(0, 1), (moved + 1) / 2


def negatives(count: int, size: int, pool: Tensor, gen: torch.Generator) -> Tensor:
    """Face-free images [count, 3, size, size]: flat colours, smooth noise, pixel noise, shuffled renders."""
    kind = torch.randint(0, 4, (count,), generator=gen)
    flat = torch.rand(count, 3, 1, 1, generator=gen).expand(count, 3, size, size)
    smooth = nn.functional.interpolate(torch.rand(count, 3, 4, 4, generator=gen), size=size, mode="bicubic",
                                       align_corners=False).clamp(0, 1)
    noise = torch.rand(count, 3, size, size, generator=gen)
    picks = pool[torch.randint(0, pool.shape[0], (count,), generator=gen)].flatten(2)
    shuffled = picks[:, :, torch.randperm(size * size, generator=gen)].reshape(count, 3, size, size)
    choices = torch.stack([flat, smooth, noise, shuffled])  # [4, count, 3, S, S]
    return choices[kind, torch.arange(count)] * (torch.rand(count, 1, 1, 1, generator=gen) < 0.9)


def train(images: Tensor, landmarks: Tensor, *, steps: int, batch: int = 64, lr: float = 2e-3,
          seed: int = 0, config: RegressorConfig | None = None) -> LandmarkRegressor:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = LandmarkRegressor(config)
    model.mean_shape.copy_(landmarks.mean(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    size = images.shape[-1]
    start = time.time()
    for step in range(steps):
        rows = torch.randint(0, images.shape[0], (batch,), generator=gen)
        x, y = augment(images[rows], landmarks[rows], gen)
        n_neg = batch // 5
        x[:n_neg] = negatives(n_neg, size, images, gen)
        face = torch.ones(batch)
        face[:n_neg] = 0
        pred, logit = model(x)
        lmk_loss = ((pred - y).abs().sum(-1).mean(-1) * face).sum() / face.sum()
        loss = lmk_loss * 10 + nn.functional.binary_cross_entropy_with_logits(logit, face)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 200 == 0 or step == steps - 1:
            logger.info("step %d/%d loss %.4f landmark L1 %.4f (%.0f s)", step, steps, loss.item(), lmk_loss.item(),
                        time.time() - start)
    return model.eval()


@torch.no_grad()
def evaluate(model: LandmarkRegressor, images: Tensor, landmarks: Tensor) -> dict[str, float]:
    pred, logit = model(images)
    error = (pred - landmarks).norm(dim=-1).mean(-1)  # [N] normalised
    gen = torch.Generator().manual_seed(1)
    _, neg_logit = model(negatives(images.shape[0], images.shape[-1], images, gen))
    return {"landmark_error_px512": float(error.mean() * 512),
            "landmark_error_px512_p95": float(error.quantile(0.95) * 512),
            "face_recall": float((logit > 0).float().mean()), "nonface_rejected": float((neg_logit < 0).float().mean())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "weights" / "landmarks")
    parser.add_argument("--frames", type=int, default=2000, help="training renders")
    parser.add_argument("--val-frames", type=int, default=120, help="held-out renders (other seed)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=None, help="save/load the rendered training set here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    start = time.time()
    if args.cache is not None and args.cache.is_file():
        images, landmarks = torch.load(args.cache, weights_only=True).values()
    else:
        data = random_world_frames(args.frames, seed=1000 + args.seed)
        images, landmarks = data.images, data.landmarks
        if args.cache is not None:
            torch.save({"images": images, "landmarks": landmarks}, args.cache)
    logger.info("%d training renders ready after %.0f s", images.shape[0], time.time() - start)
    val = random_world_frames(args.val_frames, seed=10_000 + args.seed)
    model = train(images, landmarks, steps=args.steps, batch=args.batch, seed=args.seed)
    metrics = evaluate(model, val.images, val.landmarks)
    logger.info("held-out: %s (%.0f s in all)", metrics, time.time() - start)
    path = save_regressor(model, args.out, metadata={"frames": images.shape[0], "steps": args.steps,
                                                     "seed": args.seed, "held_out": metrics,
                                                     "minutes": round((time.time() - start) / 60, 1)})
    logger.info("saved %s", path)
    return 0 if math.isfinite(metrics["landmark_error_px512"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
