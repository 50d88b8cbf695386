"""Learning shown on identities the models never saw (the procedural world's ground truth).

As a user runs it, on the CPU: the factory's synthesize stage makes world pairs of three domains
(training identities) and, with another run seed, held-out pairs (other identities); the tiny VAE
trains on the training pairs with the real trainer (Ray Train + DeepSpeed, MLflow). Every
candidate triplane is rendered through the rows' generators with the rows' own meshes from five
cameras and compared with the renders of the true triplanes (:mod:`train.heldout`):

- VAE: reconstructions of held-out triplanes beat, in PSNR, the per-plane-mean triplane (each
  plane replaced by its mean feature vector) and the mean training triplane, by clear margins
  (measured 2026-12-03 with the official cameras: 19.4 dB vs 7.0 dB and 14.7 dB).
- DiT: the encode stage turns both sets into CLIP/DINO tokens and latents of that VAE; the tiny DiT
  trains on the training identities with the real trainer; 19-step DPM-Solver++ samples from the
  *held-out portraits*, decoded by the VAE, beat the mean training triplane and the untrained DiT
  in PSNR, and the untrained DiT in depth error.
- The whole inference pipeline (what ``avatar4d eval`` runs, tests/integration/test_eval_report.py
  runs the command): portrait → tracking → CLIP/DINO → the trained DiT → VAE → frames driven by each
  held-out view's coefficients and camera, against a pipeline of the same configs with random DiT
  and VAE, and against the trained one driven by the wrong frames (the motion metrics' baseline),
  on a multiview set of other identities: self-reenactment PSNR, LPIPS, faces found, AKD and AED
  (measured 2026-12-03 with the eval issue's recipe: 17.3 dB, LPIPS 0.034, AKD 32 px at 512², APD
  3.1°, faces in 100 % of frames; untrained 7.7 dB, no face found; wrong driving 13.4 dB, AKD 48 px,
  APD 12.1°).

The measured numbers are printed (pytest -s) and the margins asserted.
"""

from __future__ import annotations

import json
import math
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
# The official per-sample sums and per-plane statistics, at this CPU budget, leave the density channels behind
# (held-out 16.9 dB, depth error 0.050, measured 2026-12-03); per-element means and per-(plane, channel)
# statistics: 18.9-19.4 dB, 0.012-0.013.
VAE_LOSS = {"loss.reduction": "mean", "loss.statistics": "plane_channel"}
DIT_STEPS = 750  # measured in-process: 750 steps at the recipe's lr 2e-3 give 17.7 dB, 1,500 at 1e-3 19.0 dB


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
        "train.lr": VAE_LR, "train.checkpoint_every": VAE_STEPS, "train.log_every": 50, **VAE_LOSS,
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



@pytest.fixture(scope="module")
def encoded(world, vae_checkpoint) -> dict[str, Path]:
    """Both sets through the factory's encode stage with the trained VAE (tiny random CLIP/DINO encoders)."""
    from train.fixtures import make_encoded

    for name in ("train", "heldout"):
        make_encoded(world[name], vae_checkpoint=vae_checkpoint)
    return world


@pytest.fixture(scope="module")
def dit_checkpoint(encoded) -> Path:
    from train.dit.recipes import tiny

    return train(apply_overrides(tiny(), {
        "data": str(encoded["train"]), "train.storage_path": str(encoded["root"] / "runs"), "train.steps": DIT_STEPS,
        "train.checkpoint_every": DIT_STEPS, "train.log_every": 100, "train.run_name": "dit-learning"}))


def test_dit_samples_of_unseen_portraits_beat_the_mean_triplane_and_the_untrained_dit(
        encoded, scorer, vae_checkpoint, dit_checkpoint):
    from avatar4d.diffusion import SamplingConfig
    from avatar4d.models.dit import ImageConditionedDiT, load_dit
    from avatar4d.models.vae import load_vae
    from train.dit.recipes import tiny
    from train.dit.sampling import HeldOutSampler
    from train.heldout import mean_triplane

    recipe = tiny()
    vae, _ = load_vae(vae_checkpoint)
    vae.eval()
    trained, _ = load_dit(dit_checkpoint)
    torch.manual_seed(0)
    untrained = ImageConditionedDiT(trained.config)
    sampler = HeldOutSampler(encoded["heldout"], vae, null_condition=encoded["train"], diffusion=recipe.diffusion,
                             sampling=SamplingConfig(scheduler="dpmsolver++", steps=19,
                                                     guidance_scale=recipe.sampling.guidance_scale))
    ids = scorer.rows.sample_ids
    truth = scorer.rows.triplanes
    scores = {"DiT samples": scorer.score(sampler.triplanes(trained.eval(), ids)),
              "untrained DiT": scorer.score(sampler.triplanes(untrained.eval(), ids)),
              "mean training triplane": scorer.score(mean_triplane(encoded["train"])[None].expand_as(truth))}
    print("\nheld-out portraits: " + "; ".join(f"{name}: {s}" for name, s in scores.items()))
    dit = scores["DiT samples"]
    assert dit.psnr > scores["mean training triplane"].psnr + 1.0
    assert dit.psnr > scores["untrained DiT"].psnr + 3.0
    assert dit.depth_error < scores["untrained DiT"].depth_error


@pytest.fixture(scope="module")
def pipelines(world, vae_checkpoint, dit_checkpoint) -> dict[str, Path]:
    """The trained pipeline, an untrained one of the same configs (random DiT and VAE, the same sampler and
    generator), and a held-out multiview set of other identities whose views are the ground truth."""
    from avatar4d.models.dit import ImageConditionedDiT, load_dit, save_dit
    from avatar4d.models.vae import TriplaneVAE, load_vae
    from avatar4d.models.vae.convert import save_vae
    from tests.integration.test_eval_report import make_multiview

    root = world["root"]
    generators = world["train"] / "generators" / "world-tiny"
    make_multiview(root / "heldout-multiview", generators, domains=DOMAINS, identities=2, expressions=3, cameras=2)
    trained_dit, dit_info = load_dit(dit_checkpoint)
    trained_vae, _ = load_vae(vae_checkpoint)
    untrained = root / "untrained"
    torch.manual_seed(0)
    save_dit(untrained / "dit", ImageConditionedDiT(trained_dit.config), metadata=dit_info.metadata)
    save_vae(untrained / "vae", TriplaneVAE(trained_vae.config))
    generator = sorted(generators.iterdir())[0]
    (untrained / "pipeline.json").write_text(json.dumps({"dit": "dit", "vae": "vae", "generator": str(generator)}))
    (root / "trained").mkdir()
    (root / "trained" / "pipeline.json").write_text(json.dumps({"dit": str(dit_checkpoint), "vae": str(vae_checkpoint),
                                                                "generator": str(generator)}))
    return {"root": root, "heldout": root / "heldout-multiview", "trained": root / "trained", "untrained": untrained}


class WrongDriving:
    """A pipeline driven by the coefficients and cameras of the *next* frame: the motion metrics'
    baseline (the same avatar and image quality, the wrong motion)."""

    def __init__(self, maker) -> None:
        self.maker, self.name = maker, f"{maker.name}, driven by the wrong frames"

    def create(self, portrait):
        return self.maker.create(portrait)

    def drive(self, avatar, params, camera):
        from avatar4d.geometry.morphable import FaceParams

        shifted = [*range(1, camera.batch_size), 0]
        return self.maker.drive(avatar, FaceParams(params.identity, params.expression[shifted], params.jaw[shifted]),
                                camera[shifted])


def test_eval_of_the_trained_pipeline_beats_the_untrained_one_on_unseen_identities(pipelines):
    from avatar4d.evaluation.makers import PipelineMaker
    from avatar4d.evaluation.runner import EVAL_PRESETS, load_clips, make_run_cases, run_local

    config = EVAL_PRESETS.get("tiny").replace(cross=False)
    cases = make_run_cases(load_clips(pipelines["heldout"], config), config)
    trained = PipelineMaker.load(pipelines["trained"], name="trained")
    untrained = PipelineMaker.load(pipelines["untrained"], name="untrained")
    results = {r.name: r.summary["self"] for r in run_local([trained, untrained, WrongDriving(trained)], cases, config)}
    ours, theirs, wrong = results["trained"], results["untrained"], results["trained, driven by the wrong frames"]
    print(f"\nself-reenactment, {ours['cases']:.0f} held-out identities, {ours['frames']:.0f} frames:\n"
          + "\n".join(f"  {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items())
                      for name, row in results.items()))
    assert ours["frames"] == theirs["frames"] == 6 * 5  # 6 identities × (6 views − the source)
    assert ours["psnr"] > theirs["psnr"] + 3.0
    assert ours["lpips"] < theirs["lpips"]
    assert ours["face_found"] >= 0.8 > theirs["face_found"], "the tracker finds faces in the trained avatars' frames"
    # AKD and AED exist only where the tracker finds a face; an untrained avatar in which it finds none has
    # no distance at all (NaN in the report), which counts as losing: it shows no motion a tracker can see
    for metric in ("akd", "aed"):
        assert math.isfinite(ours[metric])
        assert math.isnan(theirs[metric]) or ours[metric] < theirs[metric], metric
    # and the motion metrics see motion: the same avatars driven by the wrong frames score clearly worse
    assert ours["akd"] < wrong["akd"] - 5.0 and ours["apd"] < wrong["apd"] - 3.0
    assert ours["psnr"] > wrong["psnr"] + 1.0
