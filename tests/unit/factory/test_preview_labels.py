"""The preview's yaw/pitch labels are the angles the cameras were made with (EG3D orbit about the world
origin, looking at the pivot)."""

import math

import pytest

from avatar4d.geometry.camera import orbit_camera
from factory.preview import camera_angles


@pytest.mark.parametrize(("yaw", "pitch"), [(0.0, 0.0), (30.0, 10.0), (-45.0, -12.0)])
def test_labels_give_back_the_orbit_angles(yaw, pitch):
    label = orbit_camera(math.radians(yaw), math.radians(pitch)).to_label()[0].tolist()
    got_yaw, got_pitch = camera_angles(label)
    assert got_yaw == pytest.approx(yaw, abs=1e-3) and got_pitch == pytest.approx(pitch, abs=1e-3)
