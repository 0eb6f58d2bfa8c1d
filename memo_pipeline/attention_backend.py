"""Choose the attention kernels of the MEMO networks: PyTorch SDPA (default) or xformers.

Only the softmax attentions change kernel; the motion module's linear attention is plain matrix
algebra and has no backend. xformers is optional: asking for it without the package installed
(or without a CUDA device, which its kernels need) is a clear error, never a silent fallback.
diffusers is imported only when kernels are switched, so the node pack can list `BACKENDS` cheaply.
"""

from __future__ import annotations

import importlib.util

import torch

BACKENDS = ("sdpa", "xformers")


def xformers_available() -> bool:
    return importlib.util.find_spec("xformers") is not None and torch.cuda.is_available()


def use_attention_kernels(modules, backend: str = "sdpa") -> int:
    """Give every diffusers `Attention` below `modules` (a module, a list of them or a `MemoModels`)
    a fresh processor of `backend`'s kind; returns how many attention layers were switched.

    Not to be confused with diffusers' `ModelMixin.set_attention_backend` (newer diffusers
    releases), which picks a dispatcher backend for models written for it. MEMO's networks run
    attention through processors (the joint audio attention needs its own kind), so the processor
    is what this sets, with the processor classes every supported diffusers release has.
    """
    from diffusers.models import attention_processor as processors

    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend '{backend}'; choose one of {', '.join(BACKENDS)}")
    if backend == "xformers":
        if not xformers_available():
            raise RuntimeError("attention backend 'xformers' needs the xformers package and a CUDA GPU; use 'sdpa' instead")
        if not hasattr(processors, "XFormersJointAttnProcessor"):  # diffusers 0.31 has none for joint attention
            raise RuntimeError("attention backend 'xformers' needs a diffusers release with XFormersJointAttnProcessor "
                               "(for the audio attention); upgrade diffusers or use 'sdpa'")
        plain, joint_kind = processors.XFormersAttnProcessor, processors.XFormersJointAttnProcessor
    else:
        plain, joint_kind = processors.AttnProcessor2_0, processors.JointAttnProcessor2_0
    if hasattr(modules, "modules") and not isinstance(modules, torch.nn.Module):
        modules = list(modules.modules().values())
    if isinstance(modules, torch.nn.Module):
        modules = [modules]
    switched = 0
    for root in modules:
        for layer in root.modules():
            if not isinstance(layer, processors.Attention):
                continue
            layer.set_processor(joint_kind() if layer.added_kv_proj_dim is not None else plain())
            switched += 1
    return switched
