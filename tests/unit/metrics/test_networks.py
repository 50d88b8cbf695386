"""LPIPS, CLIP score and ArcFace ID similarity: identity and symmetry properties, the tiny
variants, and the published architectures loaded from local files (random weights with the real
names and shapes; nothing downloads)."""

from __future__ import annotations

import math

import pytest
import torch

from avatar4d.errors import UserError
from avatar4d.metrics.config import METRIC_PRESETS, ClipScoreConfig, IdentityConfig

TINY = METRIC_PRESETS.get("tiny")


def _images(count: int, seed: int, size: int = 48) -> torch.Tensor:
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_lpips_is_zero_for_identical_images_symmetric_and_positive_otherwise():
    from avatar4d.metrics.perceptual import LPIPSMetric

    metric = LPIPSMetric("alex", None, random_backbone=True)
    a, b = _images(3, 0), _images(3, 1)
    assert metric(a, a) == pytest.approx(torch.zeros(3), abs=1e-7)
    assert metric(a, b) == pytest.approx(metric(b, a), rel=1e-5)
    assert (metric(a, b) > 0).all()
    again = LPIPSMetric("alex", None, random_backbone=True)  # the random trunk is drawn from a seed
    assert torch.equal(again(a, b), metric(a, b))


def test_lpips_trunk_weights_come_from_a_local_torchvision_file(tmp_path):
    from torchvision.models import alexnet

    from avatar4d.metrics.perceptual import LPIPSMetric

    torch.manual_seed(0)
    path = tmp_path / "alexnet-owt-7be5be79.pth"
    torch.save(alexnet(weights=None).state_dict(), path)
    metric = LPIPSMetric("alex", str(path))
    assert torch.equal(metric.lpips.net.slice1[0].weight, torch.load(path)["features.0.weight"])
    with pytest.raises(UserError, match="not found"):
        LPIPSMetric("alex", str(tmp_path / "missing.pth"))
    with pytest.raises(UserError, match="needs the local weights"):
        LPIPSMetric("alex", None)


def test_clip_score_is_one_for_the_same_image_and_lower_for_others():
    from avatar4d.metrics.clip_score import ClipScore

    score = ClipScore(TINY.clip)
    a, b = _images(2, 2), _images(2, 3)
    assert score(a, a) == pytest.approx(torch.ones(2), abs=1e-5)
    assert (score(a[:1], b) < 1 - 1e-4).all()
    assert score(a[:1], b).shape == (2,)


def test_clip_score_loads_an_open_clip_checkpoint_from_a_local_file(tmp_path):
    import open_clip

    from avatar4d.metrics.clip_score import ClipScore

    # a small registered architecture (open_clip reads model configs from JSON) with random weights
    open_clip.factory._MODEL_CONFIGS["avatar4d-test-clip"] = {
        "embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
        "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}}
    try:
        model = open_clip.create_model("avatar4d-test-clip")
        path = tmp_path / "open_clip_pytorch_model.bin"
        torch.save(model.state_dict(), path)
        score = ClipScore(ClipScoreConfig(model="avatar4d-test-clip", checkpoint=str(path)))
        assert torch.equal(score.visual.conv1.weight, model.visual.conv1.weight)
        a = _images(2, 4, size=40)
        assert score(a, a) == pytest.approx(torch.ones(2), abs=1e-5)
    finally:
        del open_clip.factory._MODEL_CONFIGS["avatar4d-test-clip"]
    with pytest.raises(UserError, match="not found"):
        ClipScore(ClipScoreConfig(checkpoint=str(tmp_path / "missing.bin")))


def test_iresnet_100_has_the_released_arcface_size_and_loads_its_own_state_dict(tmp_path):
    from avatar4d.metrics.identity import IResNet, load_iresnet

    paper = IResNet(METRIC_PRESETS.get("paper").identity)
    assert sum(p.numel() for p in paper.parameters()) == 65_156_160  # insightface ms1mv3 r100 backbone.pth
    assert {"conv1.weight", "layer3.29.conv2.weight", "fc.weight", "features.running_var"} <= set(paper.state_dict())
    del paper
    config = TINY.identity
    source = load_iresnet(config, seed=3)
    path = tmp_path / "backbone.pth"
    torch.save(source.state_dict(), path)
    loaded = load_iresnet(config.replace(checkpoint=str(path)), seed=9)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), source.state_dict().values()))
    wider = IdentityConfig(layers=(1, 1, 1, 1), widths=(8, 16, 32, 64), input_size=32, embedding_size=32,
                           checkpoint=str(path))
    with pytest.raises(UserError, match="do not fit"):
        load_iresnet(wider)


def test_alignment_maps_the_five_points_onto_arcfaces_template():
    from avatar4d.metrics.identity import ARCFACE_TEMPLATE, align_faces, similarity_transform

    angle = 0.3
    rotation = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    points = torch.rand(4, 5, 2, generator=torch.Generator().manual_seed(5))
    scale, found, shift = similarity_transform(points, 1.7 * points @ rotation.T + torch.tensor([0.1, -0.2]))
    assert scale == pytest.approx(torch.full((4,), 1.7), abs=1e-5)
    assert torch.allclose(found, rotation.expand(4, 2, 2), atol=1e-5)
    assert torch.allclose(shift, torch.tensor([0.1, -0.2]).expand(4, 2), atol=1e-5)
    # landmarks already on the template (in a 112² image): the aligned crop is the image itself
    template = torch.tensor(ARCFACE_TEMPLATE) / 112
    landmarks = torch.full((1, 68, 2), 0.5)
    landmarks[0, 36:42], landmarks[0, 42:48] = template[0], template[1]
    landmarks[0, 30], landmarks[0, 48], landmarks[0, 54] = template[2], template[3], template[4]
    image = _images(1, 6, size=112)
    assert torch.allclose(align_faces(image, landmarks, 112), image, atol=1e-4)


def test_id_similarity_is_one_for_the_same_face_and_lower_for_another():
    from avatar4d.metrics.identity import IdentitySimilarity

    metric = IdentitySimilarity(TINY.identity)
    landmarks = torch.rand(2, 68, 2, generator=torch.Generator().manual_seed(7)) * 0.5 + 0.25
    a, b = _images(2, 8, size=64), _images(2, 9, size=64)
    assert metric(a, landmarks, a, landmarks) == pytest.approx(torch.ones(2), abs=1e-5)
    assert (metric(a[:1], landmarks[:1], b, landmarks) < 1 - 1e-4).all()
