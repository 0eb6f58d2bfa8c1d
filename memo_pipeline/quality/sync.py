"""Audio-visual sync PROXY: mouth-region motion against the speech-energy envelope.

This is not SyncNet and not a lip-reading score. SCRFD gives five landmarks (eyes, nose tip, two
mouth corners), which cannot measure how far the mouth is open, so the visual side is a motion
measure:

* **Mouth box.** Per frame, a box in the face's own frame of reference: its x axis runs along
  the eye line, its centre is the midpoint of the two mouth corners (pushed down a little, where
  the lower lip and jaw move), its width is the mouth-corner distance plus a margin and its
  height a fixed fraction, both in units of the inter-ocular distance. The box is resampled to
  a fixed ``PATCH_ROWS x PATCH_COLS`` grid of luma values, so faces of any size and tilt give
  comparable numbers.
* **Motion energy.** Mean absolute luma change of the patch between consecutive frames (each
  frame sampled with its own landmarks, so head motion is mostly compensated). A transition
  between frames t-1 and t sits at time t - 1/2; the value of frame t is the mean of its two
  neighbouring transitions, which puts it back on the frame grid without a half-frame bias.
  Frames without a face (or with no landmarks) have no value.

The audio side is the speech-energy envelope at the video frame rate: the audio (channels
averaged) is band-passed to the speech band (``SPEECH_BAND_HZ``) and its RMS is taken over each
video frame's interval ``[t / fps, (t + 1) / fps)``, streaming (``SpeechEnvelope``). Motion energy is a *rate of change* (it is high
while the mouth opens or closes and low while it holds a shape, open or shut), so it is compared
with the envelope's rate of change, ``|envelope[t + 1] - envelope[t - 1]| / 2``, the speech
"flux"; compared with the envelope itself, a symmetric syllable gives an almost flat
correlation over the lag. Both series are then cross-correlated (Pearson r over the frames where
both exist, for every lag in ``[-max_lag, max_lag]``).

Lag convention: a positive lag k means the mouth moves k frames *after* the sound (the video is
late, or the audio early); negative means the mouth leads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..face.alignment import warp_affine

PATCH_ROWS = 24
PATCH_COLS = 40
# Box geometry in units of the inter-ocular distance (IOD), face frame (x along the eye line, y down).
MOUTH_MARGIN = 0.25  # added to each side of the mouth-corner distance
MOUTH_HEIGHT = 0.8
MOUTH_DOWN = 0.1  # centre below the corner midpoint
SPEECH_BAND_HZ = (150.0, 4000.0)
MIN_PAIRS = 8  # fewer overlapping frames than this: no correlation value for that lag
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def mouth_box_matrix(kps: np.ndarray) -> np.ndarray | None:
    """2x3 matrix mapping patch pixel (col, row) to image (x, y) for the landmarks ``kps`` [5, 2].

    None when the landmarks are degenerate (eyes at one point).
    """
    kps = np.asarray(kps, dtype=np.float64)
    left_eye, right_eye, _, left_mouth, right_mouth = kps
    eye_vec = right_eye - left_eye
    iod = float(np.hypot(*eye_vec))
    if not math.isfinite(iod) or iod < 1e-3:
        return None
    ex = eye_vec / iod
    ey = np.array([-ex[1], ex[0]])  # image y points down, so this is "down the face"
    corner = float(np.hypot(*(right_mouth - left_mouth)))
    width = corner + 2 * MOUTH_MARGIN * iod
    height = MOUTH_HEIGHT * iod
    centre = (left_mouth + right_mouth) / 2 + MOUTH_DOWN * iod * ey
    col_step = width / PATCH_COLS
    row_step = height / PATCH_ROWS
    origin = centre - (PATCH_COLS - 1) / 2 * col_step * ex - (PATCH_ROWS - 1) / 2 * row_step * ey
    return np.stack([ex * col_step, ey * row_step, origin], axis=1)


def mouth_patch(rgb: np.ndarray, kps: np.ndarray) -> np.ndarray | None:
    """Luma patch ``[PATCH_ROWS, PATCH_COLS]`` (values in [0, 1]) of the mouth box, or None."""
    patch_to_image = mouth_box_matrix(kps)
    if patch_to_image is None:
        return None
    full = np.vstack([patch_to_image, [0.0, 0.0, 1.0]])
    image_to_patch = np.linalg.inv(full)[:2]
    return warp_affine(rgb, image_to_patch, PATCH_COLS, PATCH_ROWS) @ LUMA


@dataclass
class MouthMotion:
    """Streaming mouth motion energy: feed one frame's patch (or None) at a time, in order."""

    transitions: list[float] = field(default_factory=list)  # transition t-1 -> t, NaN if unknown
    frames: int = 0
    _previous: np.ndarray | None = None

    def add(self, patch: np.ndarray | None) -> None:
        if self.frames:
            if patch is None or self._previous is None:
                self.transitions.append(math.nan)
            else:
                self.transitions.append(float(np.mean(np.abs(patch - self._previous))))
        self._previous = patch
        self.frames += 1

    def series(self) -> np.ndarray:
        """Per-frame energy (mean of the transitions on either side; NaN where none is known)."""
        return frame_energy(np.asarray(self.transitions, dtype=np.float64), self.frames)


def frame_energy(transitions: np.ndarray, frames: int) -> np.ndarray:
    """Put transition values (between frames t-1 and t, index t-1) back on the frame grid."""
    out = np.full(frames, np.nan)
    if frames < 2:
        return out
    before = np.concatenate([[np.nan], transitions])  # transition ending at frame t
    after = np.concatenate([transitions, [np.nan]])  # transition starting at frame t
    both = np.stack([before, after])
    known = np.isfinite(both)
    count = known.sum(axis=0)
    total = np.where(known, both, 0.0).sum(axis=0)
    np.divide(total, count, out=out, where=count > 0)
    return out


class SpeechEnvelope:
    """Streaming speech-energy envelope: feed mono blocks in order, read the per-frame RMS at the end.

    The band-pass is a causal 4th-order Butterworth run block by block with its state carried over
    (so the result does not depend on the block size); its group delay in the speech band is a few
    milliseconds, far below a frame. It runs at the audio's own rate (the upper edge is kept below
    0.45 x the rate), so nothing is resampled and memory stays at one block plus a float a frame.
    """

    def __init__(self, sample_rate: int, fps: float):
        from scipy.signal import butter, sosfilt_zi

        if int(sample_rate) <= 0 or not fps > 0:
            raise ValueError(f"need a positive sample rate and fps, got {sample_rate} and {fps}")
        self.rate = int(sample_rate)
        self.fps = float(fps)
        low, high = SPEECH_BAND_HZ
        high = min(high, 0.45 * self.rate)
        self._sos = butter(4, [low, high], btype="bandpass", fs=self.rate, output="sos")
        self._state = sosfilt_zi(self._sos) * 0.0
        self._position = 0  # samples consumed
        self._sums: list[float] = []  # per frame: sum of squares
        self._counts: list[int] = []

    def add(self, block: np.ndarray) -> None:
        from scipy.signal import sosfilt

        block = np.asarray(block, dtype=np.float64).reshape(-1)
        if block.size == 0:
            return
        filtered, self._state = sosfilt(self._sos, block, zi=self._state)
        squares = filtered * filtered
        first = self._position
        self._position += block.size
        # frame of each sample: floor(sample * fps / rate), in exact integer arithmetic where possible
        frames = np.floor((np.arange(first, self._position) + 1e-9) * self.fps / self.rate).astype(np.int64)
        top = int(frames[-1]) + 1
        while len(self._sums) < top:
            self._sums.append(0.0)
            self._counts.append(0)
        base = int(frames[0])
        sums = np.bincount(frames - base, weights=squares)
        counts = np.bincount(frames - base)
        for i in range(sums.size):
            self._sums[base + i] += float(sums[i])
            self._counts[base + i] += int(counts[i])

    def values(self, frames: int) -> np.ndarray:
        """RMS per video frame ``[frames]``; frames past the end of the audio are 0 (silence)."""
        out = np.zeros(frames)
        n = min(frames, len(self._sums))
        sums = np.asarray(self._sums[:n])
        counts = np.asarray(self._counts[:n], dtype=np.float64)
        np.divide(sums, counts, out=out[:n], where=counts > 0)
        return np.sqrt(np.maximum(out, 0.0))


def speech_envelope(samples: np.ndarray, sample_rate: int, fps: float, frames: int, block: int = 1 << 16) -> np.ndarray:
    """RMS of the speech band over each video frame's interval, ``[frames]`` (0 past the audio's end)."""
    samples = np.asarray(samples).reshape(-1)
    envelope = SpeechEnvelope(sample_rate, fps)
    for start in range(0, samples.size, block):
        envelope.add(samples[start:start + block])
    return envelope.values(frames)


def file_speech_envelope(path, fps: float) -> SpeechEnvelope:
    """The envelope of a media file's first audio stream, decoded block by block (channels averaged).

    Raises AudioLoadError when the file has no (decodable) audio.
    """
    import av

    from ..audio.io import AudioLoadError, _frame_channels

    envelope = None
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioLoadError(f"{path} has no audio stream")
            for frame in container.decode(container.streams.audio[0]):
                if envelope is None:
                    envelope = SpeechEnvelope(frame.sample_rate, fps)
                elif frame.sample_rate != envelope.rate:
                    raise AudioLoadError(f"{path}: the audio changes sample rate mid-stream")
                envelope.add(_frame_channels(frame, str(path)).mean(axis=0))
    except av.error.FFmpegError as exc:
        raise AudioLoadError(f"cannot decode the audio of {path}: {exc}") from exc
    if envelope is None:
        raise AudioLoadError(f"{path}: the audio stream decodes to no samples")
    return envelope


def envelope_flux(envelope: np.ndarray) -> np.ndarray:
    """Rate of change of the envelope on the frame grid: ``|e[t + 1] - e[t - 1]| / 2`` (one-sided at the ends)."""
    envelope = np.asarray(envelope, dtype=np.float64)
    if envelope.size < 2:
        return np.zeros_like(envelope)
    return np.abs(np.gradient(envelope))


def lagged_correlation(visual: np.ndarray, audio: np.ndarray, max_lag: int,
                       counts: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pearson r of ``visual[t]`` with ``audio[t - k]`` for ``k`` in ``[-max_lag, max_lag]``.

    NaN entries of either series are left out pairwise; a lag with fewer than ``MIN_PAIRS`` pairs,
    or with a constant side, gets NaN. Returns (lags, r); ``counts``, if given, receives the
    number of pairs per lag.
    """
    visual = np.asarray(visual, dtype=np.float64)
    audio = np.asarray(audio, dtype=np.float64)
    n = min(visual.size, audio.size)
    visual, audio = visual[:n], audio[:n]
    lags = np.arange(-max_lag, max_lag + 1)
    r = np.full(lags.size, np.nan)
    for i, k in enumerate(lags):
        if k >= 0:
            v, a = visual[k:], audio[: n - k]
        else:
            v, a = visual[: n + k], audio[-k:]
        ok = np.isfinite(v) & np.isfinite(a)
        if counts is not None:
            counts.append(int(ok.sum()))
        if ok.sum() < MIN_PAIRS:
            continue
        v, a = v[ok] - v[ok].mean(), a[ok] - a[ok].mean()
        denominator = math.sqrt(float(v @ v) * float(a @ a))
        if denominator > 1e-12:
            r[i] = float(v @ a) / denominator
    return lags, r


@dataclass
class SyncProxyResult:
    """Outcome of the sync proxy; ``lag_frames`` > 0: the mouth follows the sound that many frames late."""

    peak_r: float | None
    lag_frames: int | None
    lag_ms: float | None
    r_at_zero: float | None
    max_lag: int
    frames_used: int
    lags: np.ndarray
    r: np.ndarray
    note: str = ""
    threshold: float | None = None  # 3 / sqrt(pairs at the peak): r of unrelated series stays below it

    @property
    def clear(self) -> bool:
        """Whether the peak stands out from what two unrelated series give (about 3 standard errors)."""
        return self.peak_r is not None and self.threshold is not None and self.peak_r >= self.threshold

    def to_dict(self) -> dict:
        return {
            "kind": "proxy (mouth-region motion energy vs speech-energy flux; not SyncNet)",
            "peak_r": _round(self.peak_r),
            "lag_frames": self.lag_frames,
            "lag_ms": _round(self.lag_ms, 1),
            "r_at_lag_0": _round(self.r_at_zero),
            "max_lag_frames": self.max_lag,
            "frames_used": self.frames_used,
            "clear_peak": self.clear,
            "clear_peak_threshold": _round(self.threshold),
            "note": self.note,
        }


def sync_proxy(motion: np.ndarray, flux: np.ndarray, fps: float, max_lag: int) -> SyncProxyResult:
    """Cross-correlate per-frame mouth motion energy with the speech flux; peak and its lag."""
    max_lag = max(0, int(max_lag))
    counts: list[int] = []
    lags, r = lagged_correlation(motion, flux, max_lag, counts)
    n = min(len(motion), len(flux))
    used = int(np.count_nonzero(np.isfinite(np.asarray(motion[:n], dtype=np.float64))))
    if not np.isfinite(r).any():
        note = ("not enough frames with a detected mouth (or the audio is constant) to correlate; "
                f"need at least {MIN_PAIRS} frames")
        return SyncProxyResult(None, None, None, None, max_lag, used, lags, r, note)
    best = int(np.nanargmax(r))
    zero = r[lags == 0][0]
    lag = int(lags[best])
    threshold = 3.0 / math.sqrt(counts[best])
    notes = []
    if r[best] < threshold:
        notes.append(f"no clear peak (r {r[best]:.2f} < {threshold:.2f} = 3/sqrt(frames)): the lag means nothing here")
    elif abs(lag) == max_lag and max_lag > 0:
        notes.append("the peak is at the edge of the searched lags; the true offset may be larger")
    return SyncProxyResult(float(r[best]), lag, 1000.0 * lag / fps, None if not np.isfinite(zero) else float(zero),
                           max_lag, used, lags, r, "; ".join(notes), threshold)


def _round(value, digits: int = 4):
    return None if value is None or not math.isfinite(value) else round(float(value), digits)
