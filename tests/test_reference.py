"""One reference preprocessing for every front end: the official PIL bilinear resize by default."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from memo_pipeline.cli import make_test_portrait
from memo_pipeline.face.image import load_image
from memo_pipeline.reference import check_resolution, prepare_reference


def _official(path, size):
    """What the official preprocessing feeds the model: PIL RGB -> Resize((size, size)) -> ToTensor."""
    image = Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255)


@pytest.mark.parametrize("size, resolution", [((256, 256), 64), ((300, 200), 96), ((90, 140), 256)])
def test_default_is_the_official_pil_bilinear_resize(tmp_path, size, resolution):
    path = tmp_path / "portrait.png"
    picture = Image.open(make_test_portrait(tmp_path / "square.png", 256)).resize(size, Image.NEAREST)
    noisy = np.asarray(picture).astype(np.int16) + np.random.default_rng(0).integers(-20, 20, (size[1], size[0], 3))
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path)
    ours = prepare_reference(load_image(path), resolution)
    assert ours.shape == (resolution, resolution, 3) and ours.dtype == torch.float32
    assert torch.equal(ours, _official(path, resolution))


def test_non_square_warns_how_to_avoid_squashing(caplog):
    wide = np.random.default_rng(1).random((100, 160, 3), dtype=np.float32)
    with caplog.at_level(logging.WARNING, logger="memo_pipeline"):
        prepare_reference(wide, 64)
    assert "squashes" in caplog.text and "center-crop" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="memo_pipeline"):
        cropped = prepare_reference(wide, 64, "center-crop")
    assert caplog.text == ""
    assert torch.equal(cropped, prepare_reference(np.ascontiguousarray(wide[:, 30:130]), 64))


def test_bad_modes_and_resolutions():
    image = np.zeros((64, 64, 3), np.float32)
    with pytest.raises(ValueError, match="unknown reference mode"):
        prepare_reference(image, 64, "stretch")
    with pytest.raises(ValueError, match="needs a detected face"):
        prepare_reference(image, 64, "face-crop")
    for bad in (0, -8, 100, 12.5, True):
        with pytest.raises(ValueError, match="resolution"):
            check_resolution(bad)
    assert check_resolution(8) == 8 and check_resolution(40) == 40
