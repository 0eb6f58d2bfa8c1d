"""ComfyUI-independent helpers behind nodes/comfy_adapter.py.

Kept apart from the adapter so that path handling and preview conversion can be
unit-tested without a ComfyUI checkout; nothing here imports ComfyUI.
"""
from __future__ import annotations

import os
from typing import Iterable, Sequence

# A MEMO checkpoint is a folder, recognised by this file inside it.
MEMO_MARKER = os.path.join("diffusion_net", "config.json")

# How deep below a models root a checkpoint folder may sit ("org/name" is depth 2).
MAX_MODEL_DIR_DEPTH = 2


def find_model_dirs(roots: Iterable[str], marker: str, max_depth: int = MAX_MODEL_DIR_DEPTH) -> list[str]:
    """Names (relative, '/'-separated) of folders under any root that contain `marker`.

    Model folders are listed instead of files because MEMO, wav2vec2 and emotion
    models ship as multi-file folders that ComfyUI's file lists cannot show.
    """
    found: set[str] = set()
    for root in roots:
        if not os.path.isdir(root):
            continue
        _walk_for_marker(root, "", marker, max_depth, found)
    return sorted(found, key=str.lower)


def _walk_for_marker(root: str, rel: str, marker: str, depth_left: int, found: set[str]) -> None:
    if depth_left <= 0:
        return
    try:
        entries = sorted(os.scandir(os.path.join(root, rel)), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=True):
            continue
        child = f"{rel}/{entry.name}" if rel else entry.name
        if os.path.isfile(os.path.join(root, child, marker)):
            found.add(child)
        else:
            _walk_for_marker(root, child, marker, depth_left - 1, found)


def safe_join(root: str, name: str) -> str:
    """Join a user-chosen relative name onto `root`, refusing anything that escapes it.

    Node inputs arrive from HTTP clients, so '../' or absolute names must not reach
    the filesystem outside the configured model folders.
    """
    if not name or not name.strip():
        raise ValueError("empty model name")
    if os.path.isabs(name) or name.startswith(("/", "\\")):
        raise ValueError(f"model name must be relative to a models folder, got '{name}'")
    root_abs = os.path.abspath(root)
    path = os.path.abspath(os.path.join(root_abs, name))
    if os.path.commonpath([root_abs, path]) != root_abs:
        raise ValueError(f"model name '{name}' points outside its models folder")
    return path


def resolve_in_roots(roots: Sequence[str], name: str, kind: str = "any") -> str:
    """First existing `root/name` across `roots`; kind is 'file', 'dir' or 'any'.

    Raises FileNotFoundError naming every folder searched, so a user can see where
    ComfyUI looked.
    """
    if kind not in ("file", "dir", "any"):
        raise ValueError(f"kind must be 'file', 'dir' or 'any', got '{kind}'")
    checks = {"file": os.path.isfile, "dir": os.path.isdir, "any": os.path.exists}[kind]
    for root in roots:
        path = safe_join(root, name)
        if checks(path):
            return path
    where = ", ".join(roots) if roots else "(no folders registered)"
    what = {"file": "file", "dir": "folder", "any": "file or folder"}[kind]
    raise FileNotFoundError(f"{what} '{name}' not found in: {where}")


def to_preview_pil(image, max_side: int | None = None):
    """Turn a frame (PIL image, [H,W,C] or [1,H,W,C] tensor/array in 0..1 or uint8) into RGB PIL.

    ComfyUI's progress previews must be PIL images; our pipeline produces tensors.
    """
    from PIL import Image
    import numpy as np

    if isinstance(image, Image.Image):
        pil = image.convert("RGB")
    else:
        if hasattr(image, "detach"):
            image = image.detach().float().cpu().numpy()
        arr = np.asarray(image)
        if arr.ndim == 4:
            if arr.shape[0] != 1:
                raise ValueError(f"preview takes one frame, got a batch of {arr.shape[0]}")
            arr = arr[0]
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
            raise ValueError(f"preview frame must be [H,W,C] with C in 1/3/4, got shape {arr.shape}")
        if arr.dtype != np.uint8:
            arr = (np.clip(arr.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        if arr.shape[-1] == 1:
            arr = np.repeat(arr, 3, axis=-1)
        pil = Image.fromarray(arr[..., :3], "RGB")
    if max_side and max(pil.size) > max_side:
        pil = pil.copy()
        pil.thumbnail((max_side, max_side))
    return pil
