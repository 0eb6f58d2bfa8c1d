"""`generate` stopped by real signals in a real child process keeps a playable video and a state
that resumes: SIGTERM and SIGHUP behave as Ctrl-C, and a second signal right after the first
cannot interrupt the finishing into nothing."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from memo_pipeline.cli import main, make_test_portrait, make_test_tone
from memo_pipeline.state import GenerationState
from memo_pipeline.video_io import read_video_info

ROOT = Path(__file__).resolve().parents[1]
CLIP = 8  # frames per clip: 3 s of audio at 30 fps are 12 clips, a few seconds on the tiny models


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("signal_inputs")
    return make_test_portrait(folder / "portrait.png", 128), make_test_tone(folder / "tone.wav", 3.0)


def _args(tiny_bundle, inputs, out: Path, *extra) -> list[str]:
    image, audio = inputs
    return ["generate", "--checkpoint", str(tiny_bundle["memo"]), "--vae", str(tiny_bundle["vae"]),
            "--wav2vec", str(tiny_bundle["wav2vec2"]), "--image", str(image), "--audio", str(audio), "--out", str(out),
            "--steps", "1", "--resolution", "64", "--allow-no-face", "--frames-per-clip", str(CLIP),
            "--past-frames", str(CLIP), *extra]


def _signalled_run(args: list[str], signals: list[int], gap_s: float = 0.02) -> tuple[int, str]:
    """Run `python -m memo_pipeline ARGS`, send `signals` (`gap_s` apart) once its progress bar
    shows the second clip's step done (the first clip is then in the video), and return the exit
    code and everything it wrote to stderr."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-m", "memo_pipeline", *args], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = b""
    try:
        while True:
            chunk = os.read(child.stderr.fileno(), 4096)
            if not chunk:
                pytest.fail("the child ended before its second clip: " + seen.decode(errors="replace"))
            seen += chunk
            if max((int(n) for n in re.findall(rb"(\d+)/12 \[", seen)), default=0) >= 2:
                break
        for k, signum in enumerate(signals):
            if k:
                time.sleep(gap_s)
            child.send_signal(signum)
        rest = child.communicate(timeout=240)[1]
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return child.returncode, (seen + rest).decode(errors="replace")


def _assert_kept(out: Path, state_path: Path, stderr: str) -> GenerationState:
    """A playable video holding exactly the clips the state says are done, no temporary files left."""
    assert out.is_file() and state_path.is_file(), stderr
    state = GenerationState.load(state_path)
    info = read_video_info(out)
    assert 1 <= state.next_clip < 12 and info["frames"] == CLIP * state.next_clip, (info, state.next_clip, stderr)
    assert info["audio_duration"] == pytest.approx(info["frames"] / 30, abs=0.03)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], list(out.parent.iterdir())
    assert "Traceback" not in stderr, stderr
    return state


@pytest.mark.parametrize("signum, save_state", [(signal.SIGTERM, True), (signal.SIGHUP, False)],
                         ids=["SIGTERM-save-state", "SIGHUP-default-state"])
def test_sigterm_and_sighup_stop_like_ctrl_c(tiny_bundle, inputs, tmp_path, signum, save_state):
    out = tmp_path / "o.mp4"
    state_path = tmp_path / ("s.safetensors" if save_state else "o.state.safetensors")
    extra = ["--save-state", str(state_path)] if save_state else []
    code, stderr = _signalled_run(_args(tiny_bundle, inputs, out, *extra), [signum])
    assert code == 128 + signum, stderr
    assert f"stopped by {signal.Signals(signum).name}" in stderr and str(state_path) in stderr
    _assert_kept(out, state_path, stderr)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_second_signal_20_ms_later_cannot_undo_the_finishing(tiny_bundle, inputs, tmp_path, signum):
    out = tmp_path / "o.mp4"
    code, stderr = _signalled_run(_args(tiny_bundle, inputs, out), [signum, signum])
    assert code == (130 if signum == signal.SIGINT else 128 + signum), stderr
    state = _assert_kept(out, tmp_path / "o.state.safetensors", stderr)
    if signum == signal.SIGINT:  # the state resumes the rest of the video
        rest = tmp_path / "rest.mp4"
        assert main(_args(tiny_bundle, inputs, rest, "--no-progress", "--resume", str(tmp_path / "o.state.safetensors"))) == 0
        assert read_video_info(rest)["frames"] == 90 - CLIP * state.next_clip
