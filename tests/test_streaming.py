"""The one streaming writer as a library call: clips written as they finish, a state after each
clip when asked, rows resumed from state files bit-identically; and a `ClipOutput` that belongs
to the caller."""

from __future__ import annotations

import pytest
import torch

from memo_pipeline.loading import MemoModels
from memo_pipeline.pipeline import GenerationSettings, MemoPipeline, WindowedAudio, reference_pixels
from memo_pipeline.state import GenerationState
from memo_pipeline.streaming import default_state_path, write_generation
from memo_pipeline.vae import DiffusersVAE
from memo_pipeline.video_io import read_video_info

FAST = dict(steps=1, frames_per_clip=4, past_frames=4, init_past_frames=4, seed=5, fps=10.0)


@pytest.fixture(scope="module")
def pipeline(tiny_bundle):
    return MemoPipeline(MemoModels.load(tiny_bundle["memo"]), DiffusersVAE.from_pretrained(tiny_bundle["vae"], batch_size=8))


def _inputs(frames=14):
    g = torch.Generator().manual_seed(1)
    audio = WindowedAudio(torch.randn(16, 5, 2, 16, generator=g), num_frames=frames)
    track = (torch.randn(16000 * frames // 10, generator=g).numpy() * 0.1, 16000)
    return reference_pixels(torch.rand(64, 64, 3, generator=g)), torch.randn(1, 512, generator=g), audio, track


def test_a_library_call_resumes_rows_from_state_files_bit_identically(pipeline, tmp_path):
    pixels, face, audio, track = _inputs()
    settings = GenerationSettings(**FAST)
    written = {}

    def capture(name):
        def render(clip):
            written.setdefault(name, []).append(clip.frames.clone())
            return clip.frames.permute(0, 2, 3, 1)
        return render

    full = write_generation(pipeline, pixels, face, audio, 3, settings, tmp_path / "full.mp4", audio=track,
                            render=capture("full"))
    assert full.complete and full.state_path is None and full.frames == 14
    assert not default_state_path(tmp_path / "full.mp4").exists()

    state_path = tmp_path / "row.state.safetensors"
    head = write_generation(pipeline, pixels, face, audio, 3, settings, tmp_path / "head.mp4", audio=track,
                            state_path=state_path, save_every_clip=True, max_clips=2, render=capture("head"))
    assert not head.complete and head.state_path == state_path and read_video_info(tmp_path / "head.mp4")["frames"] == 8
    state = GenerationState.load(state_path)
    assert state.next_clip == 2 and state.metadata["video_file"] == str(tmp_path / "head.mp4")
    tail = write_generation(pipeline, pixels, face, audio, 3, settings, tmp_path / "tail.mp4", audio=track,
                            state=state, render=capture("tail"))
    assert tail.complete and tail.frames == 6
    assert read_video_info(tmp_path / "tail.mp4")["audio_duration"] == pytest.approx(0.6, abs=0.03)
    assert torch.equal(torch.cat(written["head"] + written["tail"]), torch.cat(written["full"]))
