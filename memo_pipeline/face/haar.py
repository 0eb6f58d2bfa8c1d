"""OpenCV Haar-cascade face detector: boxes only, weights shipped inside opencv-python.

It needs no model download, which makes it the fallback when MEMO's SCRFD file is absent and
lets CI run real detection on a real photograph. It finds frontal faces reasonably well but
gives no landmarks, so faces it finds can be cropped but not embedded. OpenCV is imported only
when this detector is built; OpenCV 5 removed the cascade classifier, so 4.x is required.
"""

from __future__ import annotations

import os

import numpy as np

from .detection import Face
from .errors import FaceModelError
from .image import as_rgb_image
from ..image_ops import resize_like_cv2_linear

DEFAULT_CASCADE = "haarcascade_frontalface_default.xml"
# Cascades scan every position at every scale; a bounded working size keeps huge photos fast.
WORK_SIDE = 1024


class HaarFaceDetector:
    """Frontal-face Haar cascade; ``score`` is the number of merged raw detections."""

    def __init__(
        self,
        cascade_path: str | os.PathLike | None = None,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_face_fraction: float = 0.05,
    ):
        try:
            import cv2
        except ImportError as exc:
            raise FaceModelError(
                "the Haar face detector needs OpenCV 4.x (pip install 'opencv-python-headless<5'); "
                "or pass the SCRFD model path instead"
            ) from exc
        if not hasattr(cv2, "CascadeClassifier"):
            raise FaceModelError(f"OpenCV {cv2.__version__} has no CascadeClassifier (removed in 5.x); install opencv 4.x")
        if cascade_path is None:
            cascade_path = os.path.join(getattr(cv2, "data").haarcascades, DEFAULT_CASCADE)
        self.cascade_path = os.fspath(cascade_path)
        if not os.path.isfile(self.cascade_path):
            raise FaceModelError(f"Haar cascade file not found: {self.cascade_path}")
        self._cv2 = cv2
        self.classifier = cv2.CascadeClassifier(self.cascade_path)
        if self.classifier.empty():
            raise FaceModelError(f"cannot load Haar cascade {self.cascade_path}")
        self.scale_factor = float(scale_factor)
        self.min_neighbors = int(min_neighbors)
        self.min_face_fraction = float(min_face_fraction)

    def detect(self, image, name: str = "image") -> list[Face]:
        """Faces as boxes (no keypoints), in image pixel coordinates, best score first."""
        rgb = as_rgb_image(image, name)
        height, width = rgb.shape[:2]
        shrink = min(1.0, WORK_SIDE / max(height, width))
        if shrink < 1.0:
            rgb = resize_like_cv2_linear(rgb, max(1, round(height * shrink)), max(1, round(width * shrink)))
        luma = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        gray = np.clip(np.rint(luma * 255.0), 0, 255).astype(np.uint8)
        min_side = max(20, int(self.min_face_fraction * min(gray.shape)))
        rects, neighbours = self.classifier.detectMultiScale2(
            gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(min_side, min_side)
        )
        faces = []
        for (x, y, w, h), count in zip(np.reshape(rects, (-1, 4)), np.reshape(neighbours, (-1,))):
            box = (x / shrink, y / shrink, (x + w) / shrink, (y + h) / shrink)
            faces.append(Face(box=tuple(float(v) for v in box), score=float(count)))
        return sorted(faces, key=lambda f: f.score, reverse=True)
