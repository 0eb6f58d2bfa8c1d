"""Square portrait crop around a face, and the plain-data record needed to paste results back.

MEMO generates square videos of a head-and-shoulders portrait. The crop side is ``scale`` times
the larger side of the detector box (2.5 by default: the SCRFD box spans roughly brows to chin,
so this leaves room for hair above and shoulders below), and the centre moves down by
``shift_y`` box heights so that more of the shoulders than of the background above the head is
kept. The crop is kept inside the image when it fits; where it cannot (the crop is larger than
the image) the missing part is filled by repeating the edge pixels. The square is then resized
to the generation resolution.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from .detection import Face
from .errors import FaceImageError
from .image import as_rgb_image
from ..image_ops import resize_frames
from ..settings import check_resolution

DEFAULT_SCALE = 2.5
DEFAULT_SHIFT_Y = 0.25
DEFAULT_RESOLUTION = 512


@dataclass(frozen=True)
class CropInfo:
    """Where a crop came from: the square ``[x0, x0 + size) x [y0, y0 + size)`` in original pixels.

    The square may reach past the image edges (those pixels were edge-replicated). JSON-able via
    ``to_dict`` / ``from_dict`` so that it can travel between nodes.
    """

    x0: int
    y0: int
    size: int
    image_width: int
    image_height: int
    resolution: int
    scale: float
    face_box: tuple[float, float, float, float] | None = None

    def __post_init__(self) -> None:
        if self.size <= 0 or self.resolution <= 0 or self.image_width <= 0 or self.image_height <= 0:
            raise ValueError(f"crop info needs positive sizes: {self}")
        if not self.visible_box():
            raise ValueError(f"crop square does not overlap the {self.image_width}x{self.image_height} image: {self}")

    def visible_box(self) -> tuple[int, int, int, int] | None:
        """The part of the square inside the image as (x1, y1, x2, y2), or None if there is none."""
        x1, y1 = max(self.x0, 0), max(self.y0, 0)
        x2, y2 = min(self.x0 + self.size, self.image_width), min(self.y0 + self.size, self.image_height)
        return (x1, y1, x2, y2) if x1 < x2 and y1 < y2 else None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["face_box"] = None if self.face_box is None else [float(v) for v in self.face_box]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CropInfo":
        try:
            box = data.get("face_box")
            return cls(
                x0=int(data["x0"]),
                y0=int(data["y0"]),
                size=int(data["size"]),
                image_width=int(data["image_width"]),
                image_height=int(data["image_height"]),
                resolution=int(data["resolution"]),
                scale=float(data["scale"]),
                face_box=None if box is None else tuple(float(v) for v in box),  # type: ignore[arg-type]
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a crop info record: {data!r} ({exc})") from exc


def face_crop_info(
    face: Face,
    image_width: int,
    image_height: int,
    scale: float = DEFAULT_SCALE,
    resolution: int = DEFAULT_RESOLUTION,
    shift_y: float = DEFAULT_SHIFT_Y,
    keep_inside: bool = True,
) -> CropInfo:
    """The crop square for ``face`` in an image of the given size (no pixels touched)."""
    if not scale > 0:
        raise ValueError(f"crop scale must be positive, got {scale}")
    if face.width <= 0 or face.height <= 0:
        raise ValueError(f"face box has no area: {face.box}")
    size = max(1, int(round(max(face.width, face.height) * scale)))
    centre_x = (face.box[0] + face.box[2]) / 2
    centre_y = (face.box[1] + face.box[3]) / 2 + shift_y * face.height
    x0, y0 = int(round(centre_x - size / 2)), int(round(centre_y - size / 2))
    if keep_inside:
        if size <= image_width:
            x0 = min(max(x0, 0), image_width - size)
        if size <= image_height:
            y0 = min(max(y0, 0), image_height - size)
    return CropInfo(
        x0=x0,
        y0=y0,
        size=size,
        image_width=int(image_width),
        image_height=int(image_height),
        resolution=check_resolution(resolution),
        scale=float(scale),
        face_box=tuple(float(v) for v in face.box),  # type: ignore[arg-type]
    )


def whole_image_crop_info(image_width: int, image_height: int, resolution: int = DEFAULT_RESOLUTION) -> CropInfo:
    """A square holding the whole image, centred, edges repeated: the fallback when there is no face.

    Unlike MEMO's own preprocessing, which squashes the picture to a square, this keeps the
    aspect ratio and can still be pasted back.
    """
    size = max(image_width, image_height)
    return CropInfo(
        x0=(image_width - size) // 2,
        y0=(image_height - size) // 2,
        size=size,
        image_width=int(image_width),
        image_height=int(image_height),
        resolution=check_resolution(resolution),
        scale=1.0,
    )


def crop_with_info(image, info: CropInfo, name: str = "image") -> np.ndarray:
    """Cut ``info``'s square out of ``image`` (edges repeated) as float32 ``[R, R, 3]`` in [0, 1]."""
    rgb = as_rgb_image(image, name)
    if rgb.shape[:2] != (info.image_height, info.image_width):
        raise FaceImageError(
            f"{name}: is {rgb.shape[1]}x{rgb.shape[0]} but the crop info was made for "
            f"{info.image_width}x{info.image_height}"
        )
    return _cut(rgb, info)


def _cut(rgb: np.ndarray, info: CropInfo) -> np.ndarray:
    rows = np.clip(np.arange(info.y0, info.y0 + info.size), 0, info.image_height - 1)
    cols = np.clip(np.arange(info.x0, info.x0 + info.size), 0, info.image_width - 1)
    square = torch.from_numpy(rgb[np.ix_(rows, cols)])[None]
    return resize_frames(square, info.resolution, info.resolution)[0].contiguous().numpy()


def crop_face(
    image,
    face: Face,
    scale: float = DEFAULT_SCALE,
    resolution: int = DEFAULT_RESOLUTION,
    shift_y: float = DEFAULT_SHIFT_Y,
    keep_inside: bool = True,
    name: str = "image",
) -> tuple[np.ndarray, CropInfo]:
    """Square crop around ``face`` resized to ``resolution``, and the info to paste it back."""
    rgb = as_rgb_image(image, name)
    info = face_crop_info(face, rgb.shape[1], rgb.shape[0], scale, resolution, shift_y, keep_inside)
    return _cut(rgb, info), info
