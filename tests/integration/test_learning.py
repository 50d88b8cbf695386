"""Learning shown on identities the models never saw (the procedural world's ground truth).

As a user runs it, on the CPU: the factory's synthesize stage makes world pairs of three domains
(training identities) and, with another run seed, held-out pairs (other identities); the tiny VAE
trains on the training pairs with the real trainer (Ray Train + DeepSpeed, MLflow). Every
candidate triplane is rendered through the rows' generators with the rows' own meshes from five
cameras and compared with the renders of the true triplanes (:mod:`train.heldout`):

- VAE: reconstructions of held-out triplanes beat, in PSNR, the per-plane-mean triplane (each
  plane replaced by its mean feature vector) and the mean training triplane, by clear margins
  (measured 2026-12-03: 20.8 dB vs 7.4 dB and 15.0 dB).

The DiT's counterpart (samples from held-out portraits vs the mean triplane and the untrained
DiT) is not here yet: after 400-3,000 CPU steps the tiny DiT's DPM-Solver++ samples are still far
off the latent distribution (std 0.6-2.8 vs 0.35; README, "Learning shown").

The measured numbers are printed (pytest -s) and the margins asserted.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from train.config import apply_overrides

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DOMAINS = ("pixar", "greek_statue", "realistic")
TRAIN_PER_DOMAIN = 48
HELDOUT_PER_DOMAIN = 6
VAE_STEPS = 300
VAE_LR = 3e-3  # measured on world pairs: the recipe's 3e-4 reaches 8 dB in 300 steps, 3e-3 17 dB


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    from train.fixtures import make_pairs

    root = tmp_path_factory.mktemp("learning")
    make_pairs(root / "train", domains=DOMAINS, per_domain=TRAIN_PER_DOMAIN, run_seed=0, kind="world", batch_size=16)
    make_pairs(root / "heldout", domains=DOMAINS, per_domain=HELDOUT_PER_DOMAIN, run_seed=1, kind="world",
               batch_size=16)
    return {"root": root, "train": root / "train", "heldout": root / "heldout"}


@pytest.fixture(scope="module")
def scorer(world):
    from train.heldout import HeldOutRows, HeldOutScorer

    rows, seen = HeldOutRows.load(world["heldout"]), HeldOutRows.load(world["train"])
    assert len(rows.sample_ids) == len(DOMAINS) * HELDOUT_PER_DOMAIN
    nearest = torch.cdist(rows.triplanes.flatten(1), seen.triplanes.flatten(1)).amin(1)  # [N]
    assert nearest.min() > 1.0, "every held-out identity differs from every training identity"
    return HeldOutScorer(rows, [world["train"] / "generators"])


def train(config) -> Path:
    from train.runner import run_training

    result = run_training(config.with_defaults("tiny"), num_cpus=2, progress=False)
    return Path(result.run_dir) / "final"


@pytest.fixture(scope="module")
def vae_checkpoint(world) -> Path:
    from train.vae.recipes import tiny

    return train(apply_overrides(tiny(), {
        "data": str(world["train"]), "train.storage_path": str(world["root"] / "runs"), "train.steps": VAE_STEPS,
        "train.lr": VAE_LR, "train.checkpoint_every": VAE_STEPS, "train.log_every": 50,
        "train.run_name": "vae-learning"}))


def test_vae_reconstructs_unseen_identities_better_than_the_mean_triplanes(world, scorer, vae_checkpoint):
    from avatar4d.models.vae import load_vae
    from train.heldout import mean_triplane

    vae, _ = load_vae(vae_checkpoint)
    vae.eval()
    truth = scorer.rows.triplanes
    with torch.no_grad():
        reconstruction = vae.decode_triplane(vae.encode_triplane(truth))
    per_plane = truth.mean(dim=(3, 4), keepdim=True).expand_as(truth)
    scores = {"VAE reconstruction": scorer.score(reconstruction), "per-plane mean": scorer.score(per_plane),
              "mean training triplane": scorer.score(mean_triplane(world["train"])[None].expand_as(truth))}
    print("\nheld-out triplanes: " + "; ".join(f"{name}: {s}" for name, s in scores.items()))
    vae_score = scores["VAE reconstruction"]
    assert vae_score.psnr > scores["per-plane mean"].psnr + 5.0
    assert vae_score.psnr > scores["mean training triplane"].psnr + 1.0

