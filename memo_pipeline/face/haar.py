"""OpenCV Haar-cascade face detector: boxes only, weights shipped inside opencv-python.

It needs no model download, which makes it the fallback when MEMO's SCRFD file is absent and
lets CI run real detection on a real photograph. It finds frontal faces reasonably well but
gives no landmarks, so faces it finds can be cropped but not embedded.

OpenCV is optional (not a requirement of this package) and imported only when this detector is
asked for; any build works (opencv-python, -headless, -contrib) from 4.0 on. OpenCV 5 moved the
cascade classifier out of the main package into the contrib one (`opencv-contrib-python`, same
`cv2.CascadeClassifier` / `detectMultiScale2` API) and ships the cascade XML files with neither,
so with 5.x the file is also looked for where OpenCV data packages install it (`CASCADE_DIRS`).
`haar_unavailable_reason()` says, without raising, whether the detector can be built here.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from .detection import Face
from .errors import FaceModelError
from .image import as_rgb_image
from ..image_ops import resize_like_cv2_linear

DEFAULT_CASCADE = "haarcascade_frontalface_default.xml"
# Where system OpenCV data packages put the cascades (e.g. Debian/Ubuntu `opencv-data`), searched
# after the `cv2.data.haarcascades` folder of the Python wheels.
CASCADE_DIRS = tuple(f"{prefix}/share/{name}/haarcascades" for prefix in ("/usr", "/usr/local")
                     for name in ("opencv5", "opencv4", "opencv"))
INSTALL_HINT = ("pip install opencv-python-headless (OpenCV 4.x); with OpenCV 5 use opencv-contrib-python-headless "
                "and a haarcascade_frontalface_default.xml from OpenCV's data")
# Cascades scan every position at every scale; a bounded working size keeps huge photos fast.
WORK_SIDE = 1024


def _import_cv2():
    """(cv2 module, None) or (None, why it cannot run the Haar detector)."""
    try:
        import cv2
    except ImportError as exc:  # also a broken binary wheel (missing shared libraries)
        return None, f"OpenCV (cv2) cannot be imported ({exc}); {INSTALL_HINT}"
    version = str(getattr(cv2, "__version__", "0"))
    try:
        major = int(version.split(".")[0])
    except ValueError:
        major = 0
    if major < 4:
        return None, f"OpenCV {version} is too old (4.0 or newer needed); {INSTALL_HINT}"
    if not hasattr(cv2, "CascadeClassifier"):
        return None, (f"OpenCV {version} has no CascadeClassifier (OpenCV 5 moved it to the contrib package); "
                      f"{INSTALL_HINT}")
    return cv2, None


def default_cascade_path(cv2=None) -> str | None:
    """The frontal-face cascade shipped with the installed cv2, else one from `CASCADE_DIRS`; None if absent."""
    folders = []
    data = getattr(cv2, "data", None) if cv2 is not None else None
    if data is not None and getattr(data, "haarcascades", None):
        folders.append(data.haarcascades)
    folders.extend(CASCADE_DIRS)
    for folder in folders:
        candidate = os.path.join(folder, DEFAULT_CASCADE)
        if os.path.isfile(candidate):
            return candidate
    return None


@functools.lru_cache(maxsize=1)
def haar_unavailable_reason() -> str | None:
    """None when `HaarFaceDetector()` can be built here (cv2 >= 4 with CascadeClassifier and the default
    cascade loads), else the reason in one sentence. Imports OpenCV once; the answer is cached
    (`haar_unavailable_reason.cache_clear()` after installing OpenCV in a running process)."""
    try:
        HaarFaceDetector()
    except FaceModelError as exc:
        return str(exc)
    return None


class HaarFaceDetector:
    """Frontal-face Haar cascade; ``score`` is the number of merged raw detections."""

    def __init__(
        self,
        cascade_path: str | os.PathLike | None = None,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_face_fraction: float = 0.05,
    ):
        cv2, problem = _import_cv2()
        if problem:
            raise FaceModelError(f"the Haar face detector is unavailable: {problem}; or use the SCRFD model instead")
        if cascade_path is None:
            cascade_path = default_cascade_path(cv2)
            if cascade_path is None:
                raise FaceModelError(
                    f"the Haar face detector is unavailable: OpenCV {cv2.__version__} ships no {DEFAULT_CASCADE} "
                    f"(looked in cv2.data and {', '.join(CASCADE_DIRS)}); {INSTALL_HINT}")
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
