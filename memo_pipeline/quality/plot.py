"""The report as one picture, drawn with PIL (no plotting library).

Three panels share the time axis: identity similarity per frame (with per-clip means, clip
boundaries, the drift line and red ticks for frames without a face); the sync proxy's two
signals, mouth motion energy and speech-energy flux, each scaled to its own 99th percentile; and
the emotion segments as a coloured band. Long videos are drawn per pixel column (mean line over
a min-max band), so the picture costs the same for any length.
"""

from __future__ import annotations

import math

import numpy as np

from ..audio.emotions import EMOTION_LABELS

WIDTH, HEIGHT = 1200, 640
LEFT, RIGHT = 70, 20
BACKGROUND = (255, 255, 255)
AXIS = (60, 60, 60)
GRID = (225, 225, 225)
CLIP_LINE = (200, 200, 215)
IDENTITY = (30, 90, 200)
IDENTITY_BAND = (190, 205, 240)
CLIP_MEAN = (20, 40, 110)
DRIFT = (230, 120, 0)
NO_FACE = (210, 30, 30)
MOTION = (200, 60, 140)
FLUX = (40, 150, 90)
EMOTION_COLOURS = {
    "angry": (214, 39, 40), "disgusted": (140, 86, 75), "fearful": (148, 103, 189), "happy": (255, 187, 30),
    "neutral": (170, 170, 170), "other": (23, 190, 207), "sad": (31, 119, 180), "surprised": (44, 160, 44),
    "unknown": (90, 90, 90),
}


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def _columns(values: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel column: mean, min, max of the finite values falling in it (NaN where none)."""
    values = np.asarray(values, dtype=np.float64)
    n = values.size
    column = np.minimum((np.arange(n) * width) // max(n, 1), width - 1)
    mean = np.full(width, np.nan)
    low = np.full(width, np.nan)
    high = np.full(width, np.nan)
    ok = np.isfinite(values)
    if ok.any():
        c, v = column[ok], values[ok]
        counts = np.bincount(c, minlength=width)
        sums = np.bincount(c, weights=v, minlength=width)
        has = counts > 0
        mean[has] = sums[has] / counts[has]
        low_all = np.full(width, np.inf)
        high_all = np.full(width, -np.inf)
        np.minimum.at(low_all, c, v)
        np.maximum.at(high_all, c, v)
        low[has], high[has] = low_all[has], high_all[has]
    return mean, low, high


def _polyline(draw, xs, ys, colour, width=2):
    """Draw the finite runs of (xs, ys) as lines (gaps where ys is NaN)."""
    run = []
    for x, y in zip(xs, ys):
        if math.isfinite(y):
            run.append((float(x), float(y)))
        else:
            if len(run) > 1:
                draw.line(run, fill=colour, width=width)
            elif len(run) == 1:
                draw.point(run[0], fill=colour)
            run = []
    if len(run) > 1:
        draw.line(run, fill=colour, width=width)
    elif len(run) == 1:
        draw.point(run[0], fill=colour)


def render_report(report, width: int = WIDTH, height: int = HEIGHT):
    """A PIL RGB image of ``report`` (a :class:`QualityReport`)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    small, normal = _font(12), _font(14)
    plot_w = width - LEFT - RIGHT
    frames, fps = report.frames, report.fps
    duration = frames / fps

    def x_of(frame: float) -> float:
        return LEFT + frame / max(frames, 1) * plot_w

    top_id, bottom_id = 52, int(height * 0.52)
    top_sync, bottom_sync = bottom_id + 44, int(height * 0.84)
    top_emo, bottom_emo = bottom_sync + 26, bottom_sync + 50

    ident = report.identity_summary()
    draw.text((LEFT, 8), "MEMO quality report", fill=AXIS, font=normal)
    if not ident["reference_face_found"]:
        head = "identity: NOT SCORED, no face in the reference image"
    elif ident["mean"] is None:
        head = f"identity: no frame scored ({ident['frames_no_face']}/{frames} without a face)"
    else:
        head = f"identity mean {ident['mean']:.3f}  min {ident['min']:.3f}  no face: {ident['frames_no_face']}/{frames} frames"
    draw.text((LEFT + 170, 8), head, fill=IDENTITY, font=normal)

    # --- identity panel
    s = report.similarity
    finite = s[np.isfinite(s)]
    # From just below the lowest score to 1 (a 0..1 axis flattens what matters: 0.95 vs 0.85).
    low = 0.0 if finite.size == 0 else max(-1.0, min(0.9, math.floor((float(finite.min()) - 0.02) * 10) / 10))
    high = 1.0

    def y_id(v):
        return bottom_id - (v - low) / (high - low) * (bottom_id - top_id)

    tick_step = 0.02 if high - low <= 0.2 else (0.1 if high - low <= 1.0 else 0.2)
    for tick in np.arange(low, high + 1e-9, tick_step):
        y = y_id(tick)
        draw.line([(LEFT, y), (LEFT + plot_w, y)], fill=GRID)
        draw.text((8, y - 7), f"{tick:.2f}", fill=AXIS, font=small)
    clips = report.clips
    if clips > 1:
        step = max(1, math.ceil(clips / 120))  # at most ~120 boundary lines
        for clip in range(1, clips, step):
            x = x_of(clip * report.frames_per_clip)
            draw.line([(x, top_id), (x, bottom_sync)], fill=CLIP_LINE)
    cols = min(plot_w, max(frames, 1))
    mean, lo, hi = _columns(s, cols)
    xs = LEFT + (np.arange(cols) + 0.5) / cols * plot_w
    for x, a, b in zip(xs, lo, hi):
        if math.isfinite(a) and b > a:
            draw.line([(x, y_id(b)), (x, y_id(a))], fill=IDENTITY_BAND)
    _polyline(draw, xs, [y_id(v) if math.isfinite(v) else math.nan for v in mean], IDENTITY, 2)
    for clip in ident["per_clip"]:
        if clip["mean"] is not None:
            start = clip["clip"] * report.frames_per_clip
            y = y_id(clip["mean"])
            draw.line([(x_of(start), y), (x_of(start + clip["frames"]), y)], fill=CLIP_MEAN, width=1)
    drift = ident["drift"]
    if drift["fit_start"] is not None:
        scored = np.flatnonzero(np.isfinite(s))
        draw.line([(x_of(scored[0]), y_id(drift["fit_start"])), (x_of(scored[-1] + 1), y_id(drift["fit_end"]))],
                  fill=DRIFT, width=2)
    missing = np.flatnonzero(~report.face_found)
    for frame in missing[:: max(1, missing.size // plot_w + 1)]:
        x = x_of(frame + 0.5)
        draw.line([(x, bottom_id - 8), (x, bottom_id)], fill=NO_FACE, width=2)
    draw.rectangle([LEFT, top_id, LEFT + plot_w, bottom_id], outline=AXIS)
    legend = [("identity (ArcFace cosine) per frame", IDENTITY), ("clip mean", CLIP_MEAN), ("drift fit", DRIFT),
              ("no face", NO_FACE), ("clip boundary", CLIP_LINE)]
    _legend(draw, LEFT, top_id - 18, legend, small, horizontal=True)

    # --- sync proxy panel
    draw.rectangle([LEFT, top_sync, LEFT + plot_w, bottom_sync], outline=AXIS)
    if report.sync is not None and report.flux is not None:
        for values, colour in ((report.motion, MOTION), (report.flux, FLUX)):
            finite = values[np.isfinite(values)]
            scale = float(np.percentile(finite, 99)) if finite.size else 0.0
            if scale <= 0:
                continue
            m, _, _ = _columns(np.clip(values / scale, 0, 1.05), cols)
            _polyline(draw, xs, [bottom_sync - v * (bottom_sync - top_sync - 4) if math.isfinite(v) else math.nan
                                 for v in m], colour, 1 if cols >= plot_w else 2)
        sync = report.sync
        if sync.peak_r is not None:
            text = (f"SYNC PROXY (not SyncNet): peak r {sync.peak_r:.2f} at lag {sync.lag_frames:+d} frames "
                    f"({sync.lag_ms:+.0f} ms, + = mouth late)" + ("" if sync.clear else " - NO CLEAR PEAK"))
        else:
            text = f"SYNC PROXY: not computed - {sync.note}"
        draw.text((LEFT, top_sync - 18), text, fill=AXIS, font=normal)
        _legend(draw, LEFT + draw.textlength(text, font=normal) + 30, top_sync - 17,
                [("mouth motion energy", MOTION), ("speech-energy flux", FLUX)],
                small, horizontal=True)
    else:
        draw.text((LEFT, top_sync - 18), "SYNC PROXY: no audio given", fill=AXIS, font=normal)

    # --- emotion band
    draw.text((LEFT, top_emo - 18), "emotion (labels used for generation)", fill=AXIS, font=normal)
    if report.emotion is not None:
        for seg in report.emotion["segments"]:
            x0, x1 = x_of(seg["start_frame"]), x_of(seg["end_frame"])
            colour = EMOTION_COLOURS.get(seg["label"], (90, 90, 90))
            draw.rectangle([x0, top_emo, max(x0 + 1, x1), bottom_emo], fill=colour)
            label_w = draw.textlength(seg["label"], font=small)
            if x1 - x0 > label_w + 6:
                draw.text((x0 + 3, top_emo + 5), seg["label"], fill=(0, 0, 0), font=small)
        seen = []
        for seg in report.emotion["segments"]:
            if seg["label"] not in seen:
                seen.append(seg["label"])
        _legend(draw, LEFT + 280, top_emo - 17, [(name, EMOTION_COLOURS[name]) for name in seen
                                                 if name in EMOTION_LABELS], small, horizontal=True)
    else:
        draw.rectangle([LEFT, top_emo, LEFT + plot_w, bottom_emo], outline=GRID)
        draw.text((LEFT + 6, top_emo + 5), "no emotion labels given", fill=AXIS, font=small)

    # --- time axis
    axis_y = bottom_emo + 6
    step = _nice_step(duration)
    t = 0.0
    while t <= duration + 1e-9:
        x = LEFT + t / max(duration, 1e-9) * plot_w
        draw.line([(x, axis_y), (x, axis_y + 4)], fill=AXIS)
        draw.text((x - 10, axis_y + 6), _time_label(t, step), fill=AXIS, font=small)
        t += step
    draw.text((LEFT + plot_w - 60, axis_y + 20), "time (s)", fill=AXIS, font=small)
    return image


def _legend(draw, x, y, items, font, horizontal=False):
    """Colour swatches with their names, in a row (``horizontal``) or a column."""
    for text, colour in items:
        draw.rectangle([x, y + 3, x + 14, y + 11], fill=colour)
        draw.text((x + 18, y), text, fill=AXIS, font=font)
        if horizontal:
            x += draw.textlength(text, font=font) + 30
        else:
            y += 16
    return x


def _nice_step(duration: float) -> float:
    raw = max(duration, 1e-3) / 10
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if raw <= factor * power:
            return factor * power
    return 10 * power


def _time_label(t: float, step: float) -> str:
    if step >= 60 and t >= 60:
        return f"{int(t // 60)}:{int(t % 60):02d}"
    return f"{t:g}" if step >= 1 else f"{t:.1f}"


def report_image_array(report, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """The plot as float32 ``[H, W, 3]`` in [0, 1] (ComfyUI IMAGE layout without the batch axis)."""
    return np.asarray(render_report(report, width, height), dtype=np.float32) / 255.0
