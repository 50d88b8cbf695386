"""Stylize stage: the landmark conditioning image, rows that keep the source mesh and camera, the
embedded tiny Stable Diffusion + ControlNet pipeline (CPU, no Ray)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avatar4d.geometry.camera import orbit_camera
from avatar4d.geometry.landmark_image import draw_landmark_image, drawn_landmarks, landmark_colors
from avatar4d.geometry.morphable import default_head_model
from avatar4d.tracking.fitting import project_landmarks


def test_drawn_landmarks_land_on_the_projected_mesh_landmarks():
    head = default_head_model()
    params = head.random_params(3, generator=torch.Generator().manual_seed(0))
    camera = orbit_camera(torch.tensor([0.0, 0.4, -0.3]), torch.tensor([0.0, 0.1, -0.15]))
    points = project_landmarks(head, params, camera)  # [3, 68, 2] normalised image coordinates
    for resolution in (64, 128):
        image = draw_landmark_image(points, resolution)
        assert image.shape == (3, 3, resolution, resolution) and image.dtype == torch.uint8
        pixels = (points * resolution - 0.5).round().long()
        colors, checked = landmark_colors(), 0
        for b in range(3):
            for index in drawn_landmarks():
                x, y = pixels[b, index].tolist()
                if 0 <= x < resolution and 0 <= y < resolution:
                    assert torch.equal(image[b, :, y, x], colors[index]), (b, index)
                    checked += 1
        assert checked >= 3 * 45  # the chin may leave the frame; the eyes, brows and lips never do
        nose = pixels[0, 30]  # the nose is not drawn, as MediaPipe's face contours leave it out
        assert int(image[0, :, nose[1], nose[0]].sum()) == 0
    moved = draw_landmark_image(points + torch.tensor([0.1, 0.0]), 64)
    assert not torch.equal(moved, draw_landmark_image(points, 64))
    hidden = torch.ones(3, 68, dtype=torch.bool)
    hidden[:, 36:48] = False  # eyes missing: none of their colour appears
    no_eyes = draw_landmark_image(points, 64, visible=hidden)
    eye = torch.tensor([10, 200, 180], dtype=torch.uint8)[:, None, None]
    assert not (no_eyes == eye).all(dim=1).any() and (draw_landmark_image(points, 64) == eye).all(dim=1).any()


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    import lance

    from avatar4d.data.reader import decode_batch
    from train.fixtures import make_pairs

    root = tmp_path_factory.mktemp("stylize")
    uri = make_pairs(root, domains=("realistic",), per_domain=4, kind="world")
    dataset = lance.dataset(uri)
    table = dataset.to_table(columns=["sample_id", "image", "camera", "face_params"])
    return dataset, decode_batch(table.combine_chunks().to_batches()[0], dataset.schema)


@pytest.fixture(scope="module")
def stage(sources):
    from avatar4d.data.schema import face_params_dims
    from factory.stages.stylize import StylizeConfig, StylizeStage

    dataset, rows = sources
    dims = face_params_dims(dataset.schema)
    return StylizeStage(StylizeConfig(steps=3, batch_size=2), face_params_dim=dims["total"],
                        identity_dim=dims["identity"], image_resolution=rows["image"].shape[-1])


def test_stylized_rows_keep_the_source_mesh_and_camera(stage, sources):
    from avatar4d.data.reader import decode_batch
    from factory.domains import load_domains

    _, rows = sources
    catalog = load_domains()
    pixar = decode_batch(stage(catalog.get("pixar"), "stylized/pixar/0", rows), stage.schema)
    assert torch.equal(pixar["camera"], rows["camera"].float())
    assert torch.equal(pixar["face_params"], rows["face_params"].float())
    assert pixar["source_id"] == rows["sample_id"] and pixar["sample_id"][0] == f"pixar/{rows['sample_id'][0]}"
    assert pixar["image"].shape == rows["image"].shape
    assert (pixar["image"].float() - rows["image"].float()).abs().mean() > 5  # SDEdit changed the portraits
    assert set(pixar["prompt"]) == {catalog.get("pixar").prompt} and float(pixar["strength"][0]) == pytest.approx(0.6)
    again = decode_batch(stage(catalog.get("pixar"), "stylized/pixar/0", rows), stage.schema)
    assert torch.equal(again["image"], pixar["image"])  # every row's noise comes from its own seed
    greek = decode_batch(stage(catalog.get("greek_statue"), "stylized/greek_statue/0", rows), stage.schema)
    assert not torch.equal(greek["image"], pixar["image"])  # another prompt, another seed
    realistic = decode_batch(stage(catalog.get("realistic"), "stylized/realistic/0", rows), stage.schema)
    assert torch.equal(realistic["image"], rows["image"])  # the realistic domain is the source itself


def test_the_pipeline_sees_the_landmark_image_of_each_row(stage, sources, monkeypatch):
    from factory.domains import load_domains
    from factory.stages.stylize import landmark_images

    _, rows = sources
    pipe = stage.pipeline(None)
    seen = []
    original = type(pipe).__call__

    def spy(self, *args, **kwargs):
        seen.extend(kwargs["control_image"])
        assert kwargs["strength"] == 0.6 and kwargs["controlnet_conditioning_scale"] == 1.5
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(pipe), "__call__", spy)
    stage.stylize(load_domains().get("pixar"), rows["image"], rows["face_params"], rows["camera"], [1, 2, 3, 4])
    expected = landmark_images(stage.head, rows["face_params"], rows["camera"], stage.resolution)
    assert len(seen) == 4
    for image, truth in zip(seen, expected):
        assert torch.equal(torch.from_numpy(np.array(image)).permute(2, 0, 1), truth)


def test_chunk_plan_and_bad_inputs_are_one_line_errors(tmp_path):
    from avatar4d.errors import UserError
    from factory.stylize_run import StylizeRunConfig, plan_chunks, run_stylize

    chunks = plan_chunks(["pixar", "lego"], 10, 4)
    assert [c.chunk_id for c in chunks[:3]] == ["stylized/pixar/00000000-00000004", "stylized/pixar/00000004-00000008",
                                                "stylized/pixar/00000008-00000010"]
    assert sum(c.rows for c in chunks) == 20
    with pytest.raises(UserError, match="no Lance dataset"):
        run_stylize(StylizeRunConfig(source=str(tmp_path / "none.lance"), out=str(tmp_path / "out")), local=True)
    with pytest.raises(UserError, match="unknown domain 'pixr'; did you mean pixar"):
        run_stylize(StylizeRunConfig(source=str(tmp_path / "none.lance"), domains=["pixr"]), local=True)
