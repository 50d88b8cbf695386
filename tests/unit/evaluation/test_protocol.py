"""The reenactment protocol on world clips (exact ground truth): a maker that returns the true
frames scores perfectly, one that returns blank frames scores worse on every metric, cases pair the
right clips, and per-case results combine into a frame-weighted summary with one FID over all."""

from __future__ import annotations

import math

import pytest
import torch

from avatar4d.evaluation.clips import DrivingClip, make_cases
from avatar4d.evaluation.protocol import evaluate_cases, summarise
from avatar4d.metrics.config import METRIC_PRESETS

CONFIG = METRIC_PRESETS.get("tiny")


@pytest.fixture(scope="module")
def clips() -> list[DrivingClip]:
    from avatar4d.tracking.world_data import world_video

    out = []
    for name, domain, seed in (("a", "realistic", 1), ("b", "pixar", 2)):
        video = world_video(4, seed=seed, domain=domain)  # one identity, moving pose, jaw and smile
        out.append(DrivingClip(name=name, domain=domain, frames=video.images, params=video.params,
                               camera=video.camera))
    return out


@pytest.fixture(scope="module")
def suite():
    from avatar4d.metrics.suite import MetricSuite

    return MetricSuite(CONFIG)


class TruthMaker:
    """Returns the driving clip's own frames for its coefficients: a perfect avatar of a known clip."""

    name = "truth"

    def __init__(self, clips: list[DrivingClip]) -> None:
        self.clips = clips

    def create(self, portrait):
        return portrait

    def drive(self, avatar, params, camera):
        for clip in self.clips:
            for index in range(clip.frames.shape[0]):
                if torch.equal(clip.camera.cam2world[index], camera.cam2world[0]) and torch.equal(
                        clip.params.identity[index], params.identity[0]):  # a clip's cameras differ per frame
                    return clip.frames[index:index + params.batch_size]
        raise AssertionError("not a frame of a known clip")


class BlankMaker:
    name = "blank"

    def create(self, portrait):
        return portrait

    def drive(self, avatar, params, camera):
        return torch.full((params.batch_size, 3, avatar.shape[-2], avatar.shape[-1]), 0.5)


def test_cases_take_the_first_frame_as_source_and_pair_other_domains_for_cross(clips):
    cases = make_cases(clips)
    assert [c.task for c in cases] == ["self", "self", "cross", "cross"]
    assert cases[0].driving_indices() == [1, 2, 3] and torch.equal(cases[0].source, clips[0].frames[:1])
    assert cases[2].source_clip is clips[0] and cases[2].driving_clip is clips[1]
    assert cases[2].driving_indices() == [0, 1, 2, 3]
    assert len(make_cases(clips, cross=False)) == 2


def test_the_true_frames_score_perfectly_and_blank_frames_worse(clips, suite):
    cases = make_cases(clips)
    suite.reset()
    truth = evaluate_cases(TruthMaker(clips), cases, suite, samples_per_task=1)
    suite.reset()
    blank = evaluate_cases(BlankMaker(), cases, suite, samples_per_task=0)
    good, bad = summarise([truth], CONFIG), summarise([blank], CONFIG)
    print("\ntruth:", good, "\nblank:", bad)
    assert good["self"]["psnr"] == math.inf and good["self"]["ssim"] == pytest.approx(1.0, abs=1e-4)
    assert good["self"]["lpips"] == pytest.approx(0.0, abs=1e-6) and good["self"]["fid"] == pytest.approx(0, abs=1e-3)
    assert good["self"]["id"] > 0.9  # the same identity in other poses and expressions (tiny ArcFace)
    for metric in ("akd", "apd", "aed"):
        assert good["self"][metric] == pytest.approx(0.0, abs=1e-5)
    assert good["self"]["face_found"] == 1.0 and good["self"]["frames"] == 6 and good["self"]["cases"] == 2
    # cross: the source's avatar moves like the driving clip (here it *is* the driving clip)
    assert good["cross"]["akd"] == pytest.approx(0.0, abs=1e-5) and good["cross"]["clip"] < 1.0
    assert bad["self"]["psnr"] < good["self"]["psnr"] - 40 and bad["self"]["lpips"] > 0.0
    assert bad["self"]["fid"] > good["self"]["fid"] and bad["self"]["face_found"] == 0.0
    assert math.isnan(bad["self"]["akd"])  # no face in a blank frame: no distance, reported as such
    assert truth.cases[0].sample is not None and truth.cases[0].sample.ndim == 3
    assert all(c.sample is None for c in blank.cases)


def test_partial_results_merge_into_the_whole_runs_summary(clips, suite):
    cases = make_cases(clips, cross=False)
    suite.reset()
    whole = summarise([evaluate_cases(BlankMaker(), cases, suite, samples_per_task=0)], CONFIG)
    parts = []
    for case in cases:
        suite.reset()
        parts.append(evaluate_cases(BlankMaker(), [case], suite, samples_per_task=0))
    merged = summarise(parts, CONFIG)
    for metric in ("psnr", "lpips", "fid", "frames"):
        assert merged["self"][metric] == pytest.approx(whole["self"][metric], rel=1e-6), metric
