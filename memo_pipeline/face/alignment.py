"""Five-point face alignment for ArcFace, following insightface's ``norm_crop``.

The recognition network was trained on 112x112 crops in which the eyes, nose tip and mouth
corners sit at fixed template positions. ``estimate_norm`` finds the similarity transform
(rotation, uniform scale, translation) that best maps the detected landmarks onto that template
in the least-squares sense (Umeyama's closed form, what scikit-image's ``SimilarityTransform``
computes for insightface); ``warp_affine`` then samples the crop bilinearly with black outside
the image, as OpenCV's ``warpAffine`` does.
"""

from __future__ import annotations

import numpy as np

# Landmark positions of the ArcFace training crops at 112x112: left eye, right eye, nose tip,
# left mouth corner, right mouth corner (x, y), insightface's published template.
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
)


def umeyama_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """3x3 homogeneous similarity ``T`` minimising ``sum |T(src_i) - dst_i|^2`` (Umeyama 1991).

    With centred point sets, the rotation comes from the SVD of their cross-covariance (its last
    axis flipped if needed so that no reflection sneaks in), the scale from the singular values
    over the source variance, the translation from the means.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[0] < 2:
        raise ValueError(f"need two matching [N, D] point sets with N >= 2, got {src.shape} and {dst.shape}")
    count, dim = src.shape
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_centred, dst_centred = src - src_mean, dst - dst_mean
    src_variance = (src_centred**2).sum() / count
    if src_variance <= 1e-12:
        raise ValueError("landmarks are all at one point; no alignment is defined")

    covariance = dst_centred.T @ src_centred / count
    u, singular, vt = np.linalg.svd(covariance)
    signs = np.ones(dim)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        signs[-1] = -1.0
    rotation = u @ np.diag(signs) @ vt
    scale = float(singular @ signs) / src_variance

    transform = np.eye(dim + 1)
    transform[:dim, :dim] = scale * rotation
    transform[:dim, dim] = dst_mean - scale * rotation @ src_mean
    return transform


def estimate_norm(kps: np.ndarray, image_size: int = 112) -> np.ndarray:
    """2x3 matrix mapping image pixels to the aligned ``image_size`` crop.

    Sizes that are multiples of 112 scale the template; multiples of 128 scale it and shift it
    right by 8/128 of the size, insightface's convention for 128-pixel models.
    """
    kps = np.asarray(kps, dtype=np.float32)
    if kps.shape != (5, 2):
        raise ValueError(f"ArcFace alignment needs 5 (x, y) landmarks, got shape {kps.shape}")
    if image_size % 112 == 0:
        template = ARCFACE_TEMPLATE * (image_size / 112.0)
    elif image_size % 128 == 0:
        ratio = image_size / 128.0
        template = ARCFACE_TEMPLATE * ratio
        template[:, 0] += 8.0 * ratio
    else:
        raise ValueError(f"alignment size must be a multiple of 112 or 128, got {image_size}")
    return umeyama_similarity(kps, template)[:2]


def warp_affine(image: np.ndarray, matrix: np.ndarray, width: int, height: int) -> np.ndarray:
    """Output pixel (x, y) takes the bilinear sample of ``image`` at ``matrix^-1 (x, y)``.

    Pixel centres sit at integer coordinates; samples outside the image count as 0.
    """
    full = np.vstack([np.asarray(matrix, dtype=np.float64), [0.0, 0.0, 1.0]])
    inverse = np.linalg.inv(full)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    src_x = inverse[0, 0] * xs + inverse[0, 1] * ys + inverse[0, 2]
    src_y = inverse[1, 0] * xs + inverse[1, 1] * ys + inverse[1, 2]
    x0, y0 = np.floor(src_x).astype(np.int64), np.floor(src_y).astype(np.int64)
    fx, fy = (src_x - x0)[..., None], (src_y - y0)[..., None]

    rows, cols = image.shape[:2]

    def tap(y: np.ndarray, x: np.ndarray) -> np.ndarray:
        inside = (x >= 0) & (x < cols) & (y >= 0) & (y < rows)
        values = image[np.clip(y, 0, rows - 1), np.clip(x, 0, cols - 1)]
        return values * inside[..., None]

    top = tap(y0, x0) * (1 - fx) + tap(y0, x0 + 1) * fx
    bottom = tap(y0 + 1, x0) * (1 - fx) + tap(y0 + 1, x0 + 1) * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)


def norm_crop(image: np.ndarray, kps: np.ndarray, image_size: int = 112) -> np.ndarray:
    """The aligned ``[image_size, image_size, C]`` face crop of ``image`` (same value range)."""
    return warp_affine(image, estimate_norm(kps, image_size), image_size, image_size)


def norm_crop_8bit(pixels: np.ndarray, kps: np.ndarray, image_size: int = 112) -> np.ndarray:
    """The aligned crop of a uint8 picture as float32 0..255 integers: `cv2.warpAffine` (black
    border), exactly as insightface's ``norm_crop``, where OpenCV is present; else the float warp, rounded."""
    from .. import image_ops

    matrix = estimate_norm(kps, image_size)
    cv2 = image_ops.opencv()
    if cv2 is not None:
        return cv2.warpAffine(np.ascontiguousarray(pixels), matrix, (image_size, image_size), borderValue=0.0).astype(np.float32)
    return np.clip(np.rint(warp_affine(pixels.astype(np.float32), matrix, image_size, image_size)), 0, 255)
