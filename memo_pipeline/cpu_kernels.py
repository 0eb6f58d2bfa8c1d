"""Linear layers through oneDNN's matrix product on CPUs, in float32.

PyTorch sends a float32 `F.linear` on the CPU to MKL's sgemm, and only bf16/fp16 ones to oneDNN
(the library it already uses for every convolution). On the 2-core AMD EPYC CI machine MKL ran
the MEMO networks' linear shapes at 120-195 GFLOP/s and oneDNN's matmul at 195-210; a full-size
diffusion-net step at 128 px took 15.8-16.0 s with MKL and 14.8-15.0 s with oneDNN. The two
libraries differ only in the order in which they add up products (the golden fixtures pass either
way), so `onednn_linear` routes the linear layers of the diffusion and reference nets to oneDNN
while they run. It changes nothing on GPUs, in other dtypes, where PyTorch has no oneDNN
(`torch.backends.mkldnn`) or where the user switched it off, and inside `torch.compile`, whose CPU
backend chooses its own kernels.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


def _onednn_matmul():
    """oneDNN's linear kernel (an internal op of PyTorch's CPU compiler), or None where absent."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return None


_LINEAR_POINTWISE = _onednn_matmul()


def _compiling() -> bool:
    check = getattr(torch.compiler, "is_compiling", None) or torch._dynamo.is_compiling
    return bool(check())


def _fits(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    tensors = (x, weight) if bias is None else (x, weight, bias)
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False  # the oneDNN op has no backward
    return x.dim() >= 2 and x.numel() > 0 and weight.dim() == 2 and weight.is_contiguous()


class _OneDNNLinear(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            named = dict(zip(("input", "weight", "bias"), args), **kwargs)
            x, weight, bias = named["input"], named["weight"], named.get("bias")
            if _fits(x, weight, bias):
                return _LINEAR_POINTWISE(x, weight, bias, "none", [], "")
        return func(*args, **kwargs)


def onednn_linear_active(sample: torch.Tensor) -> bool:
    """Whether a network run on `sample` would route its linear layers to oneDNN."""
    return (_LINEAR_POINTWISE is not None and torch.backends.mkldnn.enabled and sample.device.type == "cpu"
            and sample.dtype == torch.float32 and not _compiling())


def onednn_linear(forward):
    """Decorate a network's `forward(self, sample, ...)`: while it runs on a float32 CPU `sample`,
    its `F.linear` calls use oneDNN's matmul."""

    @functools.wraps(forward)
    def run(self, sample, *args, **kwargs):
        if not onednn_linear_active(sample):
            return forward(self, sample, *args, **kwargs)
        with _OneDNNLinear():
            return forward(self, sample, *args, **kwargs)

    return run
