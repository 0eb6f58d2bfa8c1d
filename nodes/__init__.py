"""comfyui-memo nodes. Importable without ComfyUI: only comfy_adapter.py imports ComfyUI, and only
when ComfyUI is there (see host.py)."""

from __future__ import annotations

from . import audio_nodes, face_nodes, loaders, quality_nodes, sampler
from .host import get_host, in_comfyui

_MODULES = (loaders, audio_nodes, face_nodes, sampler, quality_nodes)

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
for _module in _MODULES:
    for _name, (_cls, _display) in _module.NODE_CLASSES.items():
        NODE_CLASS_MAPPINGS[_name] = _cls
        NODE_DISPLAY_NAME_MAPPINGS[_name] = _display


def register_with_comfyui() -> bool:
    """Register our model folders (models/memo, emotion2vec, ...) with ComfyUI; False outside ComfyUI."""
    if not in_comfyui():
        return False
    get_host().register_model_folders()
    return True


__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "register_with_comfyui"]
