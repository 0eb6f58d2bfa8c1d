"""Opt-in `torch.compile` of the diffusion net, the network that runs at every denoising step.

The net is compiled in place (`forward` is replaced by the compiled one), so `MemoModels` and every
caller stay as they are. Shapes are fixed for a run (`dynamic=False`); the three memory modes of a
step ("reset" for the first step of the first clip, "append" for the first step of a later clip,
"read" otherwise) give three compiled variants in the first two clips, and no clip after that
compiles again (tested with `tests/test_compile.py`). Off by default: the first clips pay the
compile time, which only pays back on long videos or repeated runs in one process. A compiler that cannot run here
(no Triton on an NVIDIA GPU, no C++ compiler on a CPU) fails the first step with a `CompileFailed`
that says how to run without compiling.
"""

from __future__ import annotations

import torch


class CompileFailed(RuntimeError):
    """torch.compile could not build the diffusion net on this machine."""


def _explaining_failures(compiled):
    def forward(*args, **kwargs):
        try:
            return compiled(*args, **kwargs)
        except torch._dynamo.exc.BackendCompilerFailed as exc:  # dynamo is loaded once anything was compiled
            raise CompileFailed(f"torch.compile could not compile the diffusion net ({exc}); it needs Triton on "
                                "NVIDIA GPUs and a C++ compiler on CPUs: run without compiling (node option "
                                "torch_compile off, or no --compile)") from exc

    return forward


def compile_diffusion_net(models, backend: str = "inductor", mode: str | None = None) -> None:
    """Compile `models.diffusion_net.forward` in place; calling it twice keeps the first compile."""
    net = models.diffusion_net
    if getattr(net, "_memo_compiled", False):
        return
    net.forward = _explaining_failures(torch.compile(net.forward, backend=backend, mode=mode, dynamic=False))
    net._memo_compiled = True


def uncompile_diffusion_net(models) -> None:
    """Undo `compile_diffusion_net`: the net runs its plain `forward` again (no-op when not compiled)."""
    net = models.diffusion_net
    if getattr(net, "_memo_compiled", False):
        del net.forward  # the instance attribute set by compile_diffusion_net; the class's forward shows again
        net._memo_compiled = False


def set_compiled(models, compiled: bool) -> None:
    """Compile or uncompile the diffusion net, so a cached model follows each run's own option."""
    (compile_diffusion_net if compiled else uncompile_diffusion_net)(models)
