"""ArcFace five-point alignment against numbers derived from insightface's published procedure.

insightface's ``estimate_norm`` fits scikit-image's ``SimilarityTransform`` from the landmarks to
the 112x112 ``arcface_dst`` template, and ``norm_crop`` warps with OpenCV's ``warpAffine``
(bilinear, black border). The reference matrices below were produced by that exact call
(scikit-image 0.26 ``SimilarityTransform().estimate(kps, template)``) and are also recomputed live
when scikit-image is installed; the warp is compared with OpenCV when it is installed.
"""

import math
import warnings

import numpy as np
import pytest

from memo_pipeline.face import ARCFACE_TEMPLATE, estimate_norm, norm_crop, umeyama_similarity
from memo_pipeline.face.alignment import warp_affine
from support import need

KPS = np.array([[206.8, 104.9], [246.1, 107.3], [224.4, 127.6], [209.3, 146.2], [241.7, 147.9]], np.float32)
KPS_REFERENCE = np.array(
    [[9.4916087404e-01, 4.0641398430e-02, -1.6331400187e02], [-4.0641398430e-02, 9.4916087404e-01, -3.9262703850e01]]
)
MIRRORED_REFERENCE = np.array(
    [[1.6787855987e-01, 1.0569952036e-02, 9.2569579042e01], [-1.0569952036e-02, 1.6787855987e-01, 4.8231919412e01]]
)


def _similarity(scale, degrees, tx, ty):
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return np.array([[scale * c, -scale * s, tx], [scale * s, scale * c, ty], [0, 0, 1]])


def _apply(matrix, points):
    return points @ matrix[:2, :2].T + matrix[:2, 2]


def test_template_values_are_insightfaces():
    assert ARCFACE_TEMPLATE.shape == (5, 2)
    np.testing.assert_allclose(ARCFACE_TEMPLATE[0], [38.2946, 51.6963])
    np.testing.assert_allclose(ARCFACE_TEMPLATE[4], [70.7299, 92.2041])


def test_landmarks_on_the_template_give_the_identity():
    np.testing.assert_allclose(estimate_norm(ARCFACE_TEMPLATE), [[1, 0, 0], [0, 1, 0]], atol=1e-5)


def test_scaled_and_shifted_landmarks():
    kps = ARCFACE_TEMPLATE * 2.0 + np.array([10.0, 20.0], np.float32)
    np.testing.assert_allclose(estimate_norm(kps), [[0.5, 0, -5], [0, 0.5, -10]], atol=1e-5)


def test_exact_similarity_is_recovered():
    forward = _similarity(1.7, 30.0, 100.0, 50.0)
    kps = _apply(forward, ARCFACE_TEMPLATE.astype(np.float64)).astype(np.float32)
    np.testing.assert_allclose(estimate_norm(kps), np.linalg.inv(forward)[:2], atol=1e-4)


def test_noisy_landmarks_match_the_reference_fit():
    np.testing.assert_allclose(estimate_norm(KPS), KPS_REFERENCE, rtol=1e-6, atol=1e-5)


def test_mirrored_landmarks_do_not_produce_a_reflection():
    mirrored = KPS * np.array([-1.0, 1.0], np.float32)
    matrix = estimate_norm(mirrored)
    assert np.linalg.det(matrix[:, :2]) > 0
    np.testing.assert_allclose(matrix, MIRRORED_REFERENCE, rtol=1e-6, atol=1e-5)


def test_umeyama_agrees_with_scikit_image_on_random_sets():
    transform = need("skimage.transform")
    rng = np.random.default_rng(3)
    for _ in range(20):
        src = rng.normal(size=(5, 2)) * 40 + 200
        dst = rng.normal(size=(5, 2)) * 20 + 60
        reference = transform.SimilarityTransform()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # estimate() is deprecated in favour of from_estimate()
            reference.estimate(src, dst)
        np.testing.assert_allclose(umeyama_similarity(src, dst), reference.params, rtol=1e-9, atol=1e-9)


def test_degenerate_or_wrong_landmarks_are_refused():
    with pytest.raises(ValueError, match="one point"):
        estimate_norm(np.full((5, 2), 3.0, np.float32))
    with pytest.raises(ValueError, match="5"):
        estimate_norm(np.zeros((4, 2), np.float32))
    with pytest.raises(ValueError, match="multiple of 112 or 128"):
        estimate_norm(KPS, image_size=100)


def test_larger_crop_sizes_follow_insightfaces_ratio_rule():
    np.testing.assert_allclose(estimate_norm(ARCFACE_TEMPLATE * 2, 224), [[1, 0, 0], [0, 1, 0]], atol=1e-5)
    shifted = ARCFACE_TEMPLATE + np.array([8.0, 0.0], np.float32)
    np.testing.assert_allclose(estimate_norm(shifted, 128), [[1, 0, 0], [0, 1, 0]], atol=1e-5)


def test_warp_with_identity_and_integer_shift():
    image = np.random.default_rng(0).random((40, 50, 3)).astype(np.float32)
    np.testing.assert_allclose(warp_affine(image, np.eye(3)[:2], 50, 40), image, atol=1e-6)
    shifted = warp_affine(image, np.array([[1.0, 0, -3], [0, 1, -2]]), 50, 40)
    np.testing.assert_allclose(shifted[:38, :47], image[2:, 3:], atol=1e-6)
    assert np.all(shifted[38:] == 0) and np.all(shifted[:, 47:] == 0)  # black outside the image


def test_warp_half_pixel_is_the_average_of_neighbours():
    image = np.arange(64 * 64 * 3, dtype=np.float32).reshape(64, 64, 3)
    out = warp_affine(image, np.array([[1.0, 0, -0.5], [0, 1, 0]]), 10, 10)
    np.testing.assert_allclose(out[5, 3], (image[5, 3] + image[5, 4]) / 2, rtol=1e-6)


def test_norm_crop_puts_the_landmarks_on_the_template():
    """Dots drawn at the landmarks must land at the template positions of the aligned crop."""
    forward = _similarity(2.3, -17.0, 140.0, 90.0)
    kps = _apply(forward, ARCFACE_TEMPLATE.astype(np.float64))
    ys, xs = np.mgrid[0:400, 0:400]
    image = np.zeros((400, 400, 3), np.float32)
    for channel, (x, y) in enumerate(kps[:3]):
        image[..., channel] += np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * 4.0**2))
    aligned = norm_crop(image, kps.astype(np.float32))
    assert aligned.shape == (112, 112, 3)
    for channel in range(3):
        peak = np.unravel_index(np.argmax(aligned[..., channel]), aligned.shape[:2])
        assert abs(peak[1] - ARCFACE_TEMPLATE[channel, 0]) <= 1.0
        assert abs(peak[0] - ARCFACE_TEMPLATE[channel, 1]) <= 1.0


def test_norm_crop_matches_opencv_warp_affine():
    cv2 = need("cv2")
    data = need("skimage.data")
    photo = data.astronaut()
    ours = np.rint(norm_crop(photo.astype(np.float32), KPS))
    theirs = cv2.warpAffine(photo, KPS_REFERENCE, (112, 112), borderValue=0.0).astype(np.float32)
    difference = np.abs(ours - theirs)
    # OpenCV quantises sub-pixel positions to 1/32 px and uses fixed-point weights: off by a level or two.
    assert difference.max() <= 3
    assert difference.mean() < 0.3
