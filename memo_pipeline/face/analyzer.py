"""One object that finds faces and computes MEMO's identity embedding, like MEMO's preprocessing.

MEMO ships its face models under ``misc/face_analysis/models/`` of its checkpoint:
``scrfd_10g_bnkps.onnx`` (detector, run at 640x640) and ``glintr100.onnx`` (recognition). With
those, ``identity`` gives the embedding of the largest face, as MEMO does. Without a detector
file the OpenCV Haar cascade is used, which can crop but not embed (it has no landmarks).
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Sequence

import numpy as np

from .arcface import EMBEDDING_SIZE, ArcFaceEmbedder
from .detection import Face, select_face, sort_by_area
from .errors import FaceModelError
from .haar import HaarFaceDetector
from .image import as_rgb_image
from .scrfd import ScrfdDetector

logger = logging.getLogger(__name__)

DETECTOR_FILE = "scrfd_10g_bnkps.onnx"
RECOGNIZER_FILE = "glintr100.onnx"
# Where the files may sit below a user-given folder: MEMO's checkpoint layout and shorter ones.
_MODEL_SUBDIRS = ("", "models", "face_analysis/models", "misc/face_analysis/models")


def find_face_models(root: str | os.PathLike) -> tuple[str | None, str | None]:
    """Paths of MEMO's detector and recognizer files below ``root`` (None where absent)."""
    root = os.fspath(root)

    def find(filename: str) -> str | None:
        for subdir in _MODEL_SUBDIRS:
            candidate = os.path.join(root, subdir, filename)
            if os.path.isfile(candidate):
                return candidate
        return None

    return find(DETECTOR_FILE), find(RECOGNIZER_FILE)


class FaceAnalyzer:
    """Face detection (SCRFD, or Haar when no detector file is given) plus ArcFace embedding."""

    def __init__(
        self,
        detector_path: str | os.PathLike | None = None,
        recognizer_path: str | os.PathLike | None = None,
        providers: Sequence[str] | None = None,
        det_size: int | tuple[int, int] = 640,
        det_thresh: float = 0.5,
        nms_thresh: float = 0.4,
    ):
        if detector_path is not None:
            self.detector = ScrfdDetector(detector_path, providers, det_size, det_thresh, nms_thresh)
        else:
            self.detector = HaarFaceDetector()
        self.recognizer = ArcFaceEmbedder(recognizer_path, providers) if recognizer_path is not None else None

    @classmethod
    def from_model_dir(cls, root: str | os.PathLike, providers: Sequence[str] | None = None, **kwargs) -> "FaceAnalyzer":
        """Load MEMO's two face models from ``root`` (a checkpoint folder or the models folder itself)."""
        detector, recognizer = find_face_models(root)
        missing = [name for name, path in ((DETECTOR_FILE, detector), (RECOGNIZER_FILE, recognizer)) if path is None]
        if missing:
            places = ", ".join(os.path.join(os.fspath(root), d) or "." for d in _MODEL_SUBDIRS)
            raise FaceModelError(f"{' and '.join(missing)} not found; looked in {places}")
        return cls(detector, recognizer, providers, **kwargs)

    def detect(self, image, name: str = "image") -> list[Face]:
        """All faces, largest first."""
        return sort_by_area(self.detector.detect(image, name))

    def select(self, image, index: int = 0, name: str = "image") -> Face:
        """The ``index``-th largest face (0 = largest, MEMO's choice); NoFaceError if absent."""
        return select_face(self.detector.detect(image, name), index, name)

    def embed(self, image, face: Face, name: str = "image") -> np.ndarray:
        """float32 ``[1, 512]`` identity embedding of ``face``."""
        if self.recognizer is None:
            raise FaceModelError(f"no recognition model loaded; pass recognizer_path (MEMO's {RECOGNIZER_FILE})")
        return self.recognizer.embed(image, face, name)

    def identity(
        self, image, index: int = 0, allow_missing_face: bool = False, name: str = "image"
    ) -> tuple[np.ndarray, Face | None]:
        """Embedding of the chosen face and the face itself.

        With no face in the image this raises NoFaceError, unless ``allow_missing_face`` is set:
        then it warns and returns MEMO's original fallback, a zero embedding, with ``None``. An
        ``index`` beyond the faces found is always an error.
        """
        rgb = as_rgb_image(image, name)
        faces = self.detector.detect(rgb, name)
        if not faces and allow_missing_face:
            message = f"no face found in {name}; using a zero identity embedding (MEMO's original fallback), identity will not be kept"
            logger.warning(message)
            warnings.warn(message, stacklevel=2)
            return np.zeros((1, EMBEDDING_SIZE), dtype=np.float32), None
        face = select_face(faces, index, name)
        return self.embed(rgb, face, name), face
