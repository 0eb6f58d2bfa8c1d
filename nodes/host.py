"""Where the nodes meet the program that runs them: ComfyUI, or a plain Python process.

Node code never imports ComfyUI: it calls ``get_host()`` and asks the returned :class:`Host` for
everything the surroundings provide — model folders, the progress bar and its previews, the
cancel button, devices and dtypes, model management, the output folder and its metadata rule.

The host is chosen by whoever runs the nodes, never guessed here: ComfyUI's extension entry
(``comfy_entrypoint`` in the pack's ``__init__.py``) makes a
:class:`~.comfy_adapter.ComfyHost` and its node classes enter it around every call; tests and
scripts enter a :class:`StandaloneHost` with :func:`use_host`. The current host is a context
variable, so it belongs to the running call (thread, task), not to the process. Outside any
``use_host`` block the nodes get a bare standalone host: no model folders, no output folder.

This module imports nothing of ComfyUI and nothing of ``comfy_adapter`` (which imports this one).
"""

from __future__ import annotations

import abc
import contextlib
import contextvars
import os
import re
from typing import Callable, Iterable, Sequence

from . import comfy_helpers

# Model folder names, sub-folders of ComfyUI's models/ (ComfyHost registers them).
MEMO_FOLDER = "memo"
AUDIO_ENCODER_FOLDER = "audio_encoders"
EMOTION2VEC_FOLDER = "emotion2vec"
FACE_FOLDER = "insightface"
VOCAL_FOLDER = "vocal_separator"


class HostError(ValueError):
    """Something the host cannot provide (an unknown model name, no output folder)."""


class Host(abc.ABC):
    """What the nodes need from their surroundings (see the module docstring)."""

    name = "abstract"

    # -- model folders
    def register_model_folders(self) -> None:
        """Make the host know MEMO's model folders (models/memo, emotion2vec, ...); idempotent."""

    @abc.abstractmethod
    def model_roots(self, folder: str) -> list[str]:
        """Folders searched for models of kind `folder` (e.g. "memo", "audio_encoders")."""

    def list_model_dirs(self, folder: str, marker: str) -> list[str]:
        """Sub-folders (relative, '/'-separated) of the `folder` roots that contain the file `marker`."""
        return comfy_helpers.find_model_dirs(self.model_roots(folder), marker)

    @abc.abstractmethod
    def list_model_files(self, folder: str, suffixes: Sequence[str]) -> list[str]:
        """Files (relative, '/'-separated) under the `folder` roots whose names end in one of `suffixes`."""

    @abc.abstractmethod
    def resolve(self, folder: str, name: str, kind: str = "any") -> str:
        """Absolute path of `name` (kind 'file', 'dir' or 'any') under the `folder` roots; HostError if absent."""

    # -- progress, previews, cancel
    @abc.abstractmethod
    def progress(self, total: int):
        """A progress bar of `total` steps: `set(value, preview_image=None)` with an optional RGB frame
        `[H, W, 3]` in [0, 1], and `set_latent(value, latent)` with a scaled SD1.5 latent `(4, h, w)`
        that the host turns into a preview as its settings say (or not at all)."""

    @abc.abstractmethod
    def check_interrupt(self) -> None:
        """Raise if the user asked to stop (ComfyUI's own exception inside ComfyUI)."""

    # -- devices and model management
    @abc.abstractmethod
    def compute_device(self):
        """Where the networks run."""

    @abc.abstractmethod
    def offload_device(self):
        """Where idle weights are kept (and where loaders put new ones)."""

    def free_memory(self, device) -> int | None:
        """Bytes a run could use on `device` now (None: unknown); the memory plan is checked against it."""
        from ..memo_pipeline.memory_plan import free_device_bytes

        return free_device_bytes(device)

    @abc.abstractmethod
    def model_dtype(self, supported: Sequence) -> object:
        """The weight dtype, among `supported` (torch dtypes, preferred first), for a model on `compute_device()`."""

    def layer_classes(self, weight_dtype, compute_dtype):
        """The layer namespace the MEMO networks are built with (`memo_pipeline.layers.use_layers`) for
        weights stored in `weight_dtype` (a torch dtype; None: the compute dtype) that compute in
        `compute_dtype` on `compute_device()`; None: the library's own choice (plain torch layers, or
        its casting layers for a smaller weight dtype). ComfyUI's host returns its `comfy.ops` classes,
        which let its model management load part of a network and stream the rest."""
        return None

    @abc.abstractmethod
    def load_to_device(self, modules: Iterable) -> None:
        """Make sure `modules` can run on `compute_device()` now; each module is one model to the host's
        model manager, which may move other (idle) models out to make room. Built from the host's
        `layer_classes`, a module may be loaded in part: its other layers keep their weights on the
        offload device and cast them onto the compute device as they run (ComfyUI's lowvram loading)."""

    # -- outputs
    def metadata_disabled(self) -> bool:
        """True when saved files must not carry the prompt or workflow (ComfyUI's --disable-metadata)."""
        return False

    @abc.abstractmethod
    def output_directory(self) -> str:
        """The folder output files go to; HostError if there is none."""

    @abc.abstractmethod
    def save_path(self, filename_prefix: str, width: int = 0, height: int = 0) -> tuple[str, str, int, str]:
        """(folder, base filename, free counter, subfolder) for a new file, numbered like SaveVideo."""


class Progress:
    """Progress of one node run, in steps; keeps only the newest preview (frame and latent)."""

    def __init__(self, total: int, previewer: Callable | None = None):
        self.total = int(total)
        self.current = 0
        self.preview = None
        self.latent = None
        self.updates = 0
        self._previewer = previewer

    def set(self, value: int, preview_image=None) -> None:
        self.current = min(int(value), self.total)
        self.updates += 1
        if preview_image is not None:
            self.preview = preview_image

    def set_latent(self, value: int, latent) -> None:
        self.latent = latent
        self.set(value, None if self._previewer is None else self._previewer(latent))


class StandaloneHost(Host):
    """Host for tests and scripts: explicit model roots per folder name and an optional output folder.

    `previewer`: turns a scaled SD1.5 latent `(4, h, w)` into a preview image; None (the default)
    keeps the latents only, like ComfyUI's `--preview-method none`.
    """

    name = "standalone"

    def __init__(self, roots: dict[str, Sequence[str]] | None = None, output_dir: str | os.PathLike | None = None,
                 device: str = "cpu", should_cancel: Callable[[], bool] | None = None,
                 previewer: Callable | None = None):
        self.roots = {key: [os.fspath(p) for p in value] for key, value in (roots or {}).items()}
        self._output_dir = None if output_dir is None else os.fspath(output_dir)
        self._device = device
        self.should_cancel = should_cancel
        self.previewer = previewer
        self.progress_log: list[Progress] = []
        self.loaded: list = []  # every module handed to load_to_device, in call order

    def model_roots(self, folder: str) -> list[str]:
        return list(self.roots.get(folder, []))

    def list_model_files(self, folder: str, suffixes: Sequence[str]) -> list[str]:
        names = set()
        for root in self.model_roots(folder):
            if not os.path.isdir(root):
                continue
            for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                rel_dir = os.path.relpath(dirpath, root)
                if rel_dir != "." and rel_dir.count(os.sep) >= 3:
                    dirnames[:] = []
                for filename in filenames:
                    if filename.lower().endswith(tuple(suffixes)) and not filename.startswith("."):
                        rel = filename if rel_dir == "." else os.path.join(rel_dir, filename)
                        names.add(rel.replace(os.sep, "/"))
        return sorted(names, key=str.lower)

    def resolve(self, folder: str, name: str, kind: str = "any") -> str:
        roots = self.model_roots(folder)
        if not roots:
            raise HostError(
                f"no '{folder}' model folder is known outside ComfyUI; run the node inside ComfyUI "
                f"(models/{folder}/) or configure a StandaloneHost with roots={{'{folder}': [...]}}"
            )
        try:
            return comfy_helpers.resolve_in_roots(roots, name, kind)
        except FileNotFoundError as exc:
            raise HostError(str(exc)) from None

    def progress(self, total: int) -> Progress:
        bar = Progress(total, self.previewer)
        self.progress_log.append(bar)
        return bar

    def check_interrupt(self) -> None:
        if self.should_cancel is not None and self.should_cancel():
            from ..memo_pipeline.pipeline import GenerationCancelled

            raise GenerationCancelled("cancelled by the host")

    def compute_device(self):
        import torch

        return torch.device(self._device)

    def offload_device(self):
        import torch

        return torch.device("cpu")

    def model_dtype(self, supported: Sequence) -> object:
        import torch

        return torch.float32 if torch.float32 in supported else supported[0]

    free_memory_bytes: int | None = None
    """Set by a test or script to pretend this much memory is free (None: ask the device)."""

    def free_memory(self, device) -> int | None:
        return self.free_memory_bytes if self.free_memory_bytes is not None else super().free_memory(device)

    def load_to_device(self, modules: Iterable) -> None:
        from ..memo_pipeline.loading import move

        device = self.compute_device()
        for module in modules:
            self.loaded.append(module)
            move(module, device)

    def output_directory(self) -> str:
        if self._output_dir is None:
            raise HostError("no output folder: nodes that write files need ComfyUI (or a host with output_dir)")
        os.makedirs(self._output_dir, exist_ok=True)
        return self._output_dir

    def save_path(self, filename_prefix: str, width: int = 0, height: int = 0) -> tuple[str, str, int, str]:
        """ComfyUI's numbering outside ComfyUI: `<sub>/<name>_<counter:05>_.ext`, counter one past the highest."""
        output_dir = self.output_directory()
        prefix = (filename_prefix or "").strip().replace("\\", "/")
        if not prefix or prefix.startswith("/") or ".." in prefix.split("/"):
            raise HostError(f"filename_prefix {filename_prefix!r} must be a relative name inside the output folder")
        subfolder, filename = os.path.split(prefix)
        if not filename:
            raise HostError(f"filename_prefix {filename_prefix!r} ends with a folder separator; add a file name")
        folder = os.path.join(output_dir, subfolder)
        os.makedirs(folder, exist_ok=True)
        pattern = re.compile(re.escape(filename) + r"_(\d+)_?\.")
        counters = [int(m.group(1)) for f in os.listdir(folder) if (m := pattern.match(f))]
        return folder, filename, max(counters, default=0) + 1, subfolder


_current: contextvars.ContextVar[Host | None] = contextvars.ContextVar("comfyui_memo_host", default=None)


def get_host() -> Host:
    """The host entered with `use_host` in this call's context, else a bare standalone one."""
    return _current.get() or StandaloneHost()


@contextlib.contextmanager
def use_host(host: Host):
    """Run a block with `host` as the nodes' host (ComfyUI's node classes, tests, scripts)."""
    token = _current.set(host)
    try:
        yield host
    finally:
        _current.reset(token)
