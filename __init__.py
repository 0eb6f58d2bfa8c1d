"""comfyui-memo: MEMO talking-video nodes for ComfyUI (one portrait + one audio track -> video).

ComfyUI (0.8.0 and later) imports this file as a package and calls `comfy_entrypoint`, its V3
extension entry: that makes ComfyUI's host (nodes/comfy_adapter.py) and returns the extension
whose node classes (nodes/comfy_nodes.py, V3 schemas) run inside it. The module deliberately has
no NODE_CLASS_MAPPINGS: ComfyUI would take that older V1 route instead.

Outside ComfyUI (pytest, scripts) the package imports without ComfyUI: the nodes' work is in
`nodes.IMPLEMENTATIONS` and runs on a standalone host (nodes/host.py). Executed as a loose file
(runpy, a tool that execs it outside a package) it defines only the entry, which then refuses.
"""

import sys

# web/template_cards.js: title and description on the template browser's cards (ComfyUI reads
# WEB_DIRECTORY before it looks for either entry)
WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    """ComfyUI's V3 entry: the MEMO extension, bound to a ComfyUI host made for it."""
    if not (__package__ and __package__ in sys.modules):
        raise ImportError("comfyui-memo must be imported as a package (a folder under ComfyUI's custom_nodes)")
    from .nodes.comfy_adapter import ComfyHost
    from .nodes.comfy_nodes import MemoExtension

    return MemoExtension(ComfyHost())


__all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
