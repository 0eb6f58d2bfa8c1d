"""The one module of comfyui-memo that imports ComfyUI: `ComfyHost`, the nodes' host inside ComfyUI.

Every other module stays importable (and testable) without ComfyUI. Only the pack's ComfyUI
entry (`comfy_entrypoint` in `__init__.py`) imports this module, makes one `ComfyHost` and hands
it to the node classes (nodes/comfy_nodes.py); the dependency goes one way: this module imports
`host`, never the reverse. Written against ComfyUI 0.8.0.
"""
from __future__ import annotations

import os
from typing import Iterable, Sequence

try:
    import folder_paths
    import latent_preview
    import comfy.latent_formats as _latent_formats
    import comfy.model_management as _mm
    import comfy.model_patcher as _patcher
    import comfy.ops as _ops
    import comfy.utils as _cutils
    from comfy.cli_args import LatentPreviewMethod as _PreviewMethod, args as _comfy_args
except ImportError as _exc:  # pragma: no cover - exercised by tests outside ComfyUI
    raise ImportError(
        "comfyui-memo: nodes/comfy_adapter.py only works inside a running ComfyUI "
        f"(could not import '{_exc.name}'). Install the pack into ComfyUI's "
        "custom_nodes folder, or put a ComfyUI checkout on sys.path."
    ) from _exc

import torch

from . import comfy_helpers as _helpers
from .host import Host, HostError

# name -> (sub-folder of models/, extensions ComfyUI lists for it; empty = folders only)
MODEL_FOLDERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "memo": ("memo", ()),                       # MEMO checkpoint folders (diffusion_net/, reference_net/, ...)
    "audio_encoders": ("audio_encoders", ()),   # core folder in 0.8.0; also holds wav2vec2 HF folders
    "emotion2vec": ("emotion2vec", ()),         # emotion2vec_plus_large folders
    "insightface": ("insightface", (".onnx",)), # face detector / landmark ONNX files
    "vocal_separator": ("vocal_separator", (".onnx",)),
}


def _previews_enabled() -> bool:
    """Whether progress previews are wanted (`--preview-method`, or the prompt's own override)."""
    return _comfy_args.preview_method != _PreviewMethod.NoPreviews


class ComfyProgress:
    """A node's progress bar in ComfyUI's UI, with previews as `--preview-method` asks.

    Latent previews go through ComfyUI's own previewer (`latent_preview.get_previewer` for the SD1.5
    latent format: latent2rgb, or TAESD when models/vae_approx holds taesd_decoder), made on the
    first latent preview of the bar; decoded frames are shown as they are. With the preview method
    `none` no preview is sent at all.
    """

    def __init__(self, total: int):
        self._bar = _cutils.ProgressBar(int(total))
        self.total = int(total)
        self.current = 0
        self._previewer = None
        self._previewer_made = False

    def set(self, value: int, preview_image=None) -> None:
        """Move to `value`; `preview_image` is a PIL image or an `[H, W, C]` frame in 0..1."""
        preview = None
        if preview_image is not None and _previews_enabled():
            preview = ("JPEG", _helpers.to_preview_pil(preview_image), _comfy_args.preview_size)
        self._update(value, preview)

    def set_latent(self, value: int, latent: torch.Tensor) -> None:
        """Move to `value` with a preview of `latent`, a scaled SD1.5 latent `(4, h, w)`."""
        if not self._previewer_made:
            self._previewer = latent_preview.get_previewer(_mm.get_torch_device(), _latent_formats.SD15())
            self._previewer_made = True
        preview = None
        if self._previewer is not None:
            x0 = latent.detach()[None].to(_mm.get_torch_device(), torch.float32)
            preview = self._previewer.decode_latent_to_preview_image("JPEG", x0)
        self._update(value, preview)

    def _update(self, value: int, preview) -> None:
        self.current = min(int(value), self.total)
        self._bar.update_absolute(self.current, self.total, preview)


class _Holder(torch.nn.Module):
    """ModelPatcher writes `.device` on its model; diffusers/transformers models expose a
    read-only `.device` property, so our modules ride inside this plain holder.

    `manual_cast_dtype` is what ComfyUI's core models call the compute dtype when their weights are
    stored in another one (None when they are not): ModelPatcher reserves room for one cast copy of
    a streamed weight with it."""

    def __init__(self, module: torch.nn.Module, device: torch.device, manual_cast_dtype: torch.dtype | None = None):
        super().__init__()
        self.wrapped = module
        self.device = device
        self.manual_cast_dtype = manual_cast_dtype


def _manual_cast_dtype(module: torch.nn.Module) -> torch.dtype | None:
    """The compute dtype of a network whose layer weights are stored in a smaller dtype: its widest
    floating parameter dtype (the normalisations keep the compute dtype, see
    memo_pipeline.layers.KEPT_IN_COMPUTE_DTYPE); None when all parameters share one dtype."""
    dtypes = {p.dtype for p in module.parameters() if p.is_floating_point()}
    if len(dtypes) < 2:
        return None
    return max(dtypes, key=lambda d: torch.finfo(d).bits)


def _streams(module: torch.nn.Module) -> bool:
    """Whether `module` is built with comfy.ops layers (the MEMO networks inside ComfyUI)."""
    return any(hasattr(m, "comfy_cast_weights") for m in module.modules())


def place_unmanaged_tensors(model: torch.nn.Module, device: torch.device) -> int:
    """Move to `device` the tensors that ModelPatcher's load leaves where they were unless it loads
    the whole model: the buffers of modules without parameters (it moves only the modules it lists),
    and, in a partial (lowvram) load, the parameters of modules without comfy.ops' cast (it loads
    them only while they fit its budget, and they cannot stream).
    In MEMO these are the emotion embedding tables and the temporal position tables: kilobytes to
    a few megabytes, outside ComfyUI's count. Returns how many tensors moved."""
    moved = 0
    for module in model.modules():
        streams = hasattr(module, "comfy_cast_weights")
        for name, param in module._parameters.items():
            if param is not None and not streams and param.device != device:
                # a new Parameter, as ComfyUI's own set_attr_param does (`.data =` refuses some devices)
                module._parameters[name] = torch.nn.Parameter(param.data.to(device), requires_grad=param.requires_grad)
                moved += 1
        for name, buffer in module._buffers.items():
            if buffer is not None and buffer.device != device:
                module._buffers[name] = buffer.to(device)
                moved += 1
    return moved


_PATCHER_ATTR = "_comfyui_memo_patcher"


class ComfyHost(Host):
    """The nodes' host inside ComfyUI: folder_paths, ProgressBar/latent_preview, model_management."""

    name = "comfyui"

    # -- model folders
    def register_model_folders(self) -> None:
        """Folders that ComfyUI or extra_model_paths.yaml already registered keep their paths; only the
        default models/<sub> path and our extensions are added."""
        for name, (sub, exts) in MODEL_FOLDERS.items():
            folder_paths.add_model_folder_path(name, os.path.join(folder_paths.models_dir, sub))
            known = folder_paths.folder_names_and_paths[name][1]
            if exts and isinstance(known, set):
                known.update(exts)

    def model_roots(self, folder: str) -> list[str]:
        try:
            return list(folder_paths.get_folder_paths(folder))
        except KeyError:
            return []

    def list_model_files(self, folder: str, suffixes: Sequence[str]) -> list[str]:
        """ComfyUI's own (cached, extension-filtered) file list, narrowed to `suffixes`."""
        try:
            names = folder_paths.get_filename_list(folder)
        except KeyError:
            return []
        return sorted((n.replace(os.sep, "/") for n in names if n.lower().endswith(tuple(suffixes))), key=str.lower)

    def resolve(self, folder: str, name: str, kind: str = "any") -> str:
        try:
            return _helpers.resolve_in_roots(self.model_roots(folder), name, kind)
        except FileNotFoundError as exc:
            raise HostError(f"{exc}. Put the model there (see workflows/README.md) and press R in the editor "
                            "to refresh the model lists") from None

    # -- progress, cancel
    def progress(self, total: int) -> ComfyProgress:
        return ComfyProgress(total)

    def check_interrupt(self) -> None:
        _mm.throw_exception_if_processing_interrupted()

    # -- devices and model management
    def compute_device(self) -> torch.device:
        return _mm.get_torch_device()

    def offload_device(self) -> torch.device:
        return _mm.unet_offload_device()

    def free_memory(self, device) -> int:
        """ComfyUI's free memory on `device` plus what the models it holds there take (it unloads
        idle ones to make room, ours included)."""
        held = sum(m.model_loaded_memory() for m in _mm.current_loaded_models if m.device == torch.device(device))
        return int(_mm.get_free_memory(device)) + int(held)

    def model_dtype(self, supported: Sequence) -> torch.dtype:
        """ComfyUI's choice for a diffusion model on the compute device (honours --fp16-unet etc.)."""
        return _mm.unet_dtype(device=self.compute_device(), supported_dtypes=list(supported))

    def layer_classes(self, weight_dtype, compute_dtype):
        """comfy.ops' layer classes, chosen as ComfyUI chooses them for its own diffusion models
        (`pick_operations`): `disable_weight_init` when weights are stored in the compute dtype,
        `manual_cast` (or the fp8 matmul ops with `--fast fp8_matrix_mult` on a GPU that has them)
        when they are not. Both run the plain torch forward until ComfyUI's model management sets
        `comfy_cast_weights` on a layer it leaves off the GPU, which then streams its weights."""
        compute_dtype = compute_dtype or torch.float32
        return _ops.pick_operations(weight_dtype or compute_dtype, compute_dtype, load_device=self.compute_device())

    def patcher(self, module: torch.nn.Module):
        """The ModelPatcher that manages `module` (created once, then reused, so ComfyUI recognises the
        model as already loaded instead of reloading it on every call)."""
        patcher = getattr(module, _PATCHER_ATTR, None)
        if patcher is None:
            current = next(module.parameters(), None)
            device = current.device if current is not None else self.offload_device()
            holder = _Holder(module, device, _manual_cast_dtype(module))
            patcher = _patcher.ModelPatcher(holder, load_device=self.compute_device(),
                                            offload_device=self.offload_device())
            object.__setattr__(module, _PATCHER_ATTR, patcher)
        return patcher

    def load_to_device(self, modules: Iterable) -> None:
        """Load `modules` through `comfy.model_management.load_models_gpu`, each as its own model.

        ComfyUI counts them against VRAM and frees other (idle) models to make room; short of memory
        (or with --lowvram/--novram) it loads part of a network and leaves the rest of its comfy.ops
        layers on the offload device, marked `comfy_cast_weights`, to be cast onto the GPU layer by
        layer as they run. The few tensors such a partial load does not place are moved here
        (`place_unmanaged_tensors`).
        """
        patchers = [self.patcher(m) for m in modules]
        if not all(_streams(patcher.model.wrapped) for patcher in patchers):
            # plain torch layers (wav2vec2, emotion2vec): a partial load would leave some of them off
            # the compute device with no way to cast them there
            _mm.load_models_gpu(patchers, force_full_load=True)
            return
        _mm.load_models_gpu(patchers)
        for patcher in patchers:
            place_unmanaged_tensors(patcher.model, patcher.load_device)

    # -- outputs
    def metadata_disabled(self) -> bool:
        """ComfyUI runs with --disable-metadata: saved files must not carry the prompt or workflow."""
        return bool(getattr(_comfy_args, "disable_metadata", False))

    def output_directory(self) -> str:
        return folder_paths.get_output_directory()

    def save_path(self, filename_prefix: str, width: int = 0, height: int = 0) -> tuple[str, str, int, str]:
        """Same numbering as SaveImage/SaveVideo, so our files sort next to core outputs."""
        folder, filename, counter, subfolder, _prefix = folder_paths.get_save_image_path(
            filename_prefix, self.output_directory(), width, height)
        return folder, filename, counter, subfolder
