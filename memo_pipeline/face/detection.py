"""Detected faces as plain data, plus the selection rules shared by every detector."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .errors import NoFaceError


@dataclass(frozen=True)
class Face:
    """One detected face in original-image pixel coordinates.

    ``box`` is (x1, y1, x2, y2); ``kps`` holds the five landmarks (left eye, right eye, nose,
    left mouth corner, right mouth corner, "left" meaning image left) when the detector gives
    them, which the identity embedding needs. ``score`` is the detector's confidence (for the
    Haar detector, its neighbour count).
    """

    box: tuple[float, float, float, float]
    score: float
    kps: tuple[tuple[float, float], ...] | None = None

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def area(self) -> float:
        return self.width * self.height

    def kps_array(self) -> np.ndarray | None:
        return None if self.kps is None else np.asarray(self.kps, dtype=np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {
            "box": [float(v) for v in self.box],
            "score": float(self.score),
            "kps": None if self.kps is None else [[float(x), float(y)] for x, y in self.kps],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Face":
        try:
            box = tuple(float(v) for v in data["box"])
            kps = data.get("kps")
            kps = None if kps is None else tuple((float(p[0]), float(p[1])) for p in kps)
            face = cls(box=box, score=float(data["score"]), kps=kps)  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ValueError(f"not a face record: {data!r} ({exc})") from exc
        if len(face.box) != 4 or (face.kps is not None and len(face.kps) != 5):
            raise ValueError(f"not a face record (box needs 4 numbers, kps 5 points): {data!r}")
        return face


def faces_from_arrays(boxes: np.ndarray, scores: np.ndarray, kps: np.ndarray | None) -> list[Face]:
    """Build Face records from detector arrays ``[N, 4]``, ``[N]`` and optional ``[N, 5, 2]``."""
    faces = []
    for i in range(len(boxes)):
        points = None if kps is None else tuple((float(x), float(y)) for x, y in kps[i])
        faces.append(Face(box=tuple(float(v) for v in boxes[i]), score=float(scores[i]), kps=points))
    return faces


def sort_by_area(faces: Sequence[Face]) -> list[Face]:
    """Largest first, the order MEMO's preprocessing picks from (ties keep detector order)."""
    return sorted(faces, key=lambda face: face.area, reverse=True)


def select_face(faces: Sequence[Face], index: int = 0, name: str = "image") -> Face:
    """The ``index``-th largest face; a clear error naming the image if there is none."""
    if not faces:
        raise NoFaceError(f"no face found in {name}")
    ordered = sort_by_area(faces)
    if not 0 <= index < len(ordered):
        raise NoFaceError(f"face index {index} requested but {name} has {len(ordered)} face(s) (indices start at 0)")
    return ordered[index]


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression; returns kept indices, best score first.

    Areas use the inclusive-pixel convention ``(x2 - x1 + 1) * (y2 - y1 + 1)`` of insightface's
    SCRFD post-processing, so overlaps (and thus which boxes survive) match it; a box is dropped
    when its overlap with a kept box is strictly above the threshold. Equal scores are ordered
    as insightface orders them: rows in float32, sorted by descending score with numpy's default
    ``argsort`` reversed, then sorted once more the same way inside its NMS.
    """
    rows = np.hstack([np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                      np.asarray(scores, dtype=np.float32).reshape(-1, 1)])
    first = rows[:, 4].argsort()[::-1]
    rows = rows[first]
    x1, y1, x2, y2, ranked = rows.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = ranked.argsort()[::-1]
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        inter_w = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
        inter_h = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1)
        inter = inter_w * inter_h
        overlap = inter / (areas[best] + areas[rest] - inter)
        order = rest[overlap <= iou_threshold]
    return first[np.asarray(keep, dtype=np.int64)].astype(np.int64)
