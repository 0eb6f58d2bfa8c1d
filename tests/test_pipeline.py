"""The long-video pipeline: golden parity per clip, streaming, cancellation, resume, odd inputs."""

from __future__ import annotations

import math

import pytest
import torch

from support import golden_case
from memo_pipeline.loading import MemoModels
from memo_pipeline.pipeline import (
    GenerationCancelled,
    GenerationSettings,
    GenerationState,
    MemoPipeline,
    WindowedAudio,
    clip_emotion,
    reference_pixels,
)
from memo_pipeline.parity.pipeline_case import build_fixture_pipeline, fixture_settings, run_full_pipeline_case
from memo_pipeline.vae import DiffusersVAE

FAST = dict(steps=2, frames_per_clip=4, past_frames=4, init_past_frames=4, seed=7)


@pytest.fixture(scope="module")
def pipeline(tiny_bundle):
    models = MemoModels.load(tiny_bundle["memo"])
    return MemoPipeline(models, DiffusersVAE.from_pretrained(tiny_bundle["vae"], batch_size=8))


def _inputs(frames: int, resolution: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(resolution, resolution, 3, generator=g)
    face = torch.randn(1, 512, generator=g)
    padded = math.ceil(frames / 4) * 4
    audio = WindowedAudio(torch.randn(padded, 5, 2, 16, generator=g), num_frames=frames)
    return reference_pixels(image), face, audio


def _video(pipeline, frames=8, settings=None, **kwargs):
    pixels, face, audio = _inputs(frames)
    clips = list(pipeline.generate(pixels, face, audio, 3, settings or GenerationSettings(**FAST), **kwargs))
    return clips, torch.cat([c.frames for c in clips])


def test_golden_full_pipeline_two_clips():
    meta, tensors = golden_case("full_pipeline")
    with torch.no_grad():
        out = run_full_pipeline_case(meta, tensors)
    for clip in (0, 1):
        for step in range(3):
            for kind in ("diffusion_net_output", "latents"):
                name = f"out.clip{clip}.step{step}.{kind}"
                torch.testing.assert_close(out[name], tensors[name], atol=1e-4, rtol=0)
        torch.testing.assert_close(out[f"out.clip{clip}.video"], tensors[f"out.clip{clip}.video"], atol=1e-4, rtol=0)
    torch.testing.assert_close(out["out.clip1.pipeline_ref_image"], tensors["out.clip1.pipeline_ref_image"], atol=1e-4, rtol=0)
    assert out["out.video"].shape == tensors["out.video"].shape == (3, 7, 64, 64)


def test_speedups_stay_within_parity_tolerance():
    meta, tensors = golden_case("full_pipeline")
    with torch.no_grad():
        exact = run_full_pipeline_case(meta, tensors, vae_batch_size=1, cache_reference=False)
        fast = run_full_pipeline_case(meta, tensors, vae_batch_size=16, cache_reference=True)
    for name, value in exact.items():
        torch.testing.assert_close(fast[name], value, atol=1e-4, rtol=0)
        torch.testing.assert_close(fast[name], tensors[name], atol=1e-4, rtol=0)


class CountingVAE:
    """Wraps a VAE and records how many frames each encode call receives."""

    def __init__(self, vae):
        self.vae, self.encoded = vae, []

    def encode(self, frames):
        self.encoded.append(frames.shape[0])
        return self.vae.encode(frames)

    def decode(self, latents):
        return self.vae.decode(latents)


def test_first_clip_encodes_the_repeated_reference_once():
    """The first clip's 16 motion frames are the reference image: one VAE encode in all (the reference
    image's), not 17, and the golden case (per-frame VAE calls, no reference cache) stays bit-identical
    to encoding every copy."""
    meta, tensors = golden_case("full_pipeline")
    pipeline = build_fixture_pipeline(meta, tensors)
    settings = fixture_settings(meta)
    audio = WindowedAudio(tensors["in.audio_emb"], num_frames=meta["loop"]["audio_length"])
    counting = CountingVAE(pipeline.vae)
    pipeline.vae = counting
    with torch.no_grad():
        clips = pipeline.generate(tensors["in.pixel_values"], tensors["in.face_emb"], audio, tensors["in.audio_emotion"],
                                  settings, noise=lambda k: tensors[f"in.clip{k}.init_noise"])
        first = next(clips)
        clips.close()
        assert counting.encoded == [1]  # the reference image once; the motion frames reuse its latent
        # what the reuse rests on: the VAE encodes each frame on its own and MEMO takes the posterior mean
        encoded_each = counting.vae.encode(tensors["in.pixel_values"].expand(settings.init_past_frames, -1, -1, -1))
        repeated = counting.vae.encode(tensors["in.pixel_values"]).repeat(settings.init_past_frames, 1, 1, 1)
    assert torch.equal(repeated, encoded_each)
    # the whole first clip is bit-identical to the one made by encoding all 16 copies
    every_copy = build_fixture_pipeline(meta, tensors)
    pixels = tensors["in.pixel_values"]

    def encode_every_copy(past, ref_latent, initial):
        frames = pixels.expand(initial, -1, -1, -1) if past is None else past
        return every_copy.vae.encode(frames)

    every_copy._motion_latents = encode_every_copy  # no public seam chooses how the motion frames are encoded
    with torch.no_grad():
        clips = every_copy.generate(tensors["in.pixel_values"], tensors["in.face_emb"], audio,
                                    tensors["in.audio_emotion"], settings, noise=lambda k: tensors[f"in.clip{k}.init_noise"])
        reference = next(clips)
        clips.close()
    assert torch.equal(first.decoded, reference.decoded)


@pytest.mark.parametrize("init_past_frames", [4, 3])  # odd and even stacks: both face rows, or one
def test_first_clip_runs_the_reference_net_once_per_face_row(pipeline, init_past_frames):
    """The first clip's motion frames are all the reference image, so the reference net runs on one
    row per distinct face-token row, and the features equal those of the official full stack."""
    pixels, face, audio = _inputs(4)
    settings = GenerationSettings(**dict(FAST, init_past_frames=init_past_frames))
    official = GenerationSettings(**dict(FAST, init_past_frames=init_past_frames, cache_reference=False))
    net = pipeline.models.reference_net
    batches = []

    def first_clip_features(settings):
        cond = pipeline.conditioning(pixels, face, audio, 3, settings)
        state, _ = pipeline.initial_state(settings, None)
        return pipeline.prepare_clip(0, cond, audio, state, settings, {}).reference

    hook = net.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    try:
        with torch.no_grad():
            fast = first_clip_features(settings)
            stack = 1 + init_past_frames
            needed = {(c * stack + 1 + j) % 2 for c in range(2) for j in range(init_past_frames)}
            assert batches == [2, len(needed)]
            full = first_clip_features(official)
    finally:
        hook.remove()
    assert batches[-1] == 2 * stack
    for ours, official in zip(fast.tensors(), full.tensors()):
        assert ours.shape == official.shape
        torch.testing.assert_close(ours, official, atol=1e-5, rtol=1e-5)


def test_first_clip_writes_the_memory_once_and_matches_the_official_schedule(pipeline, monkeypatch):
    """The official first clip resets the motion memory at every step from the same motion frames;
    writing it once and reading it afterwards gives bit-identical frames."""
    from memo_pipeline.pipeline import ClipInputs

    pixels, face, audio = _inputs(8)
    settings = GenerationSettings(**FAST)
    net = pipeline.models.diffusion_net
    plain, updates = net.forward, []

    def run(official: bool) -> torch.Tensor:
        def forward(*args, **kwargs):
            args = list(args)
            if official and len(updates) < settings.steps:
                args[7] = "reset"  # memory_update
            updates.append(args[7])
            return plain(*args, **kwargs)

        updates.clear()
        monkeypatch.setattr(net, "forward", forward, raising=False)
        with torch.no_grad():
            return torch.cat([clip.frames for clip in pipeline.generate(pixels, face, audio, 3, settings)])

    ours = run(official=False)
    assert updates == ["reset", "read", "append", "read"]
    monkeypatch.setattr(ClipInputs, "drop_motion_features", lambda self: None)  # the official run keeps them
    official = run(official=True)
    assert updates == ["reset", "reset", "append", "read"]
    assert torch.equal(ours, official)


def test_clip_inputs_drop_the_motion_features_after_the_memory_write(pipeline):
    from memo_pipeline.models.reference_features import motion_frames

    pixels, face, audio = _inputs(4)
    settings = GenerationSettings(**FAST)
    with torch.no_grad():
        cond = pipeline.conditioning(pixels, face, audio, 3, settings)
        state, generator = pipeline.initial_state(settings, None)
        inputs = pipeline.prepare_clip(0, cond, audio, state, settings, {})
        stacked = inputs.reference.tensors()
        assert all(t.shape[0] == 2 * (1 + settings.init_past_frames) for t in stacked)
        pipeline.denoise_clip(0, inputs, state.memory, generator, settings)
    kept = inputs.reference.tensors()
    assert all(t.shape[0] == 2 for t in kept)
    for before, after in zip(stacked, kept):  # the reference image's rows of each CFG copy, as copies
        torch.testing.assert_close(after, before.reshape(2, -1, *before.shape[1:])[:, 0], atol=0, rtol=0)
        assert after.untyped_storage().data_ptr() != before.untyped_storage().data_ptr()
    with pytest.raises(ValueError, match="no motion frames"):
        motion_frames(kept[0], 2, 8, 8)


def test_seeded_noise_matches_the_official_generator():
    meta, tensors = golden_case("full_pipeline")
    generator = torch.Generator().manual_seed(meta["loop"]["seed"])
    for clip in (0, 1):
        expected = tensors[f"in.clip{clip}.init_noise"]
        assert torch.equal(torch.randn(expected.shape, generator=generator), expected)


def test_clips_stream_one_by_one_with_known_total(pipeline):
    pixels, face, audio = _inputs(10)
    settings = GenerationSettings(**FAST)
    steps = []
    assert pipeline.total_steps(audio, settings) == 3 * settings.steps
    stream = pipeline.generate(pixels, face, audio, None, settings, on_step=steps.append)
    first = next(stream)
    assert len(steps) == settings.steps and first.index == 0 and first.frames.shape == (4, 3, 64, 64)
    assert all(s.total == 6 for s in steps) and [s.done for s in steps] == [1, 2]
    rest = list(stream)
    assert [c.index for c in rest] == [1, 2] and [c.frames.shape[0] for c in rest] == [4, 2]
    assert [s.done for s in steps] == list(range(1, 7))
    assert 0.0 <= float(first.frames.min()) and float(first.frames.max()) <= 1.0


def test_cancel_leaves_models_reusable_and_next_run_identical(pipeline):
    _, clean = _video(pipeline)
    calls = {"n": 0}

    def cancel_in_second_clip():
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(GenerationCancelled, match="clip 2/2, step 2/2"):
        _video(pipeline, should_cancel=cancel_in_second_clip)
    _, again = _video(pipeline)
    assert torch.equal(clean, again)


def test_each_clip_keeps_its_own_state_after_later_clips(pipeline):
    """A `ClipOutput` belongs to the caller: with all clips collected first, the state of clip 1
    still continues the generation after clip 1 (later clips never change it)."""
    pixels, face, audio = _inputs(12)
    settings = GenerationSettings(**FAST)
    clips = list(pipeline.generate(pixels, face, audio, 3, settings))
    assert [c.state.next_clip for c in clips] == [1, 2, 3]
    rest = list(pipeline.generate(pixels, face, audio, 3, settings, state=clips[0].state))
    assert torch.equal(torch.cat([c.frames for c in rest]), torch.cat([c.frames for c in clips[1:]]))


def test_resume_from_saved_state_equals_uninterrupted_run(pipeline, tmp_path):
    pixels, face, audio = _inputs(12)
    settings = GenerationSettings(**FAST)
    full = torch.cat([c.frames for c in pipeline.generate(pixels, face, audio, 3, settings)])
    stream = pipeline.generate(pixels, face, audio, 3, settings)
    head = [next(stream), next(stream)]
    stream.close()
    head[-1].state.save(tmp_path / "state.safetensors", metadata={"seed": "7"})
    assert GenerationState.read_metadata(tmp_path / "state.safetensors")["seed"] == "7"
    in_memory = list(pipeline.generate(pixels, face, audio, 3, settings, state=head[-1].state))
    assert torch.equal(torch.cat([c.frames for c in head + in_memory]), full)
    state = GenerationState.load(tmp_path / "state.safetensors")
    assert state.next_clip == 2 and len(state.memory) > 0
    tail = list(pipeline.generate(pixels, face, audio, 3, settings, state=state))
    assert [c.index for c in tail] == [2]
    resumed = torch.cat([c.frames for c in head + tail])
    # the saved frames come back in the layout the VAE decoded them in (channels-last), so the
    # re-encode runs the same convolution kernels and the rest of the video is bit-identical
    assert state.past_frames.stride() == head[-1].state.past_frames.stride()
    assert torch.equal(resumed, full)


def test_guidance_one_runs_a_single_conditional_pass(pipeline):
    shapes = []
    clips, video = _video(pipeline, settings=GenerationSettings(**dict(FAST, guidance_scale=1.0)),
                          on_step=lambda info: shapes.append(info.model_output.shape[0]))
    assert set(shapes) == {1} and video.shape == (8, 3, 64, 64) and torch.isfinite(video).all()


def test_step_info_reports_guided_velocity_and_next_sigma(pipeline):
    infos = []
    _video(pipeline, settings=GenerationSettings(**dict(FAST, steps=3)), on_step=infos.append)
    assert [round(i.sigma_next, 4) for i in infos[:3]] == [0.5005, 0.001, 0.0]
    for info in infos:
        uncond, cond = info.model_output.chunk(2)
        torch.testing.assert_close(info.velocity, uncond + 3.5 * (cond - uncond))


def test_cfg_batch_is_used_above_one(pipeline):
    shapes = []
    _video(pipeline, on_step=lambda info: shapes.append(info.model_output.shape[0]))
    assert set(shapes) == {2}


@pytest.mark.parametrize("frames, expected_clips", [(3, 1), (4, 1), (9, 3)])
def test_short_and_uneven_audio_is_trimmed(pipeline, frames, expected_clips):
    pixels, face, audio = _inputs(frames)
    clips = list(pipeline.generate(pixels, face, audio, None, GenerationSettings(**dict(FAST, steps=1))))
    assert len(clips) == expected_clips
    assert sum(c.frames.shape[0] for c in clips) == frames
    assert all(c.decoded.shape[0] == 4 for c in clips)


@pytest.mark.parametrize("resolution", [96, pytest.param(512, marks=pytest.mark.slow)])  # 512 px: about a minute
def test_other_resolutions(pipeline, resolution):
    g = torch.Generator().manual_seed(1)
    pixels = reference_pixels(torch.rand(resolution, resolution, 3, generator=g))
    audio = WindowedAudio(torch.randn(2, 5, 2, 16, generator=g))
    settings = GenerationSettings(**dict(FAST, steps=1, frames_per_clip=2, past_frames=2, init_past_frames=2))
    clips = list(pipeline.generate(pixels, None, audio, 4, settings))
    assert clips[0].frames.shape == (2, 3, resolution, resolution) and torch.isfinite(clips[0].frames).all()


@pytest.mark.parametrize("shape, message", [((100, 100, 3), "not a multiple of 8"), ((64, 72, 3), "square"),
                                             ((4, 4, 3), "not a multiple of 8")])
def test_bad_resolution_is_a_clear_error(pipeline, shape, message):
    pixels = reference_pixels(torch.rand(*shape))
    audio = WindowedAudio(torch.randn(4, 5, 2, 16))
    with pytest.raises(ValueError, match=message):
        next(pipeline.generate(pixels, None, audio, None, GenerationSettings(**FAST)))


def test_bad_settings_and_labels(pipeline):
    pixels, face, audio = _inputs(4)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        next(pipeline.generate(pixels, face, audio, None, GenerationSettings(**dict(FAST, steps=0))))
    with pytest.raises(ValueError, match="emotion labels must be in 0..8"):
        next(pipeline.generate(pixels, face, audio, 9, GenerationSettings(**FAST)))
    with pytest.raises(ValueError, match="same frames_per_clip"):
        next(pipeline.generate(pixels, face, audio, None, GenerationSettings(**dict(FAST, frames_per_clip=8))))


def test_cfg_needs_the_unconditional_emotion_row(pipeline):
    import dataclasses

    from memo_pipeline.loading import build_model
    from memo_pipeline.models.diffusion_net import DiffusionNet
    from memo_pipeline.tiny import TINY_CONFIGS, randomize

    net = randomize(build_model(DiffusionNet, dict(TINY_CONFIGS["diffusion_net"], emo_drop_rate=0.0)), seed=1).eval()
    assert net.state_dict()["up_blocks.1.audio_modules.0.transformer_blocks.0.norm1.class_embedder.embedding_table.weight"].shape[0] == 9
    nine_rows = MemoPipeline(dataclasses.replace(pipeline.models, diffusion_net=net), pipeline.vae)
    pixels, face, audio = _inputs(4)
    with pytest.raises(ValueError, match="no unconditional emotion row"):
        next(nine_rows.generate(pixels, face, audio, 3, GenerationSettings(**FAST)))
    clip = next(nine_rows.generate(pixels, face, audio, 3, GenerationSettings(**dict(FAST, guidance_scale=1.0, steps=1))))
    assert torch.isfinite(clip.frames).all()


def test_clip_emotion_is_mode_with_ties_to_smallest():
    assert clip_emotion(torch.tensor([3, 3, 5, 1])) == 3
    assert clip_emotion(torch.tensor([2, 7, 7, 2])) == 2
    assert clip_emotion(torch.tensor([8])) == 8


def test_bf16_models_run_and_stay_close_to_fp32(tiny_bundle, pipeline):
    models = MemoModels.load(tiny_bundle["memo"], dtype="bf16")
    assert models.dtype == torch.bfloat16
    half = MemoPipeline(models, DiffusersVAE.from_pretrained(tiny_bundle["vae"], dtype=torch.bfloat16, batch_size=8))
    settings = GenerationSettings(**dict(FAST, steps=1))
    pixels, face, audio = _inputs(4)
    low = next(half.generate(pixels, face, audio, 3, settings)).frames
    full = next(pipeline.generate(pixels, face, audio, 3, settings)).frames
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    assert (low - full).abs().mean() < 0.05
