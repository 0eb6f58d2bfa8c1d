"""Identity consistency: ArcFace cosine similarity of each frame's face to the reference face.

Faces are found and aligned exactly as for generation (``FaceAnalyzer``: SCRFD, five-point
alignment to the ArcFace template, ``glintr100.onnx``); the largest face of every frame is
compared with the largest face of the reference picture. The cosine uses the raw embeddings
(the cosine does not depend on their length). Frames where the detector finds no face are
counted and kept as gaps (None / NaN), never dropped from the timeline.
"""

from __future__ import annotations

import math

import numpy as np

from ..face.errors import FaceModelError


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    denominator = float(np.linalg.norm(a) * np.linalg.norm(b))
    if denominator <= 0.0:
        return math.nan
    return float(a @ b) / denominator


def reference_embedding(analyzer, image, name: str = "reference image") -> tuple[np.ndarray, object]:
    """Embedding and face of the reference's largest face (NoFaceError when there is none)."""
    if getattr(analyzer, "recognizer", None) is None:
        raise FaceModelError("the identity score needs the ArcFace model (glintr100.onnx) and the SCRFD detector "
                             "(scrfd_10g_bnkps.onnx); the face model given has no identity network")
    embedding, face = analyzer.identity(image, name=name)
    return np.asarray(embedding, dtype=np.float64).reshape(-1), face


def linear_drift(times_s: np.ndarray, values: np.ndarray) -> dict:
    """Least-squares line through the scored frames: slope per second / minute and the fitted ends."""
    times_s = np.asarray(times_s, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(values)
    t, y = times_s[ok], values[ok]
    if t.size < 2 or np.ptp(t) <= 0:
        return {"slope_per_s": None, "slope_per_min": None, "fit_start": None, "fit_end": None, "change": None}
    slope, intercept = np.polyfit(t, y, 1)
    start, end = intercept + slope * t[0], intercept + slope * t[-1]
    return {"slope_per_s": round(float(slope), 6), "slope_per_min": round(float(slope) * 60, 5),
            "fit_start": round(float(start), 4), "fit_end": round(float(end), 4), "change": round(float(end - start), 4)}
