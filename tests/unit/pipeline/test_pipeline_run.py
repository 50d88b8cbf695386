"""The pipeline end to end on tiny checkpoints: rendering is the world's own, batching never changes
an avatar, and the create / animate commands work and fail in one line."""

import av
import numpy as np
import pytest
import torch

from avatar4d.cli import main
from avatar4d.geometry.morphable import FaceParams
from avatar4d.pipeline import Avatar, AvatarPipeline, PipelineConfig, encode_png, from_arrays, preset_sequence
from tests.unit.pipeline.checkpoints import make_checkpoints, world_portraits


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return make_checkpoints(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def pipeline(checkpoints):
    torch.set_num_threads(1)
    return AvatarPipeline.load(checkpoints, PipelineConfig(track=False, max_batch=4))


def test_true_triplane_renders_as_the_world(pipeline):
    """An avatar holding the world's true triplane renders the world's own image (same mesh, camera, renderer)."""
    images, triplanes, identity, camera, raw = world_portraits(2)
    for index in range(2):
        coefficients = FaceParams(identity=identity[index:index + 1], expression=torch.zeros(1, 10),
                                  jaw=torch.zeros(1, 3)).to_vector()[0]
        avatar = Avatar(avatar_id="0" * 32, triplane=triplanes[index], source_image=torch.zeros(3, 64, 64,
                                                                                                  dtype=torch.uint8),
                        source_camera=camera[index].to_label()[0], source_coefficients=coefficients,
                        identity_dim=12, expression_dim=10, checkpoints={}, sampling={})
        frame = pipeline.animate(avatar, preset_sequence("neutral", pipeline.head, 1))[0]
        error = np.abs(frame.astype(np.float64) - images[index].astype(np.float64))
        psnr = 10 * np.log10(255.0 ** 2 / max(np.mean(error ** 2), 1e-12))
        assert psnr > 40, psnr


def test_create_is_batch_invariant_and_seeded(pipeline):
    images = list(world_portraits(3)[0])
    together = pipeline.create(images, seeds=[5, 6, 7])
    alone = pipeline.create(images[1:2], seeds=[6])[0]
    assert torch.allclose(together[1].triplane, alone.triplane, atol=1e-4)
    assert (together[0].triplane - together[1].triplane).abs().mean() > 1e-3
    avatar = together[0]
    assert avatar.triplane.shape == (4, 8, 64, 64) and avatar.source_image.shape == (3, 64, 64)
    assert set(avatar.checkpoints) == {"dit", "vae", "encoders", "generator"} and avatar.sampling["seed"] == 5
    frames = pipeline.animate(avatar, preset_sequence("talk", pipeline.head, 6))
    assert frames.shape == (6, 64, 64, 3) and frames.dtype == np.uint8
    jobs = [pipeline.job(a, preset_sequence("smile", pipeline.head, 3)) for a in together]
    rendered = pipeline.render(jobs)  # 9 frames of 3 avatars in chunks of 4
    assert [r.shape[0] for r in rendered] == [3, 3, 3]
    assert np.array_equal(rendered[0], pipeline.render(jobs[:1])[0])


def test_render_job_checks(pipeline):
    from avatar4d.errors import UserError
    from avatar4d.pipeline import cameras_from_degrees

    avatar = pipeline.create(list(world_portraits(1)[0]))[0]
    with pytest.raises(UserError, match="2 cameras for 3"):
        pipeline.job(avatar, preset_sequence("talk", pipeline.head, 3), cameras_from_degrees([0, 1], [0, 0]))
    with pytest.raises(UserError, match="NaN"):
        pipeline.job(avatar, from_arrays([[float("inf")] * 10]))


def test_motion_aware_renderer_plugs_in(tmp_path):
    from avatar4d.errors import UserError

    checkpoints = make_checkpoints(tmp_path / "ckpt", renderer=True)
    pipeline = AvatarPipeline.load(checkpoints, PipelineConfig(track=False))
    assert pipeline.renderer.name == "motion-aware"
    avatar = pipeline.create(list(world_portraits(1)[0]))[0]
    frames = pipeline.animate(avatar, preset_sequence("talk", pipeline.head, 3))
    assert frames.shape == (3, 64, 64, 3) and frames.std() > 0
    parametric = AvatarPipeline.load(checkpoints, PipelineConfig(track=False, renderer="parametric"))
    assert parametric.renderer.name == "parametric"
    assert not np.array_equal(parametric.animate(avatar, preset_sequence("talk", pipeline.head, 3)), frames)
    with pytest.raises(UserError, match="checkpoints name none"):
        AvatarPipeline.load(make_checkpoints(tmp_path / "plain"), PipelineConfig(renderer="motion-aware"))


def test_create_and_animate_commands(checkpoints, tmp_path, capsys):
    portrait = tmp_path / "portrait.png"
    portrait.write_bytes(encode_png(world_portraits(1, domain="zombie")[0][0]))
    avatar = tmp_path / "avatar"
    assert main(["create", str(portrait), "--checkpoints", str(checkpoints), "--out", str(avatar), "--no-track",
                 "--steps", "2"]) == 0
    assert Avatar.load(avatar).sampling["steps"] == 2
    video = tmp_path / "talk.mp4"
    assert main(["animate", str(avatar), "--preset", "talk", "--frames", "5", "--orbit", "--out", str(video),
                 "--frames-dir", str(tmp_path / "png")]) == 0
    with av.open(str(video)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 5
    assert len(list((tmp_path / "png").glob("*.png"))) == 5
    capsys.readouterr()
    cases = [
        (["create", str(tmp_path / "nope.png"), "--checkpoints", str(checkpoints), "--out", str(avatar)], "not found"),
        (["create", str(video), "--checkpoints", str(checkpoints), "--out", str(avatar)], "not an image"),
        (["create", str(portrait), "--checkpoints", str(tmp_path), "--out", str(avatar)], "neither a folder"),
        (["animate", str(tmp_path), "--preset", "talk", "--out", str(video)], "is not an avatar"),
        (["animate", str(avatar), "--preset", "talk", "--camera", "1000,0", "--out", str(video)], "outside"),
        (["animate", str(avatar), "--preset", "talk", "--out", str(tmp_path / "x.gif")], "must be an .mp4"),
        (["animate", str(avatar), "--expressions", str(portrait), "--out", str(video)], "not valid JSON"),
    ]
    for argv, message in cases:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("avatar4d: error:") and message in err[-1], (argv, err)


def test_a_release_style_dit_is_guided_by_the_clip_tokens_of_a_zero_image(tmp_path):
    """A DiT whose unconditional input is the CLIP embedding of an all-zero image (``null_clip="zero_image"``, as
    released) samples in the pipeline with exactly those tokens: the encoders' ``null_condition()``."""
    from avatar4d.diffusion import SamplingConfig
    from avatar4d.encoders import ImageEncoders
    from avatar4d.models.dit import DIT_PRESETS, ImageConditionedDiT, save_dit
    from avatar4d.pipeline.checkpoints import resolve_checkpoints
    from avatar4d.pipeline.stages import TriplaneSampler

    root = make_checkpoints(tmp_path / "ckpt")
    torch.manual_seed(0)
    save_dit(root / "dit", ImageConditionedDiT(DIT_PRESETS.get("tiny", null_clip="zero_image")))
    found = resolve_checkpoints(root)
    sampler = TriplaneSampler(found, PipelineConfig(track=False, sampling=SamplingConfig(steps=2, guidance_scale=3.0)))
    expected, null_dino = ImageEncoders(found.encoders).eval().null_condition()
    torch.testing.assert_close(sampler.null_clip[0], expected)
    clip, dino = torch.randn(1, *expected.shape), torch.randn(1, *null_dino.shape)
    triplane = sampler.sample(clip, dino, [0])
    assert triplane.shape == (1, 4, 8, 64, 64) and torch.isfinite(triplane).all()
