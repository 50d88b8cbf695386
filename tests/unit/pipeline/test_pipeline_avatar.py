"""Avatars on disk, checkpoint resolution, portrait decoding, driving signals and cameras."""

import json

import numpy as np
import pytest
import torch

from avatar4d.errors import UserError
from avatar4d.pipeline import (
    Avatar,
    InvalidImageError,
    decode_image,
    encode_png,
    from_arrays,
    from_file,
    parse_camera,
    preset_sequence,
    resolve_checkpoints,
    turntable,
)
from avatar4d.pipeline.cameras import turntable_degrees
from avatar4d.pipeline.checkpoints import MANIFEST
from tests.unit.pipeline.checkpoints import make_checkpoints


def _avatar(seed: int = 0) -> Avatar:
    gen = torch.Generator().manual_seed(seed)
    return Avatar(avatar_id="ab" * 16, triplane=torch.randn(4, 8, 16, 16, generator=gen),
                  source_image=torch.randint(0, 255, (3, 32, 32), dtype=torch.uint8, generator=gen),
                  source_camera=torch.randn(25, generator=gen), source_coefficients=torch.randn(25, generator=gen),
                  identity_dim=12, expression_dim=10, checkpoints={"dit": "0" * 64}, sampling={"steps": 3})


def test_avatar_round_trip_and_damage(tmp_path):
    avatar = _avatar()
    folder = avatar.save(tmp_path / "a")
    again = Avatar.load(folder)
    for name in ("triplane", "source_image", "source_camera", "source_coefficients"):
        assert torch.equal(getattr(again, name), getattr(avatar, name)), name
    assert (again.avatar_id, again.checkpoints, again.sampling) == (avatar.avatar_id, avatar.checkpoints,
                                                                    avatar.sampling)
    other = _avatar(1)
    other.save(folder)  # replacing an avatar swaps the folder whole
    assert torch.equal(Avatar.load(folder).triplane, other.triplane)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    (folder / "avatar.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(UserError, match="damaged"):
        Avatar.load(folder)
    (folder / "avatar.json").write_text("{")
    with pytest.raises(UserError, match="damaged"):
        Avatar.load(folder)
    with pytest.raises(UserError, match="not found"):
        Avatar.load(tmp_path / "missing")
    with pytest.raises(UserError, match="is not an avatar"):
        Avatar.load(tmp_path)


def test_checkpoint_layouts(tmp_path):
    root = make_checkpoints(tmp_path / "ckpt")
    found = resolve_checkpoints(root)
    assert (found.dit, found.vae, found.generator) == (root / "dit", root / "vae", root / "generator")
    assert found.encoders.clip.token_shape == (5, 32)  # the tiny encoders fit the tiny DiT
    manifest = tmp_path / "manifest"
    manifest.mkdir()
    (manifest / MANIFEST).write_text(json.dumps({"dit": str(root / "dit"), "vae": "../ckpt/vae",
                                                 "generator": str(root / "generator"), "encoders": "tiny"}))
    assert resolve_checkpoints(manifest).vae.resolve() == (root / "vae").resolve()
    (manifest / MANIFEST).write_text(json.dumps({"dit": str(root / "vae"), "vae": str(root / "vae"),
                                                 "generator": str(root / "generator")}))
    with pytest.raises(UserError, match="not the dit"):
        resolve_checkpoints(manifest)
    (manifest / MANIFEST).write_text("{")
    with pytest.raises(UserError, match="not valid JSON"):
        resolve_checkpoints(manifest)
    with pytest.raises(UserError, match="not found"):
        resolve_checkpoints(tmp_path / "nothing")
    with pytest.raises(UserError, match="triplane_vae checkpoint"):
        resolve_checkpoints(root / "vae")


def test_decode_image_rejects_bad_uploads():
    good = np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)
    png = encode_png(good)
    assert np.array_equal(decode_image(png, max_pixels=10_000), good)
    cases = {b"": "empty", b"hello world": "not an image", png[: len(png) // 2]: "corrupt or truncated",
             encode_png(np.zeros((1, 1, 3), np.uint8)): "at least"}
    for data, message in cases.items():
        with pytest.raises(InvalidImageError, match=message):
            decode_image(data, max_pixels=10_000)
    with pytest.raises(InvalidImageError, match="the limit is 1,000"):
        decode_image(png, max_pixels=1_000)


def test_driving_presets_files_and_limits(tmp_path):
    from avatar4d.geometry.morphable import default_head_model

    head = default_head_model()
    talk = preset_sequence("talk", head, 48).check(head.expression_dim, 48)
    jaw_open = talk.expression[:, head.expression_names.index("jaw_open")]
    assert talk.expression.shape == (48, head.expression_dim) and jaw_open.max() > 0.5 and jaw_open.min() >= 0
    assert jaw_open.std() > 0.1  # the mouth moves
    assert preset_sequence("neutral", head, 3).expression.abs().sum() == 0
    with pytest.raises(UserError, match="unknown expression preset"):
        preset_sequence("dance", head, 3)
    with pytest.raises(UserError, match="limit is 10"):
        talk.check(head.expression_dim, 10)
    bad = from_arrays([[float("nan")] * head.expression_dim])
    with pytest.raises(UserError, match="NaN or infinity"):
        bad.check(head.expression_dim, 10)
    with pytest.raises(UserError, match="within"):
        from_arrays([[9.0] * head.expression_dim]).check(head.expression_dim, 10)
    with pytest.raises(UserError, match="expression coefficients"):
        from_arrays([[0.0] * 3]).check(head.expression_dim, 10)

    values = np.random.default_rng(0).uniform(-1, 1, (5, head.expression_dim + 3)).astype(np.float32)
    np.save(tmp_path / "e.npy", values)
    from_npy = from_file(tmp_path / "e.npy", head.expression_dim)
    assert torch.allclose(from_npy.jaw, torch.from_numpy(values[:, -3:]))
    (tmp_path / "e.json").write_text(json.dumps({"expression": values[:, :-3].tolist()}))
    assert from_file(tmp_path / "e.json", head.expression_dim).jaw.abs().sum() == 0
    tracking = {"fps": 30, "per_frame": [{"face": True, "coefficients": {"expression": values[0, :-3].tolist(),
                                                                         "jaw": [0.1, 0, 0]}}, {"face": False}]}
    (tmp_path / "tracking.json").write_text(json.dumps(tracking))
    tracked = from_file(tmp_path / "tracking.json", head.expression_dim)
    assert tracked.frames == 1 and tracked.fps == 30
    (tmp_path / "bad.json").write_text("[1, 2")
    with pytest.raises(UserError, match="not valid JSON"):
        from_file(tmp_path / "bad.json", head.expression_dim)


def test_cameras():
    assert parse_camera("20, -5") == (20.0, -5.0)
    for text in ("20", "a,b", "nan,0", "200,0"):
        with pytest.raises(UserError):
            parse_camera(text)
    yaws, pitches = turntable_degrees(8)
    assert yaws[0] == 0 and max(yaws) == pytest.approx(40) and min(yaws) == pytest.approx(-40)
    cameras = turntable(8)
    assert cameras.batch_size == 8
    # EG3D's LookAtPoseSampler: 2.7 from the world origin, looking at the pivot (0, 0, 0.2)
    assert torch.allclose(cameras.origin.norm(dim=-1), torch.full((8,), 2.7), atol=1e-4)
