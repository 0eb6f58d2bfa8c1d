"""Opening ONNX face models with onnxruntime, with errors that name the file."""

from __future__ import annotations

import os
from typing import Sequence

from .errors import FaceModelError


def default_providers() -> list[str]:
    """CUDA when this onnxruntime build has it, always with the CPU as fallback."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available] or ["CPUExecutionProvider"]


def open_session(path: str | os.PathLike, role: str, providers: Sequence[str] | None = None):
    """An ``onnxruntime.InferenceSession`` for ``path``; ``role`` names the model in errors."""
    import onnxruntime

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FaceModelError(f"{role} model not found: {path}")
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    try:
        return onnxruntime.InferenceSession(path, sess_options=options, providers=list(providers or default_providers()))
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
        raise FaceModelError(f"cannot load {role} model {path}: {exc}") from exc
