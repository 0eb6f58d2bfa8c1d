"""comfyui-memo nodes, importable without ComfyUI.

The topic modules (loaders, audio_nodes, face_nodes, sampler, quality_nodes) do the work in plain
classes that know nothing of ComfyUI; `IMPLEMENTATIONS` maps each node id to the class and method
that run it. How ComfyUI sees the nodes — their V3 schemas and the extension that registers them —
is declared in `comfy_nodes.py`, the one module that imports `comfy_api` (only ComfyUI's entry in
the pack's `__init__.py`, and tests that have ComfyUI, import it).
"""

from __future__ import annotations

from typing import Callable

from . import audio_nodes, face_nodes, loaders, quality_nodes, sampler

IMPLEMENTATIONS: dict[str, tuple[type, str]] = {}
for _module in (loaders, audio_nodes, face_nodes, sampler, quality_nodes):
    IMPLEMENTATIONS.update(_module.IMPLEMENTATIONS)


def implementation(node_id: str) -> Callable:
    """The function that runs node `node_id` (its inputs as keyword arguments, V1-style outputs)."""
    cls, method = IMPLEMENTATIONS[node_id]
    return getattr(cls(), method)


__all__ = ["IMPLEMENTATIONS", "implementation"]
