"""comfyui-memo: MEMO talking-video nodes for ComfyUI (one portrait + one audio track -> video).

ComfyUI imports this file as a package and reads NODE_CLASS_MAPPINGS / NODE_DISPLAY_NAME_MAPPINGS.
Outside ComfyUI (pytest, scripts) the package imports too: the nodes then run on a standalone host
(see nodes/host.py). When this file is executed outside a registered package (runpy, a tool that
execs it as a loose file), relative imports cannot work: the mappings then stay empty instead of
failing.
"""

import sys

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
WEB_DIRECTORY = "./web"  # web/template_cards.js: title and description on the template browser's cards

if __package__ and __package__ in sys.modules:  # imported as a package, as ComfyUI (and the tests) do
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, register_with_comfyui

    register_with_comfyui()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
