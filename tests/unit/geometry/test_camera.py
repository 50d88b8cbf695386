import math

import pytest
import torch

from avatar4d.geometry.camera import (
    DEFAULT_PIVOT,
    Camera,
    PoseSampler,
    PoseSamplerConfig,
    fov_to_intrinsics,
    look_at,
    orbit_camera,
)


def test_fov_to_intrinsics_matches_eg3d_focal():
    k = fov_to_intrinsics(18.837)
    assert k[0, 0].item() == pytest.approx(1 / (math.tan(18.837 * math.pi / 360) * 1.414), rel=1e-6)
    assert k[0, 0].item() == pytest.approx(4.2634, abs=1e-3)  # FFHQ labels store 4.2647
    assert k[0, 2].item() == 0.5 and k[1, 2].item() == 0.5 and k[2, 2].item() == 1.0
    with pytest.raises(ValueError):
        fov_to_intrinsics(0.0)


def test_label_round_trip_is_exact():
    cams = PoseSampler().sample(7, seed=3).camera
    label = cams.to_label()
    assert label.shape == (7, 25)
    back = Camera.from_label(label)
    assert torch.equal(back.cam2world, cams.cam2world)
    assert torch.equal(back.intrinsics, cams.intrinsics)
    assert torch.equal(back.to_label(), label)
    single = Camera.from_label(label[0])
    assert single.batch_size == 1


def test_label_layout_is_cam2world_then_intrinsics():
    cam = orbit_camera(0.0, 0.0)
    label = cam.to_label()[0]
    assert torch.equal(label[:16].reshape(4, 4), cam.cam2world[0])
    assert torch.equal(label[16:].reshape(3, 3), cam.intrinsics[0])


def test_from_label_rejects_wrong_width():
    with pytest.raises(ValueError, match="25"):
        Camera.from_label(torch.zeros(3, 24))


def test_frontal_camera_matches_eg3d_convention():
    cam = orbit_camera(0.0, 0.0, radius=2.7)
    c2w = cam.cam2world[0]
    # EG3D LookAtPoseSampler: the camera sits on +z, 2.7 from the world origin (2.5 from the pivot),
    # and looks along -z at the pivot; OpenCV: x right, y down.
    assert torch.allclose(c2w[:3, 3], torch.tensor([0.0, 0.0, 2.7]), atol=1e-6)
    assert torch.allclose(c2w[:3, 2], torch.tensor([0.0, 0.0, -1.0]), atol=1e-6)
    assert torch.allclose(c2w[:3, 0], torch.tensor([1.0, 0.0, 0.0]), atol=1e-6)
    assert torch.allclose(c2w[:3, 1], torch.tensor([0.0, -1.0, 0.0]), atol=1e-6)


def test_orbit_follows_eg3d_look_at_pose_sampler():
    """EG3D camera_utils.LookAtPoseSampler: θ = π/2 + yaw, φ = π/2 − elevation, origin =
    r (sin φ cos(π − θ), cos φ, sin φ sin(π − θ)) around (0, 0, 0), forward towards the pivot."""
    yaw, pitch = torch.tensor([0.0, 0.4, -0.7]), torch.tensor([0.0, 0.3, -0.2])
    theta, phi = math.pi / 2 + yaw, math.pi / 2 - pitch
    origin = 2.7 * torch.stack([torch.sin(phi) * torch.cos(math.pi - theta), torch.cos(phi),
                                torch.sin(phi) * torch.sin(math.pi - theta)], dim=-1)
    cam = orbit_camera(yaw, pitch)
    assert torch.allclose(cam.origin, origin, atol=1e-5)
    forward = torch.nn.functional.normalize(torch.tensor(DEFAULT_PIVOT) - origin, dim=-1)
    assert torch.allclose(cam.forward, forward, atol=1e-5)
    old = orbit_camera(yaw, pitch, orbit_center=DEFAULT_PIVOT)  # the earlier orbit, still selectable
    assert torch.allclose(old.origin[0], torch.tensor([0.0, 0.0, 2.9]), atol=1e-6)


def test_look_at_is_orthonormal_and_points_at_target():
    gen = torch.Generator().manual_seed(0)
    eye = torch.randn(16, 3, generator=gen) * 3
    target = torch.randn(16, 3, generator=gen) * 0.1
    c2w = look_at(eye, target)
    rot = c2w[:, :3, :3]
    assert torch.allclose(rot.transpose(1, 2) @ rot, torch.eye(3).expand(16, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(16), atol=1e-5)  # right-handed
    direction = torch.nn.functional.normalize(target - eye, dim=-1)
    assert torch.allclose(c2w[:, :3, 2], direction, atol=1e-5)
    # image "down" (+y) has a negative component along world up
    assert (c2w[:, 1, 1] < 0).all()


def test_look_at_rejects_parallel_up():
    with pytest.raises(ValueError, match="parallel"):
        look_at(torch.tensor([[0.0, 3.0, 0.0]]), torch.zeros(1, 3))


def test_projection_of_pivot_is_image_centre_and_depth_its_distance():
    cams = PoseSampler(PoseSamplerConfig(roll_range=(0.0, 0.0))).sample(5, seed=1).camera
    pivot = torch.tensor(DEFAULT_PIVOT).expand(5, 1, 3)
    uv, depth = cams.project(pivot)
    assert torch.allclose(uv, torch.full_like(uv, 0.5), atol=1e-5)
    distance = (cams.origin - torch.tensor(DEFAULT_PIVOT)).norm(dim=-1)
    assert torch.allclose(depth.reshape(-1), distance, atol=1e-5)


def test_world2cam_inverts_cam2world():
    cams = PoseSampler().sample(4, seed=9).camera
    assert torch.allclose(cams.world2cam() @ cams.cam2world, torch.eye(4).expand(4, 4, 4), atol=1e-5)


def test_yaw_moves_camera_towards_positive_x_and_pitch_up():
    assert orbit_camera(0.5, 0.0).origin[0, 0] > 0
    assert orbit_camera(0.0, 0.4).origin[0, 1] > 0
    # a camera above the head looks down
    assert orbit_camera(0.0, 0.4).forward[0, 1] < 0


def test_roll_rotates_about_the_viewing_axis():
    plain, rolled = orbit_camera(0.0, 0.0, 0.0), orbit_camera(0.0, 0.0, 0.3)
    assert torch.allclose(plain.forward, rolled.forward, atol=1e-6)
    assert torch.allclose(plain.origin, rolled.origin, atol=1e-6)
    cos = (plain.cam2world[0, :3, 0] * rolled.cam2world[0, :3, 0]).sum()
    assert cos.item() == pytest.approx(math.cos(0.3), abs=1e-5)


@pytest.mark.parametrize("distribution", ["uniform", "gaussian"])
def test_sampler_respects_ranges_and_is_deterministic(distribution):
    cfg = PoseSamplerConfig(distribution=distribution, radius_jitter=0.1)
    sampler = PoseSampler(cfg)
    a, b = sampler.sample(2000, seed=42), sampler.sample(2000, seed=42)
    assert torch.equal(a.camera.cam2world, b.camera.cam2world)
    assert not torch.equal(a.yaw, sampler.sample(2000, seed=43).yaw)
    for values, (low, high) in ((a.yaw, cfg.yaw_range), (a.pitch, cfg.pitch_range), (a.roll, cfg.roll_range)):
        assert values.min() >= low - 1e-6 and values.max() <= high + 1e-6
    assert a.radius.min() >= 2.6 - 1e-6 and a.radius.max() <= 2.8 + 1e-6
    distances = a.camera.origin.norm(dim=-1)  # the orbit is around the world origin (EG3D)
    assert torch.allclose(distances, a.radius, atol=1e-5)
    if distribution == "uniform":  # covers the range
        assert a.yaw.min() < -0.7 and a.yaw.max() > 0.7
    else:  # frontal-heavy: most mass within one std
        assert (a.yaw.abs() < 0.3).float().mean() > 0.6


def test_sampler_config_validation_and_round_trip():
    with pytest.raises(ValueError):
        PoseSamplerConfig(yaw_range=(0.5, -0.5))
    with pytest.raises(ValueError):
        PoseSamplerConfig(distribution="beta")
    cfg = PoseSamplerConfig(yaw_range=(-0.3, 0.3), distribution="gaussian")
    assert PoseSamplerConfig.from_json(cfg.to_json()) == cfg
    assert PoseSamplerConfig.from_yaml(cfg.to_yaml()) == cfg


def test_camera_batching_helpers():
    cams = PoseSampler().sample(6, seed=0).camera
    assert cams[2].batch_size == 1 and torch.equal(cams[2].cam2world[0], cams.cam2world[2])
    assert cams[1:4].batch_size == 3
    assert Camera.cat([cams[:2], cams[2:]]).batch_size == 6
    assert cams.to(torch.float64).cam2world.dtype == torch.float64
    with pytest.raises(ValueError):
        Camera(torch.eye(4).expand(2, 4, 4), torch.eye(3).expand(3, 3, 3))
