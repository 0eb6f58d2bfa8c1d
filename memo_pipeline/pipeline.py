"""MEMO's autoregressive long-video generation, one clip at a time.

For every clip of `frames_per_clip` frames:

1. the reference stack is the reference image plus `past_frames` motion frames (for the first
   clip the reference image repeated `init_past_frames` times, later the last frames of the
   previous clip), VAE-encoded with the posterior mean;
2. the reference net turns that stack into features once per clip (timestep 0);
3. flow-matching Euler denoising with classifier-free guidance: the unconditional branch has
   face tokens `image_proj(0)`, zero audio tokens and emotion label 9; the motion memory is
   written afresh on the first step of a track, extended on the first step of every later clip
   and only read otherwise;
4. the latents are decoded and the clip is handed to the caller, who may write and drop it.

Only the motion memory and the last motion frames survive from clip to clip, so memory use does
not grow with the length of the audio; both form a `GenerationState` that can be saved and
resumed. Every number follows the official pipeline (docs/architecture.md#clip-loop, #vae-conventions); with
`guidance_scale <= 1` a single conditional pass runs (the official code crashes there).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from .heap import release_freed_memory
from .loading import MemoModels
from .audio.emotions import NUM_EMOTION_CLASSES, UNCONDITIONAL_EMOTION, clip_emotion
from .models.clip_constants import ClipConstants
from .models.motion_memory import MotionMemory
from .models.reference_features import ReferenceFeatures, reference_rows
from .state import GenerationState  # also re-exported: it used to live here
from .vae import VAEAdapter

from .settings import LIMITS, MAX_SEED, check_resolution, num_clips  # noqa: F401 - MAX_SEED re-exported



class GenerationCancelled(Exception):
    """Raised when the caller's `should_cancel` says stop; the models stay untouched."""


@dataclass
class GenerationSettings:
    steps: int = LIMITS["steps"].default
    guidance_scale: float = LIMITS["guidance_scale"].default
    frames_per_clip: int = LIMITS["frames_per_clip"].default
    past_frames: int = LIMITS["past_frames"].default
    init_past_frames: int = LIMITS["past_frames"].default
    seed: int = LIMITS["seed"].default
    fps: float = LIMITS["fps"].default
    cache_reference: bool = True
    """Encode the reference image and compute its reference-net features once for all clips, and
    the first clip's motion frames (all the reference image) once per face-token row (equal within
    rounding: reference-net rows never interact). Off runs the official full stack every clip."""
    memory_fp32: bool = True
    """Keep the motion memory and its linear attention in float32 when the networks run in
    bf16/fp16 (docs/architecture.md#precision); no effect in float32."""
    clip_constants: bool = True
    """Compute the diffusion net's per-clip constants (reference/face key-value projections) once
    per clip instead of at every step (equal within rounding; docs/architecture.md#per-clip-constants)."""

    def validate(self) -> None:
        """Every setting against the one input policy (`settings.LIMITS`), all problems in one error."""
        values = {"steps": self.steps, "guidance_scale": self.guidance_scale, "frames_per_clip": self.frames_per_clip,
                  "past_frames": self.past_frames, "init_past_frames": self.init_past_frames, "seed": self.seed,
                  "fps": self.fps}
        limits = {name: LIMITS["past_frames" if name == "init_past_frames" else name] for name in values}
        problems = [p for name, value in values.items() if (p := limits[name].problem(value, name))]
        if problems:
            raise ValueError("invalid generation settings: " + "; ".join(problems))


@dataclass
class ClipOutput:
    """One finished clip; it belongs to the caller. `state` continues the generation after this
    clip whatever happens next: later clips never change it (its memory shares the memory's
    tensors, which the pipeline replaces and never writes into, so nothing large is copied)."""

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


@dataclass
class Conditioning:
    """The conditioning shared by every clip of one generation (built by `MemoPipeline.conditioning`)."""

    pixels: torch.Tensor  # (1, 3, H, W) reference image in [-1, 1] on the model device
    face_tokens: torch.Tensor  # (copies, n, c): [uncond, cond] with CFG, [cond] without
    labels: torch.Tensor  # one emotion label per frame of every clip
    copies: int  # 2 with classifier-free guidance, else 1
    num_clips: int


class MemoPipeline:
    """Generation in named steps, in the spirit of diffusers pipelines: `check_inputs`,
    `conditioning`, `initial_state`, then per clip `prepare_clip` (reference features, audio
    tokens, emotion), `denoise_clip` and `decode_clip`. `generate` strings them together."""

    def __init__(self, models: MemoModels, vae: VAEAdapter, scheduler: FlowMatchEulerDiscreteScheduler | None = None):
        self.models = models
        self.vae = vae
        self.scheduler = scheduler or FlowMatchEulerDiscreteScheduler()

    num_clips = staticmethod(num_clips)  # the library's one clip count (settings.num_clips)

    @staticmethod
    def clip_range(num_clips: int, first_clip: int = 0, max_clips: int = 0) -> range:
        """The clips one run makes: from `first_clip` to the end, or `max_clips` of them (0 = all)."""
        stop = num_clips if max_clips <= 0 else min(num_clips, first_clip + max_clips)
        return range(first_clip, stop)

    def total_steps(self, audio: AudioSource, settings: GenerationSettings, first_clip: int = 0, max_clips: int = 0) -> int:
        return len(self.clip_range(self.num_clips(audio.num_frames, settings.frames_per_clip), first_clip, max_clips)) * settings.steps

    @torch.no_grad()
    def generate(self, reference_image: torch.Tensor, face_embedding: torch.Tensor | None, audio: AudioSource | torch.Tensor,
                 emotion: torch.Tensor | int | None = None, settings: GenerationSettings | None = None, *,
                 state: GenerationState | None = None, on_step: Callable[[StepInfo], None] | None = None,
                 should_cancel: Callable[[], bool] | None = None,
                 noise: Callable[[int], torch.Tensor] | None = None, max_clips: int = 0) -> Iterator[ClipOutput]:
        """Yield the video clip by clip.

        `reference_image`: `(1, 3, H, W)` in [-1, 1] (see `reference_pixels`), square, side a multiple of 8.
        `face_embedding`: ArcFace embedding `(1, 512)`; None means zeros (the official no-face fallback).
        `audio`: an `AudioFeatures`-like source or an `audio_emb` tensor `(S, 5, layers, hidden)`.
        `emotion`: per-frame labels (extended with the last label if short), one label, or None for neutral.
        `state`: continue a generation saved from a `ClipOutput.state`.
        `noise`: replaces the initial-noise draw of a clip (used to replay recorded runs).
        `max_clips`: stop after this many clips (0 = until the audio ends); the last state continues it.
        """
        settings = settings or GenerationSettings()
        audio = WindowedAudio(audio) if torch.is_tensor(audio) else audio
        self.check_inputs(reference_image, face_embedding, audio, emotion, settings, state)
        cond = self.conditioning(reference_image, face_embedding, audio, emotion, settings)
        home = self.models.motion_memory_home
        state, generator = self.initial_state(settings, state, home or self.models.device)
        state.memory.home = home
        total = cond.num_clips * settings.steps
        record = GenerationState.record(self.models, settings, int(reference_image.shape[-1]), audio.num_frames)
        reference_cache: dict = {}
        for clip in self.clip_range(cond.num_clips, state.next_clip, max_clips):
            inputs = self.prepare_clip(clip, cond, audio, state, settings, reference_cache)

            def step_done(info: StepInfo, offset: int = clip * settings.steps) -> None:
                """Count steps over the whole generation (clips before a resumed state included)."""
                if on_step is not None:
                    on_step(dataclasses.replace(info, done=offset + info.done, total=total))

            initial = noise(clip) if noise is not None else None
            latents = self.denoise_clip(clip, inputs, state.memory, generator, settings, initial=initial,
                                        on_step=step_done, should_cancel=should_cancel, num_clips=cond.num_clips)
            del inputs
            video = self.decode_clip(latents)
            del latents
            release_freed_memory()
            start = clip * settings.frames_per_clip
            keep = min(settings.frames_per_clip, audio.num_frames - start)
            past = video[-min(settings.past_frames, settings.frames_per_clip):].clone()
            state = GenerationState(state.memory, past, clip + 1, generator.get_state())
            yield ClipOutput(clip, start, video[:keep], self._owned(state, record), video)

    @staticmethod
    def _owned(state: GenerationState, record: dict[str, str]) -> GenerationState:
        """The caller's copy of the live state: its own memory dicts (the next clip puts new tensors
        into the live ones) and the record of this generation's settings."""
        memory = state.memory
        own = MotionMemory(dict(memory.kv), dict(memory.z), memory.decay, memory.dtype)
        return GenerationState(own, state.past_frames, state.next_clip, state.rng_state, dict(record))

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
                state.check_compatible(models, settings, num_clips, resolution or 0, audio.num_frames)
        elif emotion is not None:
            self._frame_labels(emotion, 1)

    def conditioning(self, reference_image, face_embedding, audio: AudioSource, emotion, settings) -> Conditioning:
        """Face tokens (with the unconditional copy for CFG) and per-frame emotion labels."""
        models, dtype, device = self.models, self.models.dtype, self.models.device
        num_clips = self.num_clips(audio.num_frames, settings.frames_per_clip)
        copies = 2 if settings.guidance_scale > 1 else 1
        face = torch.zeros(1, models.image_proj.config.clip_embeddings_dim) if face_embedding is None else face_embedding
        face = face.reshape(1, -1).to(device, dtype)
        face_tokens = models.image_proj(face)
        if copies == 2:
            face_tokens = torch.cat([models.image_proj(torch.zeros_like(face)), face_tokens])
        labels = self._frame_labels(emotion, num_clips * settings.frames_per_clip)
        return Conditioning(reference_image.to(device), face_tokens, labels, copies, num_clips)

    @staticmethod
    def initial_state(settings: GenerationSettings, state: GenerationState | None,
                      device=None) -> tuple[GenerationState, torch.Generator]:
        """A fresh state (empty memory, generator seeded) or a detached copy of `state` on `device`,
        and the (CPU) noise generator positioned where that state left it."""
        if state is None:
            state = GenerationState(MotionMemory(), None, 0, torch.Generator().manual_seed(settings.seed).get_state())
        else:
            state = state.to(device)
        state.memory.dtype = torch.float32 if settings.memory_fp32 else None
        generator = torch.Generator()
        generator.set_state(state.rng_state)
        return state, generator

    def prepare_clip(self, clip: int, cond: Conditioning, audio: AudioSource, state: GenerationState,
                     settings: GenerationSettings, reference_cache: dict) -> "ClipInputs":
        """Reference features of `[reference, motion frames]`, audio tokens, the clip's emotion and,
        with `settings.clip_constants`, the diffusion net's per-clip constants."""
        models, dtype, device = self.models, self.models.dtype, self.models.device
        frames = settings.frames_per_clip
        start = clip * frames
        past = None if state.past_frames is None else state.past_frames[-settings.past_frames:].to(device) * 2.0 - 1.0
        reference = self._reference_features(cond.pixels, past, cond.face_tokens, cond.copies, settings, reference_cache)
        audio_tokens = models.audio_proj(audio.windows(start, start + frames)[None].to(device, dtype))
        mood = clip_emotion(cond.labels[start:start + frames])
        if cond.copies == 2:
            audio_tokens = torch.cat([torch.zeros_like(audio_tokens), audio_tokens])
            emotion = torch.tensor([UNCONDITIONAL_EMOTION, mood], device=device)
            uc_mask = torch.arange(2 * frames, device=device) < frames
        else:
            emotion, uc_mask = torch.tensor([mood], device=device), None
        constants = ClipConstants() if settings.clip_constants else None  # filled by the clip's first step
        return ClipInputs(reference, cond.face_tokens, audio_tokens, emotion, uc_mask, cond.copies, constants,
                          tuple(cond.pixels.shape[-2:]))

    def denoise_clip(self, clip: int, inputs: "ClipInputs", memory: MotionMemory, generator: torch.Generator,
                     settings: GenerationSettings, *, initial: torch.Tensor | None = None,
                     on_step: Callable[[StepInfo], None] | None = None,
                     should_cancel: Callable[[], bool] | None = None, num_clips: int | None = None) -> torch.Tensor:
        """Flow-matching Euler denoising of one clip from fresh noise (drawn from `generator`, or
        `initial`); the first step resets the motion memory on clip 0 and extends it on later clips,
        and then `inputs` no longer holds the motion frames' features (`drop_motion_features`)."""
        models, dtype, device = self.models, self.models.dtype, self.models.device
        height, width = inputs.size
        shape = (1, 4, settings.frames_per_clip, height // 8, width // 8)
        latents = initial if initial is not None else torch.randn(shape, generator=generator, dtype=dtype)
        latents = latents.to(device, dtype)
        scheduler = copy.deepcopy(self.scheduler)
        scheduler.set_timesteps(settings.steps, device=device)
        for step, t in enumerate(scheduler.timesteps):
            if should_cancel is not None and should_cancel():
                of = f"/{num_clips}" if num_clips else ""
                raise GenerationCancelled(f"cancelled at clip {clip + 1}{of}, step {step + 1}/{settings.steps}")
            # The first step writes the memory (afresh on clip 0). The official first clip writes it again at
            # every step, from the same motion frames: that gives the same memory bit for bit, so later steps
            # only read it (docs/architecture.md#clip-loop).
            update = "read" if step else ("reset" if clip == 0 else "append")
            output = models.diffusion_net(torch.cat([latents] * inputs.copies), inputs.reference, t, inputs.face_tokens,
                                          inputs.audio_tokens, inputs.emotion, memory, update, inputs.uc_mask,
                                          constants=inputs.constants)
            if step == 0:
                inputs.drop_motion_features()
            if inputs.copies == 2:
                uncond, cond = output.chunk(2)
                velocity = uncond + settings.guidance_scale * (cond - uncond)
            else:
                velocity = output
            latents = scheduler.step(velocity, t, latents, return_dict=False)[0]
            if on_step is not None:
                on_step(StepInfo(clip, step, step + 1, settings.steps, float(t), latents, output, velocity,
                                 float(scheduler.sigmas[step + 1])))
            if models.weight_dtype is not None:
                release_freed_memory()  # a low-memory run: what the step freed leaves the resident size
        return latents

    def decode_clip(self, latents: torch.Tensor) -> torch.Tensor:
        """`(1, 4, F, h, w)` latents -> `(F, 3, H, W)` float32 CPU frames in [0, 1]."""
        return self.vae.decode(latents[0].transpose(0, 1)).cpu()

    def _check_reference(self, image: torch.Tensor) -> torch.Tensor:
        if image.dim() != 4 or image.shape[:2] != (1, 3):
            raise ValueError(f"reference image must be (1, 3, H, W) in [-1, 1]; got {tuple(image.shape)} (see reference_pixels)")
        height, width = image.shape[-2:]
        if height != width:
            raise ValueError(f"MEMO generates square video: the reference image is {width}x{height}; crop or resize it to a square")
        check_resolution(int(height), "resolution (the reference image's side)")
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

    def _reference_features(self, pixels, past, face_tokens, copies, settings, cache) -> ReferenceFeatures:
        """Reference-net features of `[reference, motion frames]` per CFG copy, copy-major; `past` are
        the motion frames in [-1, 1], or None for the first clip (the reference image repeated).

        The reference image is VAE-encoded once per generation. With `cache_reference`, its own
        feature rows are reused from the first clip too; each row of the reference net only depends
        on its own input and face tokens, so only the motion rows are recomputed (with the face-token
        rows the tiled batch would have given them: row `i` uses token row `i % 2`), and the first
        clip's motion rows, all the reference image, are computed once per face-token row.
        """
        models = self.models
        dtype = models.dtype
        if "latent" not in cache:
            cache["latent"] = self.vae.encode(pixels.to(dtype)).to(dtype)
        ref_latent = cache["latent"]
        motion_latents = self._motion_latents(past, ref_latent, settings.init_past_frames)
        stack = 1 + motion_latents.shape[0]
        rows = torch.arange(copies * stack, device=pixels.device)
        if not settings.cache_reference:
            latents = torch.cat([ref_latent, motion_latents]).repeat(copies, 1, 1, 1)
            return models.reference_net(latents, torch.zeros(()), face_tokens)
        if "features" not in cache:
            ref_rows = rows[::stack]
            cache["features"] = models.reference_net(ref_latent.repeat(copies, 1, 1, 1), torch.zeros(()),
                                                     face_tokens[ref_rows % face_tokens.shape[0]])
        motion_face_rows = rows[(rows % stack) != 0] % face_tokens.shape[0]
        if past is None:
            motion = self._repeated_reference_features(ref_latent, face_tokens, motion_face_rows)
        else:
            motion = models.reference_net(motion_latents.repeat(copies, 1, 1, 1), torch.zeros(()),
                                          face_tokens[motion_face_rows])
        return ReferenceFeatures.interleave(cache["features"], motion, copies)

    def _repeated_reference_features(self, ref_latent, face_tokens, face_rows) -> ReferenceFeatures:
        """Reference-net features of the first clip's motion frames, which are all the reference
        image: one row per distinct face-token row is computed and repeated (2 rows instead of
        `copies * init_past_frames`), since a row's features depend on its own input only."""
        distinct, index = torch.unique(face_rows, return_inverse=True)
        once = self.models.reference_net(ref_latent.repeat(distinct.numel(), 1, 1, 1), torch.zeros(()),
                                         face_tokens[distinct])
        return once.map(lambda feature: feature[index])

    def _motion_latents(self, past: torch.Tensor | None, ref_latent: torch.Tensor, initial: int) -> torch.Tensor:
        """VAE latents of the motion frames. The first clip's are the reference image repeated: the VAE
        treats every frame on its own and MEMO takes the posterior mean (no sampling, no generator), so
        the reference latent, repeated, is what encoding every copy gives."""
        if past is None:
            return ref_latent.repeat(initial, 1, 1, 1)
        return self.vae.encode(past.to(self.models.dtype)).to(self.models.dtype)


@dataclass
class ClipInputs:
    """What the diffusion net needs for every step of one clip (built by `MemoPipeline.prepare_clip`)."""

    reference: ReferenceFeatures
    face_tokens: torch.Tensor
    audio_tokens: torch.Tensor
    emotion: torch.Tensor  # [9, label] with CFG, [label] without
    uc_mask: torch.Tensor | None
    copies: int
    constants: ClipConstants | None
    size: tuple[int, int]  # (H, W) of the video

    def drop_motion_features(self) -> None:
        """Keep only the reference image's rows of the reference features. The motion frames' rows
        (`copies * P` of every `copies * (1 + P)`) are read only when the memory is written, on a
        clip's first step; at 512 px they take about 1.5 GB in float32."""
        self.reference = self.reference.map(lambda feature: reference_rows(feature, self.copies).clone())
