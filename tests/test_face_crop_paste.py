"""Square face crop, crop info as plain data, and chunked paste-back (round trips and streaming)."""

import json

import numpy as np
import pytest
import torch

from memo_pipeline.face import (
    CropInfo,
    Face,
    FaceImageError,
    crop_face,
    crop_with_info,
    face_crop_info,
    feather_mask,
    match_colors,
    paste_back,
    whole_image_crop_info,
)
from support import need

ONE_LEVEL = 1.0 / 255


def _smooth(height, width):
    """Low-frequency colour image: resampling it down and up again loses almost nothing."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    return np.stack(
        [0.5 + 0.3 * np.sin(x / 40 + y / 57), 0.5 + 0.3 * np.cos(x / 33 - y / 45), 0.4 + 0.2 * np.sin((x + y) / 50)], -1
    ).astype(np.float32)


def _noise(height, width, seed=0):
    return np.random.default_rng(seed).random((height, width, 3)).astype(np.float32)


def _collect(chunks):
    return torch.cat(list(chunks)).numpy()


# ----------------------------------------------------------------------------- crop geometry


def test_crop_square_geometry():
    face = Face(box=(400, 300, 500, 380), score=1.0)  # 100 x 80
    info = face_crop_info(face, 1000, 800, scale=2.0, resolution=256, shift_y=0.25)
    # side 2 * 100; centre (450, 340 + 0.25 * 80) -> square from (350, 260)
    assert (info.x0, info.y0, info.size) == (350, 260, 200)
    assert (info.image_width, info.image_height, info.resolution) == (1000, 800, 256)
    assert info.face_box == (400, 300, 500, 380)


def test_default_crop_leaves_room_for_hair_and_shoulders():
    face = Face(box=(400, 300, 500, 420), score=1.0)
    info = face_crop_info(face, 2000, 2000)
    above, below = 300 - info.y0, info.y0 + info.size - 420
    assert info.size == 300 and info.resolution == 512
    assert above >= 0.4 * face.height and below >= 0.9 * face.height and below > above


def test_keep_inside_shifts_instead_of_padding():
    face = Face(box=(5, 5, 55, 55), score=1.0)
    inside = face_crop_info(face, 400, 300, scale=2.0, resolution=64)
    assert (inside.x0, inside.y0) == (0, 0)
    free = face_crop_info(face, 400, 300, scale=2.0, resolution=64, keep_inside=False)
    assert free.x0 < 0 and free.y0 < 0


def test_crop_pads_by_repeating_edges():
    image = _noise(100, 120)
    face = Face(box=(0, 10, 40, 50), score=1.0)
    crop, info = crop_face(image, face, scale=2.0, resolution=80, shift_y=0.0, keep_inside=False)
    assert (info.x0, info.y0, info.size) == (-20, -10, 80)  # same size as the resolution: no resampling
    np.testing.assert_allclose(crop[10:, 20:], image[: 80 - 10, : 80 - 20], atol=1e-6)
    np.testing.assert_allclose(crop[:10, 20:], np.broadcast_to(image[0, :60], (10, 60, 3)), atol=1e-6)
    np.testing.assert_allclose(crop[10:, :20], np.broadcast_to(image[:70, :1], (70, 20, 3)), atol=1e-6)
    np.testing.assert_allclose(crop[:10, :20], np.broadcast_to(image[0, 0], (10, 20, 3)), atol=1e-6)


def test_crop_larger_than_image_still_pads():
    image = _noise(90, 200)
    crop, info = crop_face(image, Face(box=(80, 20, 140, 80), score=1.0), scale=2.0, resolution=120)
    assert (info.x0, info.y0, info.size) == (50, 5, 120)  # shifted inside horizontally, too tall to fit
    assert crop.shape == (120, 120, 3)
    np.testing.assert_allclose(crop[:85], image[5:, 50:170], atol=1e-6)
    np.testing.assert_allclose(crop[85:], np.broadcast_to(image[89, 50:170], (35, 120, 3)), atol=1e-6)


def test_crop_info_is_plain_json_data():
    info = face_crop_info(Face(box=(10.5, 20, 60, 80.25), score=0.8), 300, 200, resolution=128)
    text = json.dumps(info.to_dict())
    assert CropInfo.from_dict(json.loads(text)) == info
    whole = whole_image_crop_info(320, 240, 320)
    assert CropInfo.from_dict(json.loads(json.dumps(whole.to_dict()))) == whole


def test_face_record_is_plain_json_data():
    face = Face(box=(1.5, 2, 30, 40), score=0.75, kps=((5, 6), (7, 8), (9, 10), (11, 12), (13, 14)))
    again = Face.from_dict(json.loads(json.dumps(face.to_dict())))
    assert again == face and again.kps_array().shape == (5, 2)
    assert Face.from_dict({"box": [0, 0, 4, 4], "score": 1}).kps is None
    for bad in ({"box": [0, 0, 4], "score": 1}, {"score": 1}, {"box": [0, 0, 4, 4], "score": 1, "kps": [[0, 0]]}):
        with pytest.raises(ValueError, match="face record"):
            Face.from_dict(bad)


@pytest.mark.parametrize(
    "record",
    [
        {"x0": 0, "y0": 0, "size": 10, "image_width": 20, "image_height": 20, "resolution": 64},  # no scale
        {"x0": 0, "y0": 0, "size": "big", "image_width": 20, "image_height": 20, "resolution": 64, "scale": 1},
        {"x0": 50, "y0": 0, "size": 10, "image_width": 20, "image_height": 20, "resolution": 64, "scale": 1},
        {"x0": 0, "y0": 0, "size": 0, "image_width": 20, "image_height": 20, "resolution": 64, "scale": 1},
    ],
)
def test_bad_crop_info_records(record):
    with pytest.raises(ValueError):
        CropInfo.from_dict(record)


def test_bad_crop_requests():
    face = Face(box=(10, 10, 60, 60), score=1.0)
    with pytest.raises(ValueError, match="scale"):
        face_crop_info(face, 100, 100, scale=0)
    with pytest.raises(ValueError, match="multiple of 8"):
        face_crop_info(face, 100, 100, resolution=100)
    with pytest.raises(ValueError, match="no area"):
        face_crop_info(Face(box=(10, 10, 10, 60), score=1.0), 100, 100)
    with pytest.raises(FaceImageError, match="other.png.*made for 100x100"):
        crop_with_info(_noise(90, 100), face_crop_info(face, 100, 100, resolution=64), name="other.png")


# ----------------------------------------------------------------------------- paste-back


def test_feather_mask_fades_only_inner_edges():
    inner = CropInfo(x0=100, y0=100, size=200, image_width=500, image_height=500, resolution=64, scale=2.0)
    mask = feather_mask(inner, 0.1).numpy()
    assert mask.shape == (200, 200)
    assert mask[100, 100] == 1.0 and mask[0, 100] < 0.01 and mask[100, -1] < 0.01
    assert np.all(np.diff(mask[100, :20]) > 0)  # rises monotonically over the 20-pixel fade
    assert np.all(mask[20:180, 20:180] == 1.0)

    corner = CropInfo(x0=-50, y0=-50, size=200, image_width=500, image_height=500, resolution=64, scale=2.0)
    mask = feather_mask(corner, 0.1).numpy()
    assert mask.shape == (150, 150)
    assert mask[0, 0] == 1.0 and mask[0, 100] == 1.0  # top and left lie on the image border: no fade
    assert mask[75, -1] < 0.01  # the right edge is inside the image: fades
    assert np.all(feather_mask(inner, 0.0).numpy() == 1.0)
    with pytest.raises(ValueError, match="feather"):
        feather_mask(inner, 0.7)


def test_unchanged_crop_pastes_back_to_the_original_real_photo():
    data = need("skimage.data")
    photo = data.astronaut()
    centred = Face(box=(177, 66, 272, 161), score=1.0)
    near_top = Face(box=(177, 20, 272, 115), score=1.0)  # without keep_inside the square leaves the image
    for face, keep_inside in ((centred, True), (near_top, False)):
        crop, info = crop_face(photo, face, scale=256 / 95, resolution=256, keep_inside=keep_inside)
        assert info.size == 256  # no resampling either way
        assert keep_inside or info.y0 < 0
        out = _collect(paste_back(crop[None], info, photo))
        assert out.shape == (1, 512, 512, 3)
        assert np.abs(out[0] - photo / 255.0).max() <= ONE_LEVEL


@pytest.mark.parametrize("scale, resolution", [(2.0, 128), (1.6, 128), (2.5, 512)])
def test_unchanged_crop_round_trip_with_resampling(scale, resolution):
    image = _smooth(300, 400)
    crop, info = crop_face(image, Face(box=(150, 100, 230, 180), score=1.0), scale=scale, resolution=resolution)
    out = _collect(paste_back(crop[None], info, image, feather=0.15))
    assert np.abs(out[0] - image).max() <= ONE_LEVEL


def test_resampled_round_trip_on_the_real_photo_is_close():
    """Shrinking then enlarging cannot keep fine detail exactly; measured, not hidden."""
    data = need("skimage.data")
    photo = data.astronaut() / 255.0
    crop, info = crop_face(photo, Face(box=(177, 66, 272, 161), score=1.0), resolution=128)  # 238 px -> 128
    out = _collect(paste_back(crop[None], info, photo))[0]
    x1, y1, x2, y2 = info.visible_box()
    error = np.abs(out - photo)[y1:y2, x1:x2]
    assert error.mean() < 5 * ONE_LEVEL  # measured 3.4 levels (238 px shrunk to 128 and back)
    assert np.all(out[:, :x1] == photo[:, :x1].astype(np.float32))  # outside the square: untouched


def test_pasted_content_lands_in_the_square_with_feathering():
    image = np.zeros((200, 300, 3), np.float32)
    info = face_crop_info(Face(box=(120, 60, 180, 120), score=1.0), 300, 200, scale=2.0, resolution=64, shift_y=0)
    white = np.ones((64, 64, 3), np.float32)
    out = _collect(paste_back(white[None], info, image, feather=0.1))[0]
    x0, y0, s = info.x0, info.y0, info.size
    np.testing.assert_allclose(out[y0 + 20 : y0 + s - 20, x0 + 20 : x0 + s - 20], 1.0, atol=1e-5)
    assert 0 < out[y0 + s // 2, x0 + 1, 0] < 0.1  # faded near the edge
    outside = np.ones((200, 300), bool)
    outside[y0 : y0 + s, x0 : x0 + s] = False
    assert np.all(out[outside] == 0.0)


def test_color_match_undoes_a_colour_cast():
    image = _smooth(256, 256)
    crop, info = crop_face(image, Face(box=(96, 96, 160, 160), score=1.0), scale=2.0, resolution=128)
    cast = np.clip(crop * np.array([0.8, 1.0, 1.1]) + np.array([0.05, -0.03, 0.0]), 0, 1).astype(np.float32)
    plain = _collect(paste_back(cast[None], info, image, feather=0.0))[0]
    matched = _collect(paste_back(cast[None], info, image, feather=0.0, color_match=True))[0]
    y, x, s = info.y0, info.x0, info.size
    plain_error = np.abs(plain - image)[y : y + s, x : x + s].mean()
    matched_error = np.abs(matched - image)[y : y + s, x : x + s].mean()
    assert matched_error < 0.2 * plain_error and matched_error < 2 * ONE_LEVEL
    unchanged = _collect(paste_back(crop[None], info, image, feather=0.0, color_match=True))[0]
    assert np.abs(unchanged - image).max() <= ONE_LEVEL  # a matching frame is left alone


def test_match_colors_statistics():
    frames = torch.rand(3, 32, 32, 3) * 0.5
    reference = torch.rand(32, 32, 3) * 0.4 + 0.3
    out = match_colors(frames, reference)
    torch.testing.assert_close(out.mean(dim=(1, 2)), reference.mean(dim=(0, 1)).expand(3, 3), atol=1e-3, rtol=0)


def test_frame_inputs_tensor_uint8_list_and_generator_agree():
    image = _smooth(120, 160)
    info = face_crop_info(Face(box=(60, 30, 100, 70), score=1.0), 160, 120, scale=2.0, resolution=64)
    frames = np.random.default_rng(1).integers(0, 256, size=(7, 64, 64, 3), dtype=np.uint8)
    expected = _collect(paste_back(torch.from_numpy(frames / 255.0).float(), info, image, chunk_size=3))
    variants = [
        frames,
        torch.from_numpy(frames),
        list(frames),
        (f for f in frames),
        [frames[:2], frames[2:5], frames[5:]],  # an iterable of chunks
    ]
    for variant in variants:
        out = _collect(paste_back(variant, info, torch.from_numpy(image), chunk_size=3))
        np.testing.assert_allclose(out, expected, atol=1e-6)


def test_thousands_of_frames_stream_in_chunks():
    image = _smooth(96, 128)
    info = face_crop_info(Face(box=(48, 24, 80, 56), score=1.0), 128, 96, scale=2.0, resolution=64)
    crop = crop_with_info(image, info)
    pulled = []

    def frames():
        for index in range(3000):
            pulled.append(index)
            yield crop

    stream = paste_back(frames(), info, image, chunk_size=25)
    first = next(stream)
    assert first.shape == (25, 96, 128, 3) and len(pulled) == 25  # nothing read ahead
    count = first.shape[0]
    for chunk in stream:
        assert chunk.shape[0] <= 25 and len(pulled) - count <= 25
        count += chunk.shape[0]
        assert np.abs(chunk[-1].numpy() - image).max() <= ONE_LEVEL
    assert count == 3000


def test_paste_into_a_video():
    rng = np.random.default_rng(2)
    video = (np.clip(_smooth(100, 140)[None] + rng.normal(0, 0.02, (5, 1, 1, 3)), 0, 1)).astype(np.float32)
    info = face_crop_info(Face(box=(50, 20, 90, 60), score=1.0), 140, 100, scale=2.0, resolution=80)
    assert info.size == 80
    generated = np.stack([crop_with_info(frame, info) for frame in video])
    for original in (video, torch.from_numpy(video), (frame for frame in video)):
        out = _collect(paste_back(generated, info, original, chunk_size=2))
        assert np.abs(out - video).max() <= ONE_LEVEL  # each generated frame went into its own frame
    with pytest.raises(FaceImageError, match="original video ended after 3 frames"):
        _collect(paste_back(np.concatenate([generated, generated[:1]]), info, video[:3], chunk_size=4))


def test_paste_errors():
    image = _smooth(120, 160)
    info = face_crop_info(Face(box=(60, 30, 100, 70), score=1.0), 160, 120, scale=2.0, resolution=64)
    with pytest.raises(FaceImageError, match="generated frames are 32x32.*64x64"):
        _collect(paste_back(np.zeros((2, 32, 32, 3), np.float32), info, image))
    with pytest.raises(FaceImageError, match="original image is 100x120.*160x120"):
        paste_back(np.zeros((2, 64, 64, 3), np.float32), info, image[:, :100])
    with pytest.raises(ValueError, match="chunk_size"):
        paste_back(np.zeros((2, 64, 64, 3), np.float32), info, image, chunk_size=0)
    with pytest.raises(FaceImageError, match="\\[0, 1\\]"):
        _collect(paste_back(np.full((2, 64, 64, 3), 3.0, np.float32), info, image))
