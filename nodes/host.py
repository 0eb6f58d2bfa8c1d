"""Where the nodes meet the program that runs them: ComfyUI, or a plain Python process.

Node code never imports ComfyUI (nor ``comfy_adapter``, which does) at module level: it calls
``get_host()`` and uses the returned object for everything the host provides — model folders,
the progress bar, the cancel button, devices, ComfyUI's model manager and the output folder.

* Inside ComfyUI, ``get_host()`` returns a :class:`ComfyHost`, a thin shim over
  ``nodes/comfy_adapter.py``.
* Anywhere else (unit tests, scripts) ``comfy_adapter`` cannot be imported and a
  :class:`StandaloneHost` is used: model folders are whatever roots it was given, progress is
  recorded in memory, models stay where they are, and files go to its ``output_dir``. Without
  configuration it knows no model folders and refuses to write anything.

Tests (and scripts) install their own host with :func:`use_host`, which is how loaders find a
temporary model folder without ComfyUI's ``folder_paths``.
"""

from __future__ import annotations

import abc
import contextlib
import os
import re
from typing import Callable, Iterable, Sequence

from . import comfy_helpers

# Model folder names, the same as the adapter registers (sub-folders of ComfyUI's models/).
MEMO_FOLDER = "memo"
AUDIO_ENCODER_FOLDER = "audio_encoders"
EMOTION2VEC_FOLDER = "emotion2vec"
FACE_FOLDER = "insightface"
VOCAL_FOLDER = "vocal_separator"


class HostError(ValueError):
    """Something the host cannot provide (an unknown model name, no output folder)."""


class Progress:
    """Progress of one node run, in steps; ``previews`` keeps only the newest preview."""

    def __init__(self, total: int):
        self.total = int(total)
        self.current = 0
        self.preview = None
        self.updates = 0

    def set(self, value: int, preview_image=None) -> None:
        self.current = min(int(value), self.total)
        self.updates += 1
        if preview_image is not None:
            self.preview = preview_image


class Host(abc.ABC):
    """What the nodes need from their surroundings (see the module docstring)."""

    name = "abstract"

    # -- model folders
    @abc.abstractmethod
    def model_roots(self, folder: str) -> list[str]:
        """Folders searched for models of kind `folder` (e.g. "memo", "audio_encoders")."""

    def list_model_dirs(self, folder: str, marker: str) -> list[str]:
        return comfy_helpers.find_model_dirs(self.model_roots(folder), marker)

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
        try:
            return comfy_helpers.resolve_in_roots(roots, name, kind)
        except FileNotFoundError as exc:
            raise HostError(str(exc)) from None

    # -- progress, cancel
    def progress(self, total: int):
        return Progress(total)

    def check_interrupt(self) -> None:
        """Raise if the user asked to stop (ComfyUI's own exception inside ComfyUI)."""

    # -- devices and model management
    def compute_device(self):
        import torch

        return torch.device("cpu")

    def offload_device(self):
        import torch

        return torch.device("cpu")

    def load_to_device(self, modules: Iterable) -> None:
        """Make sure `modules` sit on `compute_device()` (through ComfyUI's model manager there)."""
        from ..memo_pipeline.loading import move

        device = self.compute_device()
        for module in modules:
            move(module, device)

    # -- outputs
    def output_directory(self) -> str:
        raise HostError("no output folder: nodes that write files need ComfyUI (or a host with output_dir)")

    def save_path(self, filename_prefix: str, width: int = 0, height: int = 0) -> tuple[str, str, int, str]:
        """(folder, base filename, free counter, subfolder) for a new file, numbered like SaveVideo."""
        return _next_save_path(self.output_directory(), filename_prefix)


class StandaloneHost(Host):
    """Host for tests and scripts: explicit model roots per folder name and an optional output folder."""

    name = "standalone"

    def __init__(self, roots: dict[str, Sequence[str]] | None = None, output_dir: str | os.PathLike | None = None,
                 device: str = "cpu", should_cancel: Callable[[], bool] | None = None):
        self.roots = {key: [os.fspath(p) for p in value] for key, value in (roots or {}).items()}
        self._output_dir = None if output_dir is None else os.fspath(output_dir)
        self._device = device
        self.should_cancel = should_cancel
        self.progress_log: list[Progress] = []
        self.loaded: list = []

    def model_roots(self, folder: str) -> list[str]:
        return list(self.roots.get(folder, []))

    def resolve(self, folder: str, name: str, kind: str = "any") -> str:
        if not self.model_roots(folder):
            raise HostError(
                f"no '{folder}' model folder is known outside ComfyUI; run the node inside ComfyUI "
                f"(models/{folder}/) or configure a StandaloneHost with roots={{'{folder}': [...]}}"
            )
        return super().resolve(folder, name, kind)

    def progress(self, total: int) -> Progress:
        bar = Progress(total)
        self.progress_log.append(bar)
        return bar

    def check_interrupt(self) -> None:
        if self.should_cancel is not None and self.should_cancel():
            from ..memo_pipeline.pipeline import GenerationCancelled

            raise GenerationCancelled("cancelled by the host")

    def compute_device(self):
        import torch

        return torch.device(self._device)

    def load_to_device(self, modules: Iterable) -> None:
        modules = list(modules)
        self.loaded.extend(modules)
        super().load_to_device(modules)

    def output_directory(self) -> str:
        if self._output_dir is None:
            return super().output_directory()
        os.makedirs(self._output_dir, exist_ok=True)
        return self._output_dir


class ComfyHost(Host):
    """Inside ComfyUI: everything goes through nodes/comfy_adapter.py."""

    name = "comfyui"

    def __init__(self, adapter):
        self.adapter = adapter

    def model_roots(self, folder: str) -> list[str]:
        try:
            return list(self.adapter.model_folder_paths(folder))
        except KeyError:
            return []

    def list_model_files(self, folder: str, suffixes: Sequence[str]) -> list[str]:
        try:
            names = self.adapter.list_model_files(folder)
        except KeyError:
            return []
        return sorted((n.replace(os.sep, "/") for n in names if n.lower().endswith(tuple(suffixes))), key=str.lower)

    def resolve(self, folder: str, name: str, kind: str = "any") -> str:
        try:
            return self.adapter.resolve_path(folder, name, kind)
        except FileNotFoundError as exc:
            raise HostError(f"{exc}. Put the model there (see workflows/README.md) and press R in the editor "
                            "to refresh the model lists") from None

    def progress(self, total: int):
        return self.adapter.progress_bar(total)

    def check_interrupt(self) -> None:
        self.adapter.throw_if_interrupted()

    def compute_device(self):
        return self.adapter.torch_device()

    def offload_device(self):
        return self.adapter.offload_device()

    def load_to_device(self, modules: Iterable) -> None:
        self.adapter.load_models_to_gpu(list(modules))

    def output_directory(self) -> str:
        return self.adapter.output_directory()

    def save_path(self, filename_prefix: str, width: int = 0, height: int = 0) -> tuple[str, str, int, str]:
        return self.adapter.save_path(filename_prefix, width, height)


_override: Host | None = None
_comfy_host: Host | None = None
_standalone = StandaloneHost()


def _try_comfy_host() -> Host | None:
    global _comfy_host
    if _comfy_host is None:
        try:
            from . import comfy_adapter
        except ImportError:
            return None
        _comfy_host = ComfyHost(comfy_adapter)
    return _comfy_host


def get_host() -> Host:
    """The host installed with `use_host`, else ComfyUI's when running inside it, else a bare standalone one."""
    if _override is not None:
        return _override
    return _try_comfy_host() or _standalone


def in_comfyui() -> bool:
    return _try_comfy_host() is not None


@contextlib.contextmanager
def use_host(host: Host):
    """Run a block with `host` as the nodes' host (tests, scripts)."""
    global _override
    previous, _override = _override, host
    try:
        yield host
    finally:
        _override = previous


def _next_save_path(output_dir: str, filename_prefix: str) -> tuple[str, str, int, str]:
    """ComfyUI's numbering outside ComfyUI: `<sub>/<name>_<counter:05>_.ext`, counter one past the highest."""
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
