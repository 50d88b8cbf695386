"""avatar4d.viz: grids and PNGs are torchvision's; labelled contact sheets are big enough to judge."""

import io

import numpy as np
import torch
from PIL import Image

from avatar4d import viz


def test_grid_and_png_are_torchvision_s(tmp_path):
    import torchvision.utils

    images = torch.rand(5, 3, 8, 6)
    assert torch.equal(viz.make_grid(images, nrow=3), torchvision.utils.make_grid(images, nrow=3, pad_value=1.0))
    path = viz.save_png(images[0] * 2 - 1, tmp_path / "a.png", value_range=(-1, 1))
    expected = tmp_path / "b.png"
    torchvision.utils.save_image(images[0], expected)
    assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(expected)))
    decoded = np.asarray(Image.open(io.BytesIO(viz.encode_png(images[0]))))
    assert np.array_equal(decoded, viz.to_uint8(images[0]))


def test_labelled_grid_enlarges_small_cells_and_draws_labels():
    images = torch.zeros(4, 3, 16, 16)
    sheet = viz.labelled_grid(images, nrow=2, row_labels=["input", "recon"], col_labels=["pixar", "lego"],
                              value_range=(0, 1), min_cell=128, title="step 10")
    assert sheet.dtype == np.uint8 and sheet.shape[0] > 2 * 128 and sheet.shape[1] > 2 * 128
    plain = viz.labelled_grid(images, nrow=2, min_cell=128)
    assert sheet.shape[0] > plain.shape[0] and sheet.shape[1] > plain.shape[1]  # room for the labels
    assert (sheet[:, :20] < 128).any(), "row labels are drawn in the left margin"
