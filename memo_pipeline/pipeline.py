"""MEMO's autoregressive long-video generation, one clip at a time.

For every clip of `frames_per_clip` frames:

1. the reference stack is the reference image plus `past_frames` motion frames (for the first
   clip the reference image repeated `init_past_frames` times, later the last frames of the
   previous clip), VAE-encoded with the posterior mean;
2. the reference net turns that stack into features once per clip (timestep 0);
3. flow-matching Euler denoising with classifier-free guidance: the unconditional branch has
   face tokens `image_proj(0)`, zero audio tokens and emotion label 9; the motion memory is
   reset on the first clip of a track, extended on the first step of every later clip and only
   read otherwise;
4. the latents are decoded and the clip is handed to the caller, who may write and drop it.

Only the motion memory and the last motion frames survive from clip to clip, so memory use does
not grow with the length of the audio; both form a `GenerationState` that can be saved and
resumed. Every number follows the official pipeline (architecture notes §1, §4, §8); with
`guidance_scale <= 1` a single conditional pass runs (the official code crashes there).
"""

from __future__ import annotations

import copy
import ctypes
import ctypes.util
import math
import sys
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from .loading import MemoModels
from .models.audio_attention import NUM_EMOTION_CLASSES
from .models.motion_memory import MotionMemory
from .state import GenerationState  # noqa: F401 - re-exported: it used to live here
from .vae import VAEAdapter

UNCONDITIONAL_EMOTION = NUM_EMOTION_CLASSES  # the extra embedding row used for CFG
MAX_SEED = 2**64 - 1  # the largest seed torch's generator (and ComfyUI) takes


def _libc_malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _libc_malloc_trim()


def release_freed_memory() -> None:
    """Hand heap memory freed by the last clip back to the OS (glibc keeps it otherwise, and its
    heap then creeps upwards over a long generation). No-op where glibc is absent."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


class GenerationCancelled(Exception):
    """Raised when the caller's `should_cancel` says stop; the models stay untouched."""


@dataclass
class GenerationSettings:
    steps: int = 20
    guidance_scale: float = 3.5
    frames_per_clip: int = 16
    past_frames: int = 16
    init_past_frames: int = 16
    seed: int = 42
    fps: float = 30.0
    cache_reference: bool = True
    """Encode the reference image and compute its reference-net features once for all clips
    (equal within rounding: those rows never interact with the motion frames)."""

    def validate(self) -> None:
        problems = []
        if self.steps < 1:
            problems.append(f"steps must be >= 1 (got {self.steps})")
        if self.frames_per_clip < 1:
            problems.append(f"frames_per_clip must be >= 1 (got {self.frames_per_clip})")
        if self.past_frames < 1 or self.init_past_frames < 1:
            problems.append("past_frames and init_past_frames must be >= 1")
        if not math.isfinite(self.guidance_scale) or self.guidance_scale < 0:
            problems.append(f"guidance_scale must be a finite number >= 0 (got {self.guidance_scale})")
        if not (isinstance(self.fps, (int, float)) and math.isfinite(self.fps) and self.fps > 0):
            problems.append(f"fps must be positive (got {self.fps})")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            problems.append(f"seed must be a whole number in 0..{MAX_SEED} (2**64 - 1, as in ComfyUI), got {self.seed!r}")
        if problems:
            raise ValueError("invalid generation settings: " + "; ".join(problems))


@dataclass
class ClipOutput:
    """One finished clip. `state` shares the live motion memory (copying it per clip would double
    the largest buffers of a generation): save or copy it before asking for the next clip."""

    index: int
    start_frame: int
    frames: torch.Tensor  # (n, 3, H, W) float32 CPU in [0, 1], trimmed to the audio
    state: GenerationState
    decoded: torch.Tensor  # the whole decoded clip (frames past the audio included); `frames` is a view of it


@dataclass
class StepInfo:
    clip: int
    step: int
    done: int  # steps finished over the whole generation, including this one
    total: int  # steps of the whole generation
    timestep: float
    latents: torch.Tensor  # after this step, (1, 4, F, h, w)
    model_output: torch.Tensor  # raw diffusion-net output before guidance, (b, 4, F, h, w)
    velocity: torch.Tensor  # the guided velocity the step used, (1, 4, F, h, w)
    sigma_next: float  # noise level of `latents`: the denoised estimate is latents - sigma_next * velocity


class AudioSource(Protocol):
    num_frames: int  # frames carrying real audio (the video length)
    padded_frames: int

    def windows(self, start: int, stop: int) -> torch.Tensor:
        """`(stop - start, 5, layers, hidden)` wav2vec windows."""


@dataclass
class WindowedAudio:
    """Precomputed `audio_emb` `(S, 5, layers, hidden)` (as the official preprocessing returns it)."""

    audio_emb: torch.Tensor
    num_frames: int | None = None

    def __post_init__(self):
        self.padded_frames = self.audio_emb.shape[0]
        self.num_frames = self.padded_frames if self.num_frames is None else self.num_frames

    def windows(self, start: int, stop: int) -> torch.Tensor:
        return self.audio_emb[start:stop]


def clip_emotion(labels: torch.Tensor) -> int:
    """Most frequent label of a clip; ties go to the smallest label (as `torch.mode` in the official code)."""
    return int(torch.bincount(labels.long().flatten(), minlength=NUM_EMOTION_CLASSES).argmax())


def reference_pixels(image: torch.Tensor) -> torch.Tensor:
    """`(H, W, 3)` / `(3, H, W)` / `(1, 3, H, W)` in [0, 1] -> `(1, 3, H, W)` in [-1, 1]."""
    if image.dim() == 4:
        if image.shape[0] != 1:
            raise ValueError(f"one reference image expected, got a batch of {image.shape[0]}")
        image = image[0]
    if image.dim() != 3:
        raise ValueError(f"reference image must be (H, W, 3) or (3, H, W), got shape {tuple(image.shape)}")
    if image.shape[0] != 3 and image.shape[-1] == 3:
        image = image.permute(2, 0, 1)
    if image.shape[0] != 3:
        raise ValueError(f"reference image must have 3 colour channels, got shape {tuple(image.shape)}")
    return (image.float().clamp(0, 1) * 2 - 1)[None]


class MemoPipeline:
    def __init__(self, models: MemoModels, vae: VAEAdapter, scheduler: FlowMatchEulerDiscreteScheduler | None = None):
        self.models = models
        self.vae = vae
        self.scheduler = scheduler or FlowMatchEulerDiscreteScheduler()

    @staticmethod
    def num_clips(num_frames: int, frames_per_clip: int) -> int:
        return math.ceil(num_frames / frames_per_clip)

    def total_steps(self, audio: AudioSource, settings: GenerationSettings) -> int:
        return self.num_clips(audio.num_frames, settings.frames_per_clip) * settings.steps

    @torch.no_grad()
    def generate(self, reference_image: torch.Tensor, face_embedding: torch.Tensor | None, audio: AudioSource | torch.Tensor,
                 emotion: torch.Tensor | int | None = None, settings: GenerationSettings | None = None, *,
                 state: GenerationState | None = None, on_step: Callable[[StepInfo], None] | None = None,
                 should_cancel: Callable[[], bool] | None = None,
                 noise: Callable[[int], torch.Tensor] | None = None) -> Iterator[ClipOutput]:
        """Yield the video clip by clip.

        `reference_image`: `(1, 3, H, W)` in [-1, 1] (see `reference_pixels`), square, side a multiple of 8.
        `face_embedding`: ArcFace embedding `(1, 512)`; None means zeros (the official no-face fallback).
        `audio`: an `AudioFeatures`-like source or an `audio_emb` tensor `(S, 5, layers, hidden)`.
        `emotion`: per-frame labels (extended with the last label if short), one label, or None for neutral.
        `state`: continue a generation saved from a `ClipOutput.state`.
        `noise`: replaces the initial-noise draw of a clip (used to replay recorded runs).
        """
        settings = settings or GenerationSettings()
        self.check_inputs(reference_image, face_embedding, audio, emotion, settings, state)
        audio = WindowedAudio(audio) if torch.is_tensor(audio) else audio
        models, dtype, device = self.models, self.models.dtype, self.models.device
        pixels = self._check_reference(reference_image).to(device)
        num_clips = self.num_clips(audio.num_frames, settings.frames_per_clip)
        if num_clips == 0:
            raise ValueError("the audio yields no video frames")
        if num_clips * settings.frames_per_clip > audio.padded_frames:
            raise ValueError(f"audio features cover {audio.padded_frames} frames but {num_clips} clips of "
                             f"{settings.frames_per_clip} need {num_clips * settings.frames_per_clip}: extract them with "
                             "the same frames_per_clip")
        labels = self._frame_labels(emotion, num_clips * settings.frames_per_clip)
        use_cfg = settings.guidance_scale > 1
        if use_cfg and not models.diffusion_net.config.emo_drop_rate > 0:
            raise ValueError("this diffusion_net has no unconditional emotion row (emo_drop_rate = 0), so classifier-free "
                             "guidance is impossible; use guidance_scale <= 1")
        copies = 2 if use_cfg else 1

        face = torch.zeros(1, self.models.image_proj.config.clip_embeddings_dim) if face_embedding is None else face_embedding
        face = face.reshape(1, -1).to(device, dtype)
        cond_tokens = models.image_proj(face)
        face_tokens = torch.cat([models.image_proj(torch.zeros_like(face)), cond_tokens]) if use_cfg else cond_tokens

        if state is None:
            generator = torch.Generator().manual_seed(settings.seed)
            state = GenerationState(MotionMemory(), None, 0, generator.get_state())
        else:
            state = state.to(device)
        generator = torch.Generator()
        generator.set_state(state.rng_state)
        memory = state.memory
        total = num_clips * settings.steps
        reference_cache: dict = {}

        for clip in range(state.next_clip, num_clips):
            start = clip * settings.frames_per_clip
            frames = settings.frames_per_clip
            if state.past_frames is None:
                motion_pixels = pixels.expand(settings.init_past_frames, -1, -1, -1)
            else:
                motion_pixels = state.past_frames[-settings.past_frames:].to(device) * 2.0 - 1.0
            ref_features = self._reference_features(pixels, motion_pixels, face_tokens, copies, settings, reference_cache)

            audio_tokens = models.audio_proj(audio.windows(start, start + frames)[None].to(device, dtype))
            audio_tokens = torch.cat([torch.zeros_like(audio_tokens), audio_tokens]) if use_cfg else audio_tokens
            mood = clip_emotion(labels[start:start + frames])
            emotion_ids = torch.tensor([UNCONDITIONAL_EMOTION, mood] if use_cfg else [mood], device=device)
            uc_mask = torch.arange(copies * frames, device=device) < frames if use_cfg else None

            height, width = pixels.shape[-2:]
            shape = (1, 4, frames, height // 8, width // 8)
            latents = noise(clip) if noise is not None else torch.randn(shape, generator=generator, dtype=dtype)
            latents = latents.to(device, dtype)
            scheduler = copy.deepcopy(self.scheduler)
            scheduler.set_timesteps(settings.steps, device=device)
            for step, t in enumerate(scheduler.timesteps):
                if should_cancel is not None and should_cancel():
                    raise GenerationCancelled(f"cancelled at clip {clip + 1}/{num_clips}, step {step + 1}/{settings.steps}")
                update = "reset" if clip == 0 else ("append" if step == 0 else "read")
                output = models.diffusion_net(torch.cat([latents] * copies), ref_features, t, face_tokens, audio_tokens,
                                              emotion_ids, memory, update, uc_mask)
                if use_cfg:
                    uncond, cond = output.chunk(2)
                    velocity = uncond + settings.guidance_scale * (cond - uncond)
                else:
                    velocity = output
                latents = scheduler.step(velocity, t, latents, return_dict=False)[0]
                if on_step is not None:
                    on_step(StepInfo(clip, step, clip * settings.steps + step + 1, total, float(t), latents, output,
                                     velocity, float(scheduler.sigmas[step + 1])))

            video = self.vae.decode(latents[0].transpose(0, 1)).cpu()
            del latents, output, velocity, ref_features, audio_tokens
            release_freed_memory()
            keep = min(frames, audio.num_frames - start)
            state = GenerationState(memory, video[-min(settings.past_frames, frames):].clone(), clip + 1, generator.get_state())
            yield ClipOutput(clip, start, video[:keep], state, video)

    def check_inputs(self, reference_image: torch.Tensor | None = None, face_embedding: torch.Tensor | None = None,
                     audio: "AudioSource | torch.Tensor | None" = None, emotion: torch.Tensor | int | None = None,
                     settings: GenerationSettings | None = None, state: GenerationState | None = None) -> None:
        """Every compatibility and range check of a generation, without running a network: what is
        given is checked against the settings and this checkpoint. The command line, the nodes and
        `generate` all rely on this one policy; a problem is a `ValueError` naming the setting."""
        settings = settings or GenerationSettings()
        settings.validate()
        models = self.models
        limit = models.max_frames_per_clip
        if limit is not None and settings.frames_per_clip > limit:
            raise ValueError(f"frames_per_clip {settings.frames_per_clip} is more than this checkpoint handles "
                             f"({limit}, the length of its temporal position table)")
        if settings.guidance_scale > 1 and not models.supports_guidance:
            raise ValueError("this diffusion_net has no unconditional emotion row (emo_drop_rate = 0), so "
                             "classifier-free guidance is impossible; use guidance_scale <= 1")
        if reference_image is not None:
            self._check_reference(reference_image)
        if face_embedding is not None:
            embedding = torch.as_tensor(face_embedding)
            if embedding.numel() != models.face_embedding_width or not torch.isfinite(embedding.float()).all():
                raise ValueError(f"face embedding: {embedding.numel()} values, this checkpoint needs "
                                 f"{models.face_embedding_width} finite ones (ArcFace)")
        if audio is not None:
            audio = WindowedAudio(audio) if torch.is_tensor(audio) else audio
            window = audio.windows(0, 1)
            if tuple(window.shape[-2:]) != models.audio_feature_shape:
                layers, channels = models.audio_feature_shape
                raise ValueError(f"audio features have {window.shape[-2]} layers x {window.shape[-1]} channels, this "
                                 f"checkpoint expects {layers} x {channels}: use the audio encoder MEMO was trained "
                                 "with (wav2vec2-base-960h)")
            num_clips = self.num_clips(audio.num_frames, settings.frames_per_clip)
            if num_clips == 0:
                raise ValueError("the audio yields no video frames")
            if num_clips * settings.frames_per_clip > audio.padded_frames:
                raise ValueError(f"audio features cover {audio.padded_frames} frames but {num_clips} clips of "
                                 f"{settings.frames_per_clip} need {num_clips * settings.frames_per_clip}: extract "
                                 "them with the same frames_per_clip")
            if emotion is not None:
                self._frame_labels(emotion, num_clips * settings.frames_per_clip)
            if state is not None:
                resolution = None if reference_image is None else int(reference_image.shape[-1])
                if resolution is None and state.past_frames is not None:
                    resolution = int(state.past_frames.shape[-1])
                state.check_compatible(models, settings.frames_per_clip, num_clips, resolution or 0,
                                       settings.past_frames, settings.guidance_scale)
        elif emotion is not None:
            self._frame_labels(emotion, 1)

    def _check_reference(self, image: torch.Tensor) -> torch.Tensor:
        if image.dim() != 4 or image.shape[:2] != (1, 3):
            raise ValueError(f"reference image must be (1, 3, H, W) in [-1, 1]; got {tuple(image.shape)} (see reference_pixels)")
        height, width = image.shape[-2:]
        if height != width:
            raise ValueError(f"MEMO generates square video: the reference image is {width}x{height}; crop or resize it to a square")
        if height % 8:
            raise ValueError(f"resolution {height} is not a multiple of 8 (the VAE downsamples by 8)")
        return image

    @staticmethod
    def _frame_labels(emotion, length: int) -> torch.Tensor:
        if emotion is None:
            from .audio.emotions import emotion_index

            return torch.full((length,), emotion_index("neutral"), dtype=torch.long)
        labels = torch.as_tensor(emotion, dtype=torch.long).flatten()
        if labels.numel() == 0:
            raise ValueError("emotion labels are empty")
        if bool((labels < 0).any()) or bool((labels >= NUM_EMOTION_CLASSES).any()):
            raise ValueError(f"emotion labels must be in 0..{NUM_EMOTION_CLASSES - 1}")
        if labels.numel() < length:
            labels = torch.cat([labels, labels[-1:].expand(length - labels.numel())])
        return labels[:length]

    def _reference_features(self, pixels, motion_pixels, face_tokens, copies, settings, cache) -> dict:
        """Reference-net features of `[reference, motion frames]` per CFG copy, copy-major.

        With `cache_reference`, the reference image's latent and its own feature rows are reused
        from the first clip; each row of the reference net only depends on its own input and face
        tokens, so only the motion rows are recomputed (with the face-token rows the tiled batch
        would have given them: row `i` uses token row `i % 2`).
        """
        models = self.models
        dtype = models.dtype
        motion_latents = self.vae.encode(motion_pixels.to(dtype)).to(dtype)
        stack = 1 + motion_latents.shape[0]
        rows = torch.arange(copies * stack, device=pixels.device)
        if not settings.cache_reference:
            ref_latent = self.vae.encode(pixels.to(dtype)).to(dtype)
            latents = torch.cat([ref_latent, motion_latents]).repeat(copies, 1, 1, 1)
            return models.reference_net(latents, torch.zeros(()), face_tokens)
        if "features" not in cache:
            ref_latent = self.vae.encode(pixels.to(dtype)).to(dtype)
            ref_rows = rows[::stack]
            cache["features"] = models.reference_net(ref_latent.repeat(copies, 1, 1, 1), torch.zeros(()),
                                                     face_tokens[ref_rows % face_tokens.shape[0]])
        motion_rows = rows[(rows % stack) != 0]
        motion = models.reference_net(motion_latents.repeat(copies, 1, 1, 1), torch.zeros(()),
                                      face_tokens[motion_rows % face_tokens.shape[0]])
        return _interleave_features(cache["features"], motion, copies)


def _interleave_features(reference: dict, motion: dict, copies: int) -> dict:
    """Merge per-copy reference rows `(copies, ...)` and motion rows `(copies * P, ...)` into the
    copy-major `(copies * (1 + P), ...)` layout the diffusion net expects."""

    def merge(ref, mot):
        if torch.is_tensor(ref):
            ref_rows = ref.reshape(copies, 1, *ref.shape[1:])
            mot_rows = mot.reshape(copies, -1, *mot.shape[1:])
            return torch.cat([ref_rows, mot_rows], dim=1).reshape(-1, *ref.shape[1:])
        return [merge(r, m) for r, m in zip(ref, mot)]

    return {section: merge(reference[section], motion[section]) for section in ("down", "mid", "up")}

