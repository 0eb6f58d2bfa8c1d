"""ArcFace identity embedding (insightface's ``glintr100.onnx`` layout) run with onnxruntime.

The face is aligned to the 112x112 ArcFace template from its five landmarks, rounded to 8-bit
levels (the reference warps uint8 images), normalised as ``(pixel - 127.5) / 127.5`` in RGB
order and fed as ``[1, 3, 112, 112]``. MEMO conditions on the raw network output (insightface's
``face.embedding``, not the L2-normalised ``normed_embedding``), so that is what is returned, as
float32 ``[1, 512]``.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from ..image_ops import to_8bit
from .alignment import norm_crop_8bit
from .detection import Face
from .errors import FaceModelError, NoFaceError
from .image import as_rgb_image
from .onnx_session import open_session

EMBEDDING_SIZE = 512


class ArcFaceEmbedder:
    """512-d identity vector of an aligned face; mean/std default to glintr100's 127.5/127.5."""

    def __init__(
        self,
        model_path: str | os.PathLike,
        providers: Sequence[str] | None = None,
        input_mean: float = 127.5,
        input_std: float = 127.5,
    ):
        self.model_path = os.fspath(model_path)
        self.session = open_session(self.model_path, "ArcFace recognition", providers)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        shape = inputs[0].shape if len(inputs) == 1 else None
        if shape is None or len(shape) != 4 or shape[1] not in (3, "3"):
            raise FaceModelError(f"{self.model_path}: expected one [N, 3, S, S] face input, found {[i.shape for i in inputs]}")
        size = shape[2] if isinstance(shape[2], int) else 112
        if shape[3] != size and isinstance(shape[3], int):
            raise FaceModelError(f"{self.model_path}: expected a square face input, found {shape}")
        if len(outputs) != 1:
            raise FaceModelError(f"{self.model_path}: expected one embedding output, found {len(outputs)}")
        declared = outputs[0].shape[-1] if outputs[0].shape else None
        if isinstance(declared, int) and declared != EMBEDDING_SIZE:
            raise FaceModelError(
                f"{self.model_path}: gives {declared}-d embeddings, MEMO's image projection needs {EMBEDDING_SIZE}"
            )
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name
        self.input_size = int(size)
        self.input_mean = float(input_mean)
        self.input_std = float(input_std)

    def aligned_face(self, image, face: Face, name: str = "image") -> np.ndarray:
        """The aligned crop the network sees, ``[S, S, 3]`` RGB with 0..255 integer values."""
        kps = face.kps_array()
        if kps is None:
            raise NoFaceError(
                f"{name}: the face has no landmarks (the Haar detector gives boxes only); "
                "the identity embedding needs the SCRFD detector"
            )
        rgb = as_rgb_image(image, name)
        try:
            return norm_crop_8bit(to_8bit(rgb), kps, self.input_size)
        except ValueError as exc:
            raise NoFaceError(f"{name}: unusable face landmarks {kps.tolist()}: {exc}") from exc

    def embed(self, image, face: Face, name: str = "image") -> np.ndarray:
        """float32 ``[1, 512]`` identity embedding of ``face`` in ``image``."""
        aligned = self.aligned_face(image, face, name)
        blob = ((aligned - self.input_mean) / self.input_std).transpose(2, 0, 1)[None].astype(np.float32)
        output = np.asarray(self.session.run([self.output_name], {self.input_name: blob})[0], dtype=np.float32)
        if output.size != EMBEDDING_SIZE:
            raise FaceModelError(f"{self.model_path}: produced {output.shape}, expected {EMBEDDING_SIZE} values")
        if not np.isfinite(output).all():
            raise FaceModelError(f"{self.model_path}: produced a non-finite embedding for {name}")
        return output.reshape(1, EMBEDDING_SIZE)
