"""Writing a generation to an mp4 as its clips finish, and keeping the finished part when it stops.

`stream_to_file` is the one writer of the command line, the Generate To File node and batch jobs:
each clip goes into the video as soon as it is decoded (memory does not grow with the audio), the
state to continue from is saved after every clip when asked, and when the run stops early (a
clip limit, Ctrl-C, SIGTERM/SIGHUP, Cancel, an error) the video of the finished clips is closed
playable and the state is saved next to it, with one message saying what was kept, where, and how
to go on. Finishing cannot be interrupted into nothing: further SIGINT/SIGTERM/SIGHUP are ignored
while the files are closed, and both files appear whole or not at all.

`stop_signals` is for whoever owns the process (a command line): SIGTERM and SIGHUP then stop a
run the way Ctrl-C does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from .video_io import VideoWriter

logger = logging.getLogger("memo_pipeline")

STATE_SUFFIX = ".state.safetensors"
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class StopRequested(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where Ctrl-C would raise `KeyboardInterrupt` (and handled alike)."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


def default_state_path(video: str | os.PathLike) -> Path:
    """Where the state to continue a video is saved when no other place is given: `NAME.state.safetensors`."""
    video = Path(video)
    return video.with_name(video.stem + STATE_SUFFIX)


def _say(text: str) -> None:
    """A line on stderr from inside a signal handler (logging could wait on a lock the interrupted code holds)."""
    try:
        os.write(2, (text + "\n").encode())
    except OSError:
        pass


@contextlib.contextmanager
def _handling(handler):
    """Install `handler` for SIGINT/SIGTERM/SIGHUP and restore the previous ones after; only the main
    thread can (a server's worker thread keeps whatever its process set)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


@contextlib.contextmanager
def stop_signals():
    """In the main thread: the first SIGINT raises `KeyboardInterrupt`, the first SIGTERM/SIGHUP
    `StopRequested`; every later one is ignored with a note, so the files of the finished clips
    are closed and saved whatever arrives next. Elsewhere (a server's worker thread) it does nothing."""
    received: list[int] = []

    def handler(signum, frame):
        if received:
            _say(f"{signal.Signals(signum).name} again: still saving the finished clips, please wait")
            return
        received.append(signum)
        raise KeyboardInterrupt if signum == signal.SIGINT else StopRequested(signum)

    with _handling(handler):
        yield


@contextlib.contextmanager
def _shielded():
    """Ignore SIGINT/SIGTERM/SIGHUP (main thread only) while the files are being finished."""

    def ignore(signum, frame):
        _say(f"{signal.Signals(signum).name}: still saving the finished clips, please wait")

    with _handling(ignore):
        yield


@contextlib.contextmanager
def _deferred():
    """Hold SIGINT/SIGTERM/SIGHUP (main thread only) until a clip is wholly in the file, then
    deliver the first one held: the video never ends in the middle of a clip."""
    held: list[int] = []
    try:
        with _handling(lambda signum, frame: held.append(signum)):
            yield
    finally:
        if held:
            signal.raise_signal(held[0])


@dataclass
class StreamResult:
    """What `stream_to_file` wrote. `state_path` is set when a state to continue was saved at the end."""

    path: Path
    frames: int
    last: object  # the last ClipOutput written (None: no clip finished)
    num_clips: int  # clips of the whole generation
    state_path: Path | None = None

    @property
    def clips_done(self) -> int:
        return 0 if self.last is None else self.last.state.next_clip

    @property
    def complete(self) -> bool:
        return self.clips_done >= self.num_clips


def stream_to_file(clips: Iterable, path: str | os.PathLike, fps, *, num_clips: int, audio=None,
                   render: Callable | None = None, state_path: str | os.PathLike | None = None,
                   save_every_clip: bool = False, replace_state: bool = True,
                   state_metadata: Callable | dict | None = None, continue_hint: Callable[[Path], str] | None = None,
                   who: str = "MEMO", **video_options) -> StreamResult:
    """Write the `ClipOutput`s of `clips` (e.g. `MemoPipeline.generate(...)`) to the mp4 `path`.

    `num_clips`: clips of the whole generation, to tell a finished video from a stopped one.
    `audio`, `video_options` (crf, metadata, ...): as `VideoWriter`. `render(clip)` gives the
    frames `[F, H, W, 3]` to write (default: the clip's frames). `state_path` (default
    `default_state_path(path)`) receives the state to continue: after every clip with
    `save_every_clip`, and whenever the run ends before the last clip; `replace_state=False`
    keeps a file already there. `state_metadata` (a dict or `clip -> dict` of strings) goes into
    the state beside the pipeline's own record, and the state records `path` (`video_file`) so a
    resumed run can refuse to write over it. `continue_hint(state_path)` says how to go on, for
    the message. Returns a `StreamResult`; a stop is re-raised after the finished part is kept.
    """
    path = Path(os.path.abspath(os.fspath(path)))
    state_path = Path(os.path.abspath(os.fspath(state_path))) if state_path is not None else default_state_path(path)
    render = render or (lambda clip: clip.frames.permute(0, 2, 3, 1))
    saver = _StateSaver(state_path, path, state_metadata, replace_state, save_every_clip)
    writer = VideoWriter(path, fps, audio=audio, **video_options)
    result = StreamResult(path, 0, None, num_clips)
    try:
        for clip in clips:
            frames = render(clip)
            with _deferred():
                writer.write(frames)
                result.last, result.frames = clip, writer.frames_written
                if save_every_clip:
                    saver.save(clip)
            logger.info("%s: clip %d/%d written (%d frames)", who, clip.index + 1, num_clips, writer.frames_written)
    except BaseException as err:
        with _shielded():
            _keep_partial(writer, result, saver, err, continue_hint, who)
        raise
    with _shielded():
        writer.close()
        if not result.complete and result.last is not None:
            saver.save(result.last)  # a clip limit: the state continues the video
            result.state_path = state_path
            hint = f"; {continue_hint(state_path)}" if continue_hint else ""
            logger.warning("%s stopped after clip %d of %d as asked: %d frames are in %s and the state to continue "
                           "is in %s%s", who, result.clips_done, num_clips, result.frames, path, state_path, hint)
    return result


class _StateSaver:
    """Saves the state after a clip to one path, remembering which clip the file holds."""

    def __init__(self, path: Path, video: Path, metadata, replace: bool, every_clip: bool):
        self.path, self.video, self.metadata, self.replace = path, video, metadata, replace
        self.saved_clip: int | None = None  # next_clip of the state in `path` written by this run

    def save(self, clip) -> None:
        extra = self.metadata(clip) if callable(self.metadata) else dict(self.metadata or {})
        extra["video_file"] = os.fspath(self.video)
        clip.state.save(self.path, metadata=extra)
        self.saved_clip = clip.state.next_clip


def _keep_partial(writer: VideoWriter, result: StreamResult, saver: _StateSaver, err: BaseException,
                  continue_hint, who: str) -> None:
    """After a stop: close the video of the finished clips and save the state after the last one,
    then say in one message what was kept and what was not. The stop itself is re-raised by the caller."""
    if result.last is None or not writer.frames_written:
        writer.abort()
        return
    if isinstance(err, StopRequested):
        reason = f"stopped by {err}"
    elif isinstance(err, KeyboardInterrupt):
        reason = "interrupted"
    elif type(err).__name__ in ("GenerationCancelled", "InterruptProcessingException"):
        reason = "cancelled"
    else:
        reason = f"stopped by an error ({type(err).__name__}: {err})"
    done, total = result.clips_done, result.num_clips
    try:
        writer.close()  # a playable video of the finished clips
    except Exception as exc:  # noqa: BLE001 - the original stop matters more; say what was lost
        logger.error("%s %s after clip %d of %d, and the video of the finished clips could not be closed (%s): "
                     "nothing was kept at %s", who, reason, done, total, exc, result.path)
        return
    kept = f"{result.frames} frames ({done} clip(s)) are in {result.path}"
    if saver.saved_clip == done:
        state_note = f"the state to continue is in {saver.path}"
    elif saver.path.exists() and not saver.replace:
        state_note = f"no state was saved: {saver.path} exists (pass --overwrite, or resume from another saved state)"
        logger.warning("%s %s after clip %d of %d: %s; %s", who, reason, done, total, kept, state_note)
        return
    else:
        try:
            saver.save(result.last)
            state_note = f"the state to continue is in {saver.path}"
        except OSError as exc:
            older = (f"{saver.path} still holds the state after clip {saver.saved_clip}: resuming from it would repeat "
                     f"clips {saver.saved_clip + 1}..{done}, which are in the video" if saver.saved_clip else
                     "this video cannot be continued")
            logger.error("%s %s after clip %d of %d: %s, but the state could NOT be saved to %s (%s); %s", who,
                         reason, done, total, kept, saver.path, exc.strerror or exc, older)
            return
    hint = f"; {continue_hint(saver.path)}" if continue_hint else ""
    logger.warning("%s %s after clip %d of %d: %s; %s%s", who, reason, done, total, kept, state_note, hint)


def write_generation(pipeline, reference_image, face_embedding, audio_features, emotion, settings, path, *,
                     audio=None, state=None, state_path=None, save_every_clip: bool = False, max_clips: int = 0,
                     on_step=None, **options) -> StreamResult:
    """Generate with `pipeline` (`MemoPipeline.generate`'s inputs, `state` to continue a saved
    generation) straight into the mp4 `path` through `stream_to_file` (`options`: its keywords).

    `audio=(samples, rate)` is the whole track to mux; a resumed run takes it from the state's
    first frame on. With `state_path` and `save_every_clip` the state is saved after every clip, so
    a run killed outright still leaves a state beside the clips already written."""
    pipeline.check_inputs(reference_image, face_embedding, audio_features, emotion, settings, state)
    first_clip = 0 if state is None else state.next_clip
    if audio is not None:
        samples, rate = audio
        first = int(round(first_clip * settings.frames_per_clip / settings.fps * rate))
        audio = (samples[..., first:], rate)
    clips = pipeline.generate(reference_image, face_embedding, audio_features, emotion, settings, state=state,
                              on_step=on_step, max_clips=max_clips)
    num_clips = pipeline.num_clips(audio_features.num_frames, settings.frames_per_clip)
    return stream_to_file(clips, path, settings.fps, num_clips=num_clips, audio=audio, state_path=state_path,
                          save_every_clip=save_every_clip, **options)
