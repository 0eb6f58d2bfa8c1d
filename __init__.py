"""comfyui-memo: MEMO talking-video nodes for ComfyUI (one portrait + one audio track -> video).

ComfyUI imports this file as a package and reads NODE_CLASS_MAPPINGS / NODE_DISPLAY_NAME_MAPPINGS.
Outside ComfyUI (pytest, scripts) the package imports too: the nodes then run on a standalone host
(see nodes/host.py). When this file is executed without a package (e.g. a tool importing it as a
loose module), there is nothing to register and the mappings stay empty.
"""

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}

if __package__:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, register_with_comfyui

    register_with_comfyui()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
