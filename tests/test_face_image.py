"""Input conventions of the face front end: what is accepted, what is refused, and how."""

import numpy as np
import pytest
import torch
from PIL import Image

from memo_pipeline.face import FaceImageError, as_rgb_frames, as_rgb_image, load_image
from memo_pipeline.face.image import MAX_SIDE, MIN_SIDE


def _rgb8(height=80, width=96, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def test_uint8_float_tensor_and_batch_of_one_agree():
    rgb8 = _rgb8()
    expected = rgb8.astype(np.float32) / 255.0
    for variant in (rgb8, expected, expected.astype(np.float64), torch.from_numpy(expected), torch.from_numpy(rgb8)[None]):
        out = as_rgb_image(variant)
        assert out.dtype == np.float32 and out.shape == (80, 96, 3)
        np.testing.assert_allclose(out, expected, atol=1e-7)


def test_gray_gray_alpha_and_rgba_are_converted():
    rgb8 = _rgb8()
    gray = rgb8[..., 0]
    for variant in (gray, gray[..., None], np.stack([gray, rgb8[..., 1]], -1)):
        out = as_rgb_image(variant)
        np.testing.assert_allclose(out, np.repeat(gray[..., None], 3, -1) / 255.0, atol=1e-7)
    rgba = np.concatenate([rgb8, np.full((80, 96, 1), 7, np.uint8)], -1)
    np.testing.assert_allclose(as_rgb_image(rgba), rgb8 / 255.0, atol=1e-7)


def test_sixteen_bit_keeps_precision():
    values = np.linspace(0, 65535, 80 * 96 * 3).astype(np.uint16).reshape(80, 96, 3)
    out = as_rgb_image(values)
    np.testing.assert_allclose(out, values / 65535.0, atol=1e-6)
    assert len(np.unique(out)) > 256  # not squeezed through 8 bits


@pytest.mark.parametrize(
    "image, fragment",
    [
        (np.zeros((MIN_SIDE - 1, 200, 3), np.uint8), "too small"),
        (np.zeros((200, MIN_SIDE - 1), np.uint8), "too small"),
        (np.zeros((64, MAX_SIDE + 1), np.uint8), "too large"),
        (np.full((80, 96, 3), 2.0, np.float32), "[0, 1]"),
        (np.full((80, 96, 3), -0.5, np.float32), "[0, 1]"),
        (np.full((80, 96, 3), np.nan, np.float32), "NaN"),
        (np.zeros((2, 80, 96, 3), np.float32), "batch of 2"),
        (np.zeros((3, 80, 96), np.float32), "channels"),
        (np.zeros((80, 96, 3), np.int32), "pixel type"),
        (np.zeros((80, 96, 3), bool), "pixel type"),
        (np.zeros((80, 96, 5), np.uint8), "channels"),
        (np.zeros((4, 80, 96, 3, 1), np.uint8), "expected [H, W, C]"),
        ("not an image", "expected a numpy array"),
    ],
)
def test_bad_images_are_rejected_with_the_name(image, fragment):
    with pytest.raises(FaceImageError) as info:
        as_rgb_image(image, name="portrait.png")
    assert "portrait.png" in str(info.value) and fragment in str(info.value)


def test_huge_pixel_count_is_rejected_before_any_model():
    # 9000 x 8000 is under the per-side limit but over the pixel budget; a broadcast view costs no memory.
    view = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (9000, 8000, 3))
    with pytest.raises(FaceImageError, match="too large"):
        as_rgb_image(view, "big")


def test_tiny_float_overshoot_is_clipped():
    out = as_rgb_image(np.full((80, 96, 3), 1.0004, np.float32))
    assert out.max() == 1.0


def test_frames_accept_single_frame_and_batches_without_size_limits():
    assert as_rgb_frames(_rgb8(8, 8)).shape == (1, 8, 8, 3)
    batch = as_rgb_frames(torch.rand(5, 16, 16, 4))
    assert batch.shape == (5, 16, 16, 3) and batch.dtype == torch.float32
    with pytest.raises(FaceImageError, match="gen"):
        as_rgb_frames(torch.rand(5, 16, 16), name="gen")  # [N, H, W] is ambiguous: refused


def test_load_image_modes(tmp_path):
    rgb8 = _rgb8()
    Image.fromarray(rgb8).save(tmp_path / "rgb.png")
    np.testing.assert_allclose(load_image(tmp_path / "rgb.png"), rgb8 / 255.0, atol=1e-7)

    rgba = np.concatenate([rgb8, np.zeros((80, 96, 1), np.uint8)], -1)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_allclose(load_image(tmp_path / "rgba.png"), rgb8 / 255.0, atol=1e-7)

    gray16 = (np.arange(80 * 96, dtype=np.uint32) * 8 % 65536).astype(np.uint16).reshape(80, 96)
    Image.fromarray(gray16).save(tmp_path / "gray16.png")
    loaded = load_image(tmp_path / "gray16.png")
    np.testing.assert_allclose(loaded[..., 1], gray16 / 65535.0, atol=1e-6)

    Image.fromarray(rgb8[..., 0]).convert("P").save(tmp_path / "palette.png")
    assert load_image(tmp_path / "palette.png").shape == (80, 96, 3)


def test_load_image_applies_exif_orientation(tmp_path):
    rgb8 = _rgb8(70, 100)
    image = Image.fromarray(rgb8)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    assert load_image(tmp_path / "rotated.jpg").shape == (100, 70, 3)


def test_load_image_errors_name_the_file(tmp_path):
    with pytest.raises(FaceImageError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(FaceImageError, match="broken.png"):
        load_image(tmp_path / "broken.png")
    Image.fromarray(np.zeros((40, 300), np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(FaceImageError, match="small.png.*too small"):
        load_image(tmp_path / "small.png")
    Image.fromarray(np.zeros((64, MAX_SIDE + 8), np.uint8)).save(tmp_path / "wide.png")
    with pytest.raises(FaceImageError, match="wide.png.*too large"):
        load_image(tmp_path / "wide.png")
