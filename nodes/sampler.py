"""Generation nodes: MEMO Sampler (frames out), MEMO Generate To File (streamed to an mp4), state save/load.

Both generation nodes share `prepare_run` / `run_clips`: the inputs are checked up front (so a
bad input fails before minutes of sampling), the MEMO networks are put on the GPU through
ComfyUI's model manager, and `MemoPipeline.generate` runs clip by clip with one progress bar over
all steps of all clips, a latent preview after every step, and Cancel honoured between steps.

A generation can be split over several runs: `max_clips` stops after that many clips and the
MEMO_STATE output continues it (memory of past motion, last frames, noise generator) in the next
sampler. The streaming node also writes that state to the output folder whenever it stops before
the end of the audio (limit, Cancel or error), next to the part of the video already written.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import torch

from . import host as host_mod
from .common import check_setting, frames_to_image, logger, square_reference, user_errors, workflow_metadata
from .memo_types import (
    MEMO_AUDIO,
    MEMO_EMOTION,
    MEMO_FACE,
    MEMO_MODEL,
    MEMO_STATE,
    MemoAudio,
    MemoEmotion,
    MemoFace,
    MemoModel,
    MemoState,
    expect,
)
from .preview import denoised_latent
from .vae_bridge import ComfyVAEBridge
from ..memo_pipeline.streaming import STATE_SUFFIX  # the library's file rule



@dataclass
class RunPlan:
    pipeline: object
    pixels: torch.Tensor
    face: torch.Tensor
    audio: MemoAudio
    labels: torch.Tensor | None
    settings: object
    state: object  # GenerationState | None
    first_clip: int
    stop_clip: int
    resolution: int
    memory_on_host: bool = False  # the motion memory waits in RAM (check_memory found the device too small)

    @property
    def clips_in_run(self) -> int:
        """Clips this run makes (of `audio.num_clips`, the library's clip count of the whole track)."""
        return self.stop_clip - self.first_clip

    @property
    def start_frame(self) -> int:
        return self.first_clip * self.audio.frames_per_clip

    @property
    def stop_frame(self) -> int:
        return min(self.audio.num_frames, self.stop_clip * self.audio.frames_per_clip)


def prepare_run(memo_model, vae, reference_image, memo_audio, face, seed, steps, cfg, past_frames, resolution,
                emotion=None, state=None, max_clips=0, torch_compile=False, cpu_tuning=True) -> RunPlan:
    from ..memo_pipeline.compile import set_compiled
    from ..memo_pipeline.cpu_tuning import set_cpu_tuning
    from ..memo_pipeline.pipeline import GenerationSettings, MemoPipeline, reference_pixels

    model = expect(memo_model, MemoModel, "memo_model", MEMO_MODEL)
    audio = expect(memo_audio, MemoAudio, "memo_audio", MEMO_AUDIO)
    identity = expect(face, MemoFace, "face", MEMO_FACE)
    if emotion is not None:
        expect(emotion, MemoEmotion, "emotion", MEMO_EMOTION)
    if state is not None:
        expect(state, MemoState, "state", MEMO_STATE)
    seed = check_setting(seed, "seed")
    steps = check_setting(steps, "steps")
    cfg = check_setting(cfg, "cfg", "guidance_scale")
    past_frames = check_setting(past_frames, "past_frames")
    resolution = check_setting(resolution, "resolution")
    max_clips = check_setting(max_clips, "max_clips")

    models = model.models
    embedding = identity.embedding.detach().float().reshape(1, -1).cpu()

    labels = None
    if emotion is not None:
        with user_errors("emotion"):
            labels = emotion.frame_labels(audio)

    generation_state, first_clip = None, 0
    if state is not None:  # checked with everything else by check_inputs below (the library's one check)
        generation_state = state.state  # generate() works on its own copy
        first_clip = state.next_clip
    stop_clip = MemoPipeline.clip_range(audio.num_clips, first_clip, max_clips).stop

    pixels = reference_pixels(square_reference(reference_image, resolution, "reference_image"))
    settings = GenerationSettings(steps=steps, guidance_scale=cfg, frames_per_clip=audio.frames_per_clip,
                                  past_frames=past_frames, init_past_frames=past_frames, seed=seed, fps=audio.fps)

    pipeline = MemoPipeline(models, ComfyVAEBridge(vae))
    with user_errors("settings"):  # the library's one input policy (same checks as the CLI and the API)
        pipeline.check_inputs(pixels, embedding, audio.features, labels, settings, generation_state)
    for name, value in (("torch_compile", torch_compile), ("cpu_tuning", cpu_tuning)):
        if not isinstance(value, bool):
            raise ValueError(f"input '{name}' must be true or false, got {value!r}")
    # a cached model follows each run's own option; only the MEMO networks (ComfyUI's VAE is core's).
    # Where the networks run is the host's compute device: a partially loaded network's own `.device`
    # (its first parameter's) may be the offload device.
    set_cpu_tuning(cpu_tuning and host_mod.get_host().compute_device().type == "cpu", models)
    set_compiled(models, torch_compile)
    return RunPlan(pipeline, pixels, embedding, audio, labels, settings, generation_state, first_clip, stop_clip,
                   resolution)


def check_memory(plan: RunPlan) -> None:
    """The memory plan of this run against the host's free memory, before any network moves to the
    device: stops with the smallest change that fits, or warns when it is tight (memory_plan). Where
    only the motion memory waiting in RAM fits, the run keeps it there (`plan.memory_on_host`)."""
    from ..memo_pipeline.memory_plan import check_managed_run, models_request

    host = host_mod.get_host()
    device = host.compute_device()
    request = models_request(plan.pipeline.models, plan.settings, plan.resolution, device)
    fit = check_managed_run(request, host.free_memory(device), logger)
    plan.memory_on_host = bool(fit.plan.request.memory_on_host) and device.type != "cpu"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class RunEstimate:
    """Rough time a run will take, for CPU-only runs (minutes per step at 512 px): logged once the first
    step is done (that step's time for every step) and again after the first clip (clip time x clips),
    which also covers the VAE and reference work around the steps."""

    def __init__(self, clips: int, steps_per_clip: int, clock=time.monotonic, log=None):
        self.clips, self.steps_per_clip = clips, steps_per_clip
        self.clock, self.log = clock, log or logger.info
        self.start = clock()
        self.messages: list[str] = []

    def step_done(self, steps_done: int) -> None:
        if steps_done == 1:
            took = self.clock() - self.start
            total = self.clips * self.steps_per_clip
            self._say(f"MEMO sampler on the CPU: the first step took {_duration(took)}, so the {total} steps of this "
                      f"run ({self.clips} clip(s) x {self.steps_per_clip}) will take roughly {_duration(took * total)}; "
                      "fewer steps, cfg <= 1 or a lower resolution make it faster")

    def clip_done(self, clips_done: int) -> None:
        if clips_done == 1 and self.clips > 1:
            took = self.clock() - self.start
            self._say(f"MEMO sampler on the CPU: the first clip took {_duration(took)}; the remaining "
                      f"{self.clips - 1} clip(s) will take roughly {_duration(took * (self.clips - 1))} more")

    def _say(self, text: str) -> None:
        self.messages.append(text)
        self.log(text)


def run_clips(plan: RunPlan):
    """Yield `ClipOutput`s of `plan`, driving the host's progress bar, previews and Cancel.

    Each MEMO network is loaded through the host right before it runs (the VAE loads itself), so a
    model manager short of memory can offload every network that is idle at that moment.
    """
    host = host_mod.get_host()
    settings = plan.settings
    total = plan.clips_in_run * settings.steps
    bar = host.progress(total)
    offset = plan.first_clip * settings.steps
    estimate = RunEstimate(plan.clips_in_run, settings.steps) if host.compute_device().type == "cpu" else None

    def on_step(info):
        bar.set_latent(info.done - offset, denoised_latent(info.latents, info.velocity, info.sigma_next))
        if estimate is not None:
            estimate.step_done(info.done - offset)

    def should_cancel():
        host.check_interrupt()  # raises ComfyUI's own interrupt exception inside ComfyUI
        return False

    def load_one(network):
        host.load_to_device([network])

    generator = plan.pipeline.generate(plan.pixels, plan.face, plan.audio.features, plan.labels, settings,
                                       state=plan.state, on_step=on_step, should_cancel=should_cancel,
                                       max_clips=plan.clips_in_run)

    models = plan.pipeline.models
    models.motion_memory_home = torch.device("cpu") if plan.memory_on_host else None  # read as the generation starts
    with models.load_on_demand(host.compute_device(), load_one):
        try:
            for clip in generator:
                middle = clip.frames[clip.frames.shape[0] // 2]
                bar.set((clip.index + 1) * settings.steps - offset, middle.permute(1, 2, 0))
                if estimate is not None:
                    estimate.clip_done(clip.index + 1 - plan.first_clip)
                yield clip
        except ValueError as exc:
            raise ValueError(f"MEMO sampler: {exc}") from exc
        finally:
            generator.close()
            models.motion_memory_home = None


def memo_state_from(clip, plan: RunPlan) -> MemoState:
    state = clip.state.to("cpu")  # the pipeline's state records the settings it was made with
    audio = plan.audio
    return MemoState(state, audio.num_frames, audio.fps, audio.frames_per_clip, plan.resolution,
                     {"clips_done": state.next_clip, "clips_total": audio.num_clips, "seed": plan.settings.seed})


class MemoSampler:
    """The work of MEMO Sampler; its inputs and outputs are declared in comfy_nodes.py."""

    def sample(self, memo_model, vae, reference_image, memo_audio, face, seed, steps, cfg, past_frames, resolution,
               emotion=None, state=None, max_clips=0, torch_compile=False, cpu_tuning=True):
        plan = prepare_run(memo_model, vae, reference_image, memo_audio, face, seed, steps, cfg, past_frames,
                           resolution, emotion, state, max_clips, torch_compile, cpu_tuning)
        check_memory(plan)
        count = plan.stop_frame - plan.start_frame
        images = torch.empty(count, plan.resolution, plan.resolution, 3)  # filled clip by clip: no second copy
        filled, last = 0, None
        for clip in run_clips(plan):
            frames = frames_to_image(clip.frames)
            images[filled:filled + frames.shape[0]] = frames
            filled += frames.shape[0]
            last = clip
        if filled != count:
            raise RuntimeError(f"MEMO sampler produced {filled} frames where {count} were expected")
        segment = plan.audio.as_comfy_audio(plan.start_frame, plan.start_frame + count)
        return (images, float(plan.audio.fps), memo_state_from(last, plan), segment)


def memo_state_metadata(memo_state: MemoState, workflow: dict | None = None) -> dict[str, str]:
    """The node's own metadata of a state file (JSON texts): what the state belongs to, with
    `workflow` (see `workflow_metadata`: prompt/workflow, which the editor restores from a dropped file)."""
    description = {"format_node": "comfyui-memo-state", "num_frames": memo_state.num_frames, "fps": memo_state.fps,
                   "frames_per_clip": memo_state.frames_per_clip, "resolution": memo_state.resolution, **memo_state.info}
    extra = {key: value for key, value in (workflow or {}).items() if key not in description}
    return {key: json.dumps(value) for key, value in {**description, **extra}.items()}


def save_memo_state(memo_state: MemoState, path: str, workflow: dict | None = None) -> str:
    """Write `path` (`*.state.safetensors`) with `memo_state_metadata`."""
    memo_state.state.save(path, metadata=memo_state_metadata(memo_state, workflow))
    return path


def load_memo_state(path: str) -> MemoState:
    from ..memo_pipeline.state import LIBRARY_KEYS, GenerationState

    if not os.path.isfile(path):
        raise ValueError(f"state file not found: {path}")
    try:
        meta = {key: json.loads(value) for key, value in GenerationState.read_metadata(path).items()
                if key not in LIBRARY_KEYS}
        if meta.get("format_node") != "comfyui-memo-state":
            raise ValueError("not saved by comfyui-memo")
        state = GenerationState.load(path)
        return MemoState(state, int(meta["num_frames"]), float(meta["fps"]), int(meta["frames_per_clip"]),
                         int(meta["resolution"]), {k: meta[k] for k in ("clips_done", "clips_total", "seed") if k in meta})
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise ValueError(f"state {path} cannot be read: {exc}") from exc


def _video_audio(audio, plan: RunPlan):
    """(waveform [C, N], rate) for the writer, from the first frame on: the MEMO audio's own track, or the
    given AUDIO cut like it (MEMO Audio Encode's start/duration), so the sound is the one under the frames."""
    from .common import comfy_audio

    if audio is None:
        track = plan.audio.as_comfy_audio(plan.start_frame)
        waveform, rate = track["waveform"][0], track["sample_rate"]
    else:
        waveform, rate = comfy_audio(audio, "audio")
        waveform = plan.audio.matching_cut(waveform, rate, "audio")
        first = int(round(plan.start_frame / plan.audio.fps * rate))
        if first >= waveform.shape[1]:
            raise ValueError("audio: the track ends before the frames this run generates; connect the audio the MEMO "
                             "audio was encoded from")
        waveform = waveform[:, first:]
    needed = (plan.stop_frame - plan.start_frame - 1) / plan.audio.fps
    if waveform.shape[1] / rate < needed:
        raise ValueError(f"audio: {waveform.shape[1] / rate:.2f} s from frame {plan.start_frame} on, but the video "
                         f"needs {needed:.2f} s; connect the audio the MEMO audio was encoded from (or leave it "
                         "unconnected to use that track)")
    if waveform.shape[0] > 2:
        waveform = waveform.mean(dim=0, keepdim=True)
    return waveform.contiguous(), int(rate)


class MemoGenerateToFile:
    """The work of MEMO Generate To File; its inputs and outputs are declared in comfy_nodes.py."""

    def generate(self, memo_model, vae, reference_image, memo_audio, face, seed, steps, cfg, past_frames, resolution,
                 filename_prefix="MEMO/memo", emotion=None, state=None, max_clips=0, audio=None, crop=None,
                 original_image=None, crf=18, torch_compile=False, cpu_tuning=True, prompt=None, extra_pnginfo=None):
        from ..memo_pipeline.streaming import stream_to_file

        if (crop is None) != (original_image is None):
            raise ValueError("inputs 'crop' and 'original_image' go together: connect both to paste back, or neither")
        crf = check_setting(crf, "crf")
        plan = prepare_run(memo_model, vae, reference_image, memo_audio, face, seed, steps, cfg, past_frames,
                           resolution, emotion, state, max_clips, torch_compile, cpu_tuning)
        if crop is not None and crop.resolution != plan.resolution:
            raise ValueError(f"input 'crop' was made at resolution {crop.resolution}, the sampler runs at "
                             f"{plan.resolution}: use the same resolution in both")
        check_memory(plan)
        waveform, rate = _video_audio(audio, plan)
        host = host_mod.get_host()
        if not isinstance(filename_prefix, str) or not filename_prefix.strip():
            raise ValueError("input 'filename_prefix' is empty")
        folder, filename, counter, subfolder = host.save_path(filename_prefix, plan.resolution, plan.resolution)
        name = f"{filename}_{counter:05}_"
        path = os.path.join(folder, name + ".mp4")

        workflow = workflow_metadata(prompt, extra_pnginfo)
        result = stream_to_file(
            run_clips(plan), path, plan.audio.fps, num_clips=plan.audio.num_clips, audio=(waveform, rate), crf=crf,
            metadata=workflow, render=lambda clip: _even(_pasted(clip, crop, original_image)),
            state_path=os.path.join(folder, name + STATE_SUFFIX),
            state_metadata=lambda clip: memo_state_metadata(memo_state_from(clip, plan), workflow),
            continue_hint=lambda state_path: "to continue, load it with MEMO Load State into this node's 'state' input",
            who="MEMO Generate To File")
        file_name = name + ".mp4"
        ui = {"images": [{"filename": file_name, "subfolder": subfolder, "type": "output"}], "animated": (True,)}
        if result.state_path is not None:
            ui["text"] = [f"stopped after clip {result.clips_done} of {plan.audio.num_clips} (max_clips): to continue, "
                          f"load {os.path.relpath(result.state_path, host.output_directory()).replace(os.sep, '/')} with MEMO "
                          "Load State"]
        return {"ui": ui, "result": (path, int(result.frames), memo_state_from(result.last, plan))}


def _pasted(clip, crop, original_image) -> torch.Tensor:
    """The clip as IMAGE frames, pasted back into the original picture when a crop is given."""
    from .face_nodes import paste_frames

    images = frames_to_image(clip.frames)
    return images if crop is None else paste_frames(images, crop, original_image)


def _even(images: torch.Tensor) -> torch.Tensor:
    """H.264 (yuv420p) needs even sides: drop a last odd row/column (pasted-back pictures can be odd)."""
    height, width = images.shape[1] - images.shape[1] % 2, images.shape[2] - images.shape[2] % 2
    return images if (height, width) == tuple(images.shape[1:3]) else images[:, :height, :width]


def state_files() -> list[str]:
    host = host_mod.get_host()
    try:
        root = host.output_directory()
    except ValueError:
        return []
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel != "." and rel.count(os.sep) >= 2:
            dirnames[:] = []
        for filename in filenames:
            if filename.endswith(STATE_SUFFIX):
                found.append(os.path.normpath(os.path.join(rel, filename)).replace(os.sep, "/"))
    return sorted(found, key=str.lower)


class MemoSaveState:
    """The work of MEMO Save State; its inputs and outputs are declared in comfy_nodes.py."""

    def save(self, state, filename_prefix="MEMO/memo", prompt=None, extra_pnginfo=None):
        memo_state = expect(state, MemoState, "state", MEMO_STATE)
        folder, filename, counter, subfolder = host_mod.get_host().save_path(filename_prefix)
        path = save_memo_state(memo_state, os.path.join(folder, f"{filename}_{counter:05}_{STATE_SUFFIX}"),
                               workflow_metadata(prompt, extra_pnginfo))
        text = f"saved after clip {memo_state.next_clip} of {memo_state.info.get('clips_total', '?')}: {path}"
        return {"ui": {"text": [text]}, "result": (path,)}


class MemoLoadState:
    """The work of MEMO Load State; its inputs and outputs are declared in comfy_nodes.py."""

    def fingerprint(self, state_file):
        """Changes when the file does, so that ComfyUI reloads a state file written again under the same name."""
        try:
            path = _state_path(state_file)
            return f"{os.path.getmtime(path)}:{os.path.getsize(path)}"
        except (ValueError, OSError):
            return state_file

    def load(self, state_file):
        return (load_memo_state(_state_path(state_file)),)


def _state_path(state_file: str) -> str:
    from .comfy_helpers import safe_join

    if not isinstance(state_file, str) or not state_file.endswith(STATE_SUFFIX):
        raise ValueError(f"input 'state_file' must name a *{STATE_SUFFIX} file, got {state_file!r}")
    try:
        return safe_join(host_mod.get_host().output_directory(), state_file)
    except ValueError as exc:
        raise ValueError(f"input 'state_file': {exc}") from exc


IMPLEMENTATIONS = {  # node id -> (class doing the work, its method); nodes/comfy_nodes.py declares them
    "MemoSampler": (MemoSampler, "sample"),
    "MemoGenerateToFile": (MemoGenerateToFile, "generate"),
    "MemoSaveState": (MemoSaveState, "save"),
    "MemoLoadState": (MemoLoadState, "load"),
}
