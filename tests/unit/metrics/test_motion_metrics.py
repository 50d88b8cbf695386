"""AKD, APD and AED: definitions on constructed values, and the tracker on world renders (frames
scored against themselves are at distance zero; another expression is not)."""

from __future__ import annotations

import math

import pytest
import torch

from avatar4d.metrics.motion import (
    MotionTracker,
    MotionTracks,
    expression_distance,
    keypoint_distance,
    motion_distances,
    nanmean,
    pose_distance,
)


def test_keypoint_distance_is_zero_for_identical_landmarks_and_counts_pixels_at_512():
    landmarks = torch.rand(3, 68, 2, generator=torch.Generator().manual_seed(0))
    assert keypoint_distance(landmarks, landmarks) == pytest.approx(torch.zeros(3))
    shifted = landmarks + torch.tensor([3.0, 4.0]) / 512  # every point 5 px away at 512²
    assert keypoint_distance(shifted, landmarks) == pytest.approx(torch.full((3,), 5.0), abs=1e-4)
    assert keypoint_distance(shifted, landmarks, resolution=256) == pytest.approx(torch.full((3,), 2.5), abs=1e-4)


def test_pose_distance_in_degrees_and_expression_distance_as_mean_absolute_difference():
    a = torch.zeros(2, 3)
    b = torch.tensor([[math.radians(3), 0.0, 0.0], [math.radians(1), math.radians(2), math.radians(3)]])
    assert pose_distance(a, b) == pytest.approx(torch.tensor([1.0, 2.0]), abs=1e-5)
    assert expression_distance(torch.zeros(1, 4), torch.tensor([[0.1, -0.3, 0.0, 0.2]])) == pytest.approx(
        torch.tensor([0.15]))


def test_frames_without_a_face_have_no_distance_and_are_left_out_of_means():
    present = MotionTracks(torch.zeros(2, 68, 2), torch.zeros(2, 3), torch.zeros(2, 5), torch.tensor([True, True]))
    missing = MotionTracks.absent(2, 5)
    missing.present[0] = True
    missing.landmarks[0], missing.angles[0], missing.expression[0] = 0.0, 0.0, 0.0
    distances = motion_distances(present, missing)
    assert distances["akd"][0] == 0 and math.isnan(float(distances["akd"][1]))
    assert nanmean(distances["akd"]) == 0.0
    assert math.isnan(nanmean(torch.tensor([float("nan")])))


def test_the_tracker_scores_world_frames_against_themselves_at_zero_and_other_expressions_above():
    from avatar4d.tracking.world_data import world_video

    clip = world_video(6, seed=3)
    tracker = MotionTracker()
    tracks = tracker.track(clip.images)  # [6, 3, 64, 64] in [0, 1]
    assert bool(tracks.present.all())
    same = motion_distances(tracks, tracks)
    assert all(float(v.abs().max()) == 0.0 for v in same.values())
    other = MotionTracks(tracks.landmarks.roll(3, 0), tracks.angles.roll(3, 0), tracks.expression.roll(3, 0),
                         tracks.present)
    moved = motion_distances(other, tracks)
    assert nanmean(moved["akd"]) > 1.0 and nanmean(moved["apd"]) > 0.5 and nanmean(moved["aed"]) > 0.0
    blank = tracker.track(torch.zeros(2, 3, 64, 64))
    assert not bool(blank.present.any())
