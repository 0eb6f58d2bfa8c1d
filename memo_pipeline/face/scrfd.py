"""SCRFD face detector (insightface's ``scrfd_10g_bnkps.onnx`` layout) run with onnxruntime.

The model sees a letterboxed ``det_size`` canvas (image scaled to fit, anchored top-left, rest
black), normalised as ``(pixel - 127.5) / 128`` in RGB order. It returns nine tensors: for strides
8, 16 and 32 the scores ``[K, 1]``, box distances ``[K, 4]`` and keypoint offsets ``[K, 10]``, all
in stride units, with two anchors per feature-map cell. Decoding turns them back into image
coordinates; greedy NMS at IoU 0.4 removes duplicates. The numbers follow insightface's
published SCRFD post-processing so that the same image gives the same faces as MEMO's own
preprocessing.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from .detection import Face, faces_from_arrays, nms
from .errors import FaceModelError
from .image import as_rgb_image
from .onnx_session import open_session
from .. import image_ops

STRIDES = (8, 16, 32)
ANCHORS_PER_CELL = 2
INPUT_MEAN = 127.5
INPUT_STD = 128.0


def letterbox(rgb: np.ndarray, det_width: int, det_height: int) -> tuple[np.ndarray, float]:
    """Scale ``rgb`` ([0, 1] floats) to fit the canvas, top-left aligned, as 0..255 pixel values.

    Returns the canvas ``[det_height, det_width, 3]`` and the factor from image to canvas
    coordinates. The sizes are truncated like the reference implementation; the picture is
    resized as 8-bit pixels, with `cv2.resize` where OpenCV is present (as insightface does).
    """
    height, width = rgb.shape[:2]
    if height / width > det_height / det_width:
        new_height = det_height
        new_width = max(1, int(new_height / (height / width)))
    else:
        new_width = det_width
        new_height = max(1, int(new_width * (height / width)))
    resized = image_ops.resize_8bit_linear(image_ops.to_8bit(rgb), new_height, new_width)
    canvas = np.zeros((det_height, det_width, 3), dtype=np.float32)
    canvas[:new_height, :new_width] = resized
    return canvas, new_height / height


def anchor_centers(grid_height: int, grid_width: int, stride: int, per_cell: int = ANCHORS_PER_CELL) -> np.ndarray:
    """Anchor points ``[grid_height * grid_width * per_cell, 2]`` as (x, y) pixels.

    Cells are walked row by row; each cell's anchors are consecutive, matching the flattened
    layout of the model outputs.
    """
    ys, xs = np.meshgrid(np.arange(grid_height), np.arange(grid_width), indexing="ij")
    points = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float32) * stride
    return np.repeat(points, per_cell, axis=0)


def decode_outputs(
    outputs: Sequence[np.ndarray], input_height: int, input_width: int, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes ``[N, 4]``, scores ``[N]`` and keypoints ``[N, 5, 2]`` (canvas pixels) above ``threshold``.

    ``outputs`` are the nine model outputs in the model's order: scores for each stride, then
    box distances for each stride, then keypoint offsets for each stride.
    """
    levels = len(STRIDES)
    boxes, scores, kps = [], [], []
    for level, stride in enumerate(STRIDES):
        count = (input_height // stride) * (input_width // stride) * ANCHORS_PER_CELL
        level_scores = _rows(outputs[level], count, 1, f"stride {stride} scores")[:, 0]
        distances = _rows(outputs[level + levels], count, 4, f"stride {stride} boxes") * stride
        offsets = _rows(outputs[level + 2 * levels], count, 10, f"stride {stride} keypoints") * stride
        centers = anchor_centers(input_height // stride, input_width // stride, stride)

        hit = level_scores >= threshold
        c = centers[hit]
        d = distances[hit]
        boxes.append(np.stack([c[:, 0] - d[:, 0], c[:, 1] - d[:, 1], c[:, 0] + d[:, 2], c[:, 1] + d[:, 3]], axis=-1))
        kps.append(c[:, None, :] + offsets[hit].reshape(-1, 5, 2))
        scores.append(level_scores[hit])
    return np.concatenate(boxes), np.concatenate(scores), np.concatenate(kps)


def _rows(array: np.ndarray, count: int, width: int, what: str) -> np.ndarray:
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 3 and array.shape[0] == 1:  # some exports keep the batch axis
        array = array[0]
    if array.shape != (count, width):
        raise FaceModelError(f"SCRFD {what}: expected shape ({count}, {width}), model gave {array.shape}")
    return array


class ScrfdDetector:
    """Face detector with five landmarks, for ``scrfd_10g_bnkps.onnx`` (MEMO's ``misc/face_analysis``)."""

    def __init__(
        self,
        model_path: str | os.PathLike,
        providers: Sequence[str] | None = None,
        det_size: int | tuple[int, int] = 640,
        det_thresh: float = 0.5,
        nms_thresh: float = 0.4,
    ):
        self.model_path = os.fspath(model_path)
        self.session = open_session(self.model_path, "SCRFD face detector", providers)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].shape[1] not in (3, "3"):
            raise FaceModelError(f"{self.model_path}: expected one [1, 3, H, W] image input, found {[i.shape for i in inputs]}")
        if len(outputs) != 3 * len(STRIDES):
            raise FaceModelError(
                f"{self.model_path}: expected 9 outputs (scores, boxes and 5 keypoints for strides 8/16/32, "
                f"like scrfd_10g_bnkps.onnx), found {len(outputs)}"
            )
        self.input_name = inputs[0].name
        self.output_names = [o.name for o in outputs]
        fixed = inputs[0].shape[2:4]
        if all(isinstance(v, int) for v in fixed):
            width, height = fixed[1], fixed[0]  # a model with a fixed input size wins, as in insightface
        else:
            width, height = (det_size, det_size) if isinstance(det_size, int) else det_size
        if width % STRIDES[-1] or height % STRIDES[-1] or width <= 0 or height <= 0:
            raise ValueError(f"det_size must be positive multiples of {STRIDES[-1]}, got {width}x{height}")
        self.det_width, self.det_height = int(width), int(height)
        self.det_thresh = float(det_thresh)
        self.nms_thresh = float(nms_thresh)

    def detect(self, image, name: str = "image") -> list[Face]:
        """All faces above the score threshold, best score first, in image pixel coordinates."""
        rgb = as_rgb_image(image, name)
        canvas, det_scale = letterbox(rgb, self.det_width, self.det_height)
        blob = ((canvas - INPUT_MEAN) / INPUT_STD).transpose(2, 0, 1)[None].astype(np.float32)
        outputs = self.session.run(self.output_names, {self.input_name: blob})
        boxes, scores, kps = decode_outputs(outputs, self.det_height, self.det_width, self.det_thresh)
        boxes, kps = boxes / det_scale, kps / det_scale
        keep = nms(boxes, scores, self.nms_thresh)
        return faces_from_arrays(boxes[keep], scores[keep], kps[keep])
