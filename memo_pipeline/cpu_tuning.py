"""CPU tuning: faster ways to compute the same networks on a CPU, switched on by whoever owns the run.

Nothing in `memo_pipeline/models/` knows about this module. The MEMO networks are plain diffusers /
PyTorch modules; `apply_cpu_tuning` gives some of their submodules an instance-level `forward`
(the class and its parameters stay as they are, so state-dict keys and checkpoints do not change)
and `remove_cpu_tuning` deletes it again, in the spirit of diffusers' `enable_*` methods. The
command line and the bench scripts switch it on for CPU runs; the ComfyUI nodes behind an option.
Two forwards are swapped:

- **Phase upsampling.** Every UNet level on the way up (diffusion net, reference net, VAE decoder)
  doubles its feature map with nearest-neighbour interpolation, then applies a 3x3 convolution.
  On the doubled image each 3x3 window covers only 2x2 distinct input pixels, so each of the four
  output phases (even/odd row, even/odd column) is a 2x2 convolution of the *input* with the
  kernel taps summed accordingly: 16 multiply-adds per input pixel and channel pair instead of 36,
  the same sums grouped differently (equal within rounding). Used on CPU tensors for exact
  doubling and at least `MIN_POSITIONS` input positions; otherwise diffusers' own forward runs.
- **oneDNN linear layers.** PyTorch sends a float32 `F.linear` on the CPU to MKL's sgemm and only
  bf16/fp16 ones to oneDNN (the library it already uses for every convolution). For the linear
  layers of the diffusion and reference nets oneDNN's matmul is faster on the MEMO shapes; the two
  libraries differ only in the order in which they add up products. Used for float32 CPU inputs
  without autograd, where PyTorch has oneDNN and the user has not switched it off
  (`torch.backends.mkldnn`), and not inside `torch.compile`, whose CPU backend picks its own
  kernels.

`tuned_allocator` is the third part: a context for the owner of the process (never entered by the
library) in which glibc keeps freed blocks for reuse; see its docstring for what it restores.
`bench/cpu_tuning_constants.py` measures each part against the untuned computation and re-derives
the constants below; the golden fixtures pass with the tuning on and off
(`python -m memo_pipeline.parity tests/fixtures/golden --cpu-tuning both`).
"""

from __future__ import annotations

import ctypes
import os
import threading
import types
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from .heap import libc_function, release_freed_memory
from .layers import CastingLayer, layer_weights

MIN_POSITIONS = 256
"""Fewest input positions (batch x height x width) that take the phase path: the four folded
kernels are summed at every call (keeping them would cost memory), which only pays on enough
positions. Re-derive with `python bench/cpu_tuning_constants.py upsample` (it times both paths at
the MEMO upsampler shapes on both sides of this limit)."""


# ---- phase upsampling ----------------------------------------------------------------------------

def _fold(weight: torch.Tensor, dim: int, phase: int) -> torch.Tensor:
    """Sum the 3 taps of `dim` into the 2 that one phase of the doubled image sees."""
    first, middle, last = weight.unbind(dim)
    return torch.stack((first, middle + last) if phase == 0 else (first + middle, last), dim)


def nearest_upsample_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`conv2d(interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1)` for a
    3x3 `weight`: output pixel `(2i+a, 2j+b)` reads input rows `i-1, i` (a=0) or `i, i+1` (a=1)
    and likewise for columns, so phase `(a, b)` is a 2x2 convolution of `x` padded on that side."""
    n, _, h, w = x.shape
    out = x.new_empty(n, weight.shape[0], h, 2, w, 2)
    for a in (0, 1):
        rows = _fold(weight, 2, a)
        for b in (0, 1):
            padded = F.pad(x, (1 - b, b, 1 - a, a))  # (left, right, top, bottom)
            out[:, :, :, a, :, b] = F.conv2d(padded, _fold(rows, 3, b), bias)
    return out.view(n, weight.shape[0], 2 * h, 2 * w)


def _phase_upsample_forward(self, hidden_states: torch.Tensor, output_size=None, *args, **kwargs) -> torch.Tensor:
    """An `Upsample2D` forward that computes nearest 2x + 3x3 convolution by output phase."""
    h, w = hidden_states.shape[-2:]
    doubled = output_size is None or tuple(output_size) == (2 * h, 2 * w)
    small = hidden_states.shape[0] * h * w < MIN_POSITIONS
    weights = None
    if not (args or kwargs or not doubled or small or hidden_states.device.type != "cpu"):
        weights = layer_weights(self.conv, hidden_states)
    if weights is None:
        return type(self).forward(self, hidden_states, output_size, *args, **kwargs)
    return nearest_upsample_conv(hidden_states, *weights)


def _phase_eligible(module: nn.Module) -> bool:
    """A plain diffusers `Upsample2D`: nearest interpolation, then a 3x3 stride-1 convolution."""
    from diffusers.models.upsampling import Upsample2D

    conv = getattr(module, "conv", None)
    return (type(module) is Upsample2D and module.use_conv and not module.use_conv_transpose and module.interpolate
            and module.norm is None and module.name == "conv" and isinstance(conv, nn.Conv2d)
            and conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding == (1, 1)
            and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros")


# ---- oneDNN linear layers ------------------------------------------------------------------------

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


def _routable(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    if _LINEAR_POINTWISE is None or not torch.backends.mkldnn.enabled or _compiling():
        return False
    tensors = (x, weight) if bias is None else (x, weight, bias)
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False  # the oneDNN op has no backward
    return x.dim() >= 2 and x.numel() > 0 and weight.dim() == 2 and weight.is_contiguous()


def _onednn_linear_forward(self, input: torch.Tensor) -> torch.Tensor:
    """An `nn.Linear` forward that uses oneDNN's matmul where `_routable` allows, else its own.
    The weights are the ones the layer's class would use (`layers.layer_weights`: cast from their
    storage dtype for casting layers)."""
    weights = layer_weights(self, input)
    if weights is not None and _routable(input, *weights):
        return _LINEAR_POINTWISE(input, *weights, "none", [], "")
    return type(self).forward(self, input)


def _linear_tunable(layer: nn.Module) -> bool:
    """A linear layer whose forward only multiplies by its (possibly cast) weights: a plain
    `nn.Linear`, a `layers.CastingLayers.Linear`, or a comfy.ops one (`layer_weights` sends those
    to their own forward whenever they cast or patch)."""
    return isinstance(layer, nn.Linear) and (
        type(layer) is nn.Linear or isinstance(layer, CastingLayer) or hasattr(type(layer), "comfy_cast_weights"))


def _onednn_networks():
    """The networks whose linear layers are routed: the two UNets, where the time goes."""
    from .models.diffusion_net import DiffusionNet
    from .models.reference_net import ReferenceNet

    return DiffusionNet, ReferenceNet


# ---- apply / remove ------------------------------------------------------------------------------

_TUNED_FORWARDS = (_phase_upsample_forward, _onednn_linear_forward)


def _networks(obj) -> list[nn.Module]:
    """The `nn.Module`s behind one argument of `apply_cpu_tuning` (see there)."""
    from .loading import MemoModels
    from .pipeline import MemoPipeline
    from .vae import DiffusersVAE

    if isinstance(obj, nn.Module):
        return [obj]
    if isinstance(obj, MemoModels):
        return list(obj.modules().values())
    if isinstance(obj, DiffusersVAE):
        return [obj.vae]
    if isinstance(obj, MemoPipeline):
        return _networks(obj.models) + (_networks(obj.vae) if isinstance(obj.vae, DiffusersVAE) else [])
    raise TypeError(f"CPU tuning applies to torch modules, MemoModels, DiffusersVAE or MemoPipeline, "
                    f"not {type(obj).__name__}")


def _tuned_forward(module: nn.Module):
    """The tuned forward this module got from `apply_cpu_tuning`, or None."""
    forward = module.__dict__.get("forward")
    if isinstance(forward, types.MethodType) and forward.__func__ in _TUNED_FORWARDS:
        return forward
    return None


def _targets(root: nn.Module) -> list[tuple[nn.Module, object]]:
    """(submodule, tuned forward function) for everything in `root` that tuning changes."""
    found = [(m, _phase_upsample_forward) for m in root.modules() if _phase_eligible(m)]
    seen = set()
    for net in (m for m in root.modules() if isinstance(m, _onednn_networks())):
        for layer in net.modules():
            if _linear_tunable(layer) and id(layer) not in seen:
                seen.add(id(layer))
                found.append((layer, _onednn_linear_forward))
    return found


def apply_cpu_tuning(*modules) -> None:
    """Switch the CPU tuning on for the given networks, in place (idempotent, undone by `remove_cpu_tuning`).

    Each argument is an `nn.Module`, a `MemoModels` (all its networks), a `DiffusersVAE` (its
    `AutoencoderKL`) or a `MemoPipeline` (its models and VAE). Inside them, every plain diffusers
    `Upsample2D` (nearest 2x + 3x3 convolution) computes by output phase, and every `nn.Linear`
    of a `DiffusionNet` or `ReferenceNet` uses oneDNN's matmul; each only where its conditions
    hold (module docstring), so the call is harmless on GPU modules. Only an instance-level
    `forward` is added: parameters, buffers and state-dict keys stay the same objects and names.
    A submodule whose `forward` was already replaced by someone else is left alone."""
    for obj in modules:
        for root in _networks(obj):
            for module, function in _targets(root):
                if "forward" not in module.__dict__:
                    module.forward = types.MethodType(function, module)


def remove_cpu_tuning(*modules) -> None:
    """Undo `apply_cpu_tuning` on the given networks (same arguments): the modules run their class's
    own forward again, bit for bit as if never tuned. No-op for modules that are not tuned."""
    for obj in modules:
        for root in _networks(obj):
            for module in root.modules():
                if _tuned_forward(module) is not None:
                    del module.forward


def cpu_tuning_applied(module) -> bool:
    """Whether any network in `module` (same kinds of argument as `apply_cpu_tuning`) is tuned."""
    return any(_tuned_forward(m) is not None for root in _networks(module) for m in root.modules())


def set_cpu_tuning(enabled: bool, *modules) -> None:
    """Apply or remove the tuning, so a cached model follows each run's own option."""
    (apply_cpu_tuning if enabled else remove_cpu_tuning)(*modules)


# ---- the C heap ----------------------------------------------------------------------------------

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4

TUNED_MMAP_MAX = 0
"""While tuned, no block is mapped on its own: a denoising step frees and re-allocates temporaries
of tens of megabytes per layer (the 320-wide GEGLU feed-forward alone makes 84 MB and two 42 MB),
and glibc would unmap each on free and fault its pages in again on the next allocation. Re-derive
with `python bench/cpu_tuning_constants.py heap` (one diffusion-net step untuned and tuned: time
and page faults)."""
TUNED_TRIM_THRESHOLD = 1 << 30
"""While tuned, the heap top is only trimmed when a gigabyte lies free there (same bench command)."""
GLIBC_MMAP_MAX = 65536
"""glibc's default M_MMAP_MAX (malloc/malloc.c: DEFAULT_MMAP_MAX)."""
GLIBC_MMAP_THRESHOLD = 128 * 1024
"""glibc's default M_MMAP_THRESHOLD and M_TRIM_THRESHOLD (DEFAULT_MMAP_THRESHOLD, DEFAULT_TRIM_THRESHOLD)."""
GLIBC_MMAP_THRESHOLD_MAX = 32 << 20
"""glibc's largest adaptive mmap threshold on 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX)."""

_MALLOPT = libc_function("mallopt", ctypes.c_int, [ctypes.c_int, ctypes.c_int])
_MALLOC = libc_function("malloc", ctypes.c_void_p, [ctypes.c_size_t])
_FREE = libc_function("free", None, [ctypes.c_void_p])
_LOCK = threading.Lock()
_in_force: dict | None = None  # the settings this module last wrote (None: glibc's own, never touched)


def _startup_environment() -> dict[str, str]:
    """The environment the process started with (what glibc read), or today's where /proc is absent."""
    try:
        with open("/proc/self/environ", "rb") as f:
            pairs = [item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item]
        return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}
    except OSError:
        return dict(os.environ)


_ENV_NAMES = {"mmap_max": ("MALLOC_MMAP_MAX_", "glibc.malloc.mmap_max"),
              "trim_threshold": ("MALLOC_TRIM_THRESHOLD_", "glibc.malloc.trim_threshold"),
              "mmap_threshold": ("MALLOC_MMAP_THRESHOLD_", "glibc.malloc.mmap_threshold"),
              "top_pad": ("MALLOC_TOP_PAD_", "glibc.malloc.top_pad")}


def _settings_from_environment() -> dict | None:
    """The heap settings the environment fixed at start-up ({} when it fixed none), None when unreadable."""
    env = _startup_environment()
    tunables = dict(item.split("=", 1) for item in env.get("GLIBC_TUNABLES", "").split(":") if "=" in item)
    fixed = {}
    for name, (variable, tunable) in _ENV_NAMES.items():
        text = tunables.get(tunable, env.get(variable))
        if text is None:
            continue
        try:
            fixed[name] = int(text, 0)
        except ValueError:
            return None
    return fixed


def _settings_found() -> dict | None:
    """The M_MMAP_MAX and M_TRIM_THRESHOLD in force now, or None when they cannot be known.

    glibc has no getter for them. Inside another `tuned_allocator` they are the ones it wrote. In
    a process whose environment fixed heap settings (MALLOC_*_ variables or GLIBC_TUNABLES) they
    are the environment's, else glibc's defaults. Otherwise glibc's adaptive rule is in charge:
    each freed mapped block of up to 32 MiB raises the mmap threshold to its size and the trim
    threshold to twice that; the rule only ever goes up, and any `mallopt` of these settings
    switches it off for good. So one block just under 32 MiB is mapped and freed here, which
    moves the rule to its final position (mmap threshold 32 MiB - 1 page, trim threshold twice
    that), the one a generation's large temporaries lead to anyway; from there the rule can never
    change anything again, so writing those values back later behaves exactly like the rule."""
    if _in_force is not None:
        return dict(_in_force)
    fixed = _settings_from_environment()
    if fixed is None:
        return None
    if fixed:  # glibc's adaptive rule is off: the environment's values, glibc's defaults for the rest
        return {"mmap_max": fixed.get("mmap_max", GLIBC_MMAP_MAX),
                "trim_threshold": fixed.get("trim_threshold", GLIBC_MMAP_THRESHOLD)}
    page = os.sysconf("SC_PAGE_SIZE")
    final = GLIBC_MMAP_THRESHOLD_MAX - page  # the largest mapped chunk size the rule adopts
    block = _MALLOC(final - 4 * ctypes.sizeof(ctypes.c_size_t))  # a chunk of exactly `final` bytes
    if not block:
        return None
    _FREE(block)
    return {"mmap_max": GLIBC_MMAP_MAX, "trim_threshold": 2 * final}


def _write(settings: dict) -> None:
    global _in_force
    _MALLOPT(M_MMAP_MAX, settings["mmap_max"])
    _MALLOPT(M_TRIM_THRESHOLD, settings["trim_threshold"])
    _in_force = dict(settings)


TUNED_SETTINGS = {"mmap_max": TUNED_MMAP_MAX, "trim_threshold": TUNED_TRIM_THRESHOLD}


def allocator_settings() -> dict | None:
    """The M_MMAP_MAX / M_TRIM_THRESHOLD in force now as `{"mmap_max": n, "trim_threshold": bytes}`,
    as written by `tuned_allocator` (the tuned ones inside it, those it wrote back after it); None
    before any `tuned_allocator` ran here (glibc's own settings, which cannot be read)."""
    return None if _in_force is None else dict(_in_force)


@contextmanager
def tuned_allocator():
    """Keep freed heap blocks for reuse while the block runs (glibc only; elsewhere a no-op).

    For the owner of the process (command line, benchmarks) around a whole run; the library never
    enters it, so nothing of it stays in force across a generator's `yield` in someone else's
    process. Inside, no block is mapped on its own (M_MMAP_MAX 0) and the heap is trimmed only
    above 1 GiB (M_TRIM_THRESHOLD), so the large temporaries of a denoising step reuse the same
    pages. On leaving, exactly the two settings it found are written back (how they are known:
    `_settings_found`; where they cannot be known, it changes nothing) and free heap memory is
    returned to the system (`malloc_trim`, which changes no setting). Nested blocks restore the
    enclosing block's settings. Not thread-safe against other code calling `mallopt`."""
    if _MALLOPT is None or _MALLOC is None or _FREE is None:
        yield
        return
    with _LOCK:
        found = _settings_found()
        if found is not None:
            _write(TUNED_SETTINGS)
    if found is None:
        yield
        return
    try:
        yield
    finally:
        with _LOCK:
            _write(found)
            release_freed_memory()
