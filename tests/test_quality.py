"""The quality report: identity consistency, the sync proxy, the emotion timeline, the plot.

Face models are synthetic ONNX graphs of the real signatures, built with the helpers of
test_face_models.py: the ArcFace stand-in (8x8 average pool + fixed random linear map, 112x112 ->
512) and an SCRFD stand-in that reports one scripted face, gated by the picture's brightness so
that black frames have no face. Photos: scikit-image's astronaut (the reference) and cameraman
(another person), warped so that his eyes, nose and mouth sit where the scripted detection puts
the landmarks.
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from support import load_module, need

onnx = need("onnx")
skdata = need("skimage.data")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from memo_pipeline.audio.emotions import schedule_frame_labels  # noqa: E402
from memo_pipeline.face import FaceAnalyzer, NoFaceError  # noqa: E402
from memo_pipeline.face.alignment import umeyama_similarity, warp_affine  # noqa: E402
from memo_pipeline.quality import (  # noqa: E402
    QualityReporter,
    analyze_video,
    clip_conditioning,
    emotion_segments,
    lagged_correlation,
    linear_drift,
    mouth_box_matrix,
    render_report,
    segments_to_frame_labels,
    segments_to_schedule,
    speech_envelope,
)
from memo_pipeline.quality.sync import frame_energy  # noqa: E402
from memo_pipeline.video_io import write_video  # noqa: E402


F = load_module("memo_test_face_models", Path(__file__).with_name("test_face_models.py"))
DET = F.DET  # 128: the stand-in detector's canvas

# Hand-marked landmarks (eyes, nose tip, mouth corners) of the 512x512 astronaut (test_face_models.KPS)
# and of the cameraman (his face is half turned; the points are approximate, which is all this needs).
ASTRONAUT_KPS = F.KPS
CAMERAMAN_KPS = np.array([[214, 150], [240, 150], [236, 170], [212, 185], [232, 186]], np.float32)


def build_gated_scrfd(path, kps_canvas, box_canvas):
    """SCRFD stand-in (fixed 128x128 input, nine outputs) reporting one face at the given canvas
    landmarks/box, with its score multiplied by clip((mean input + 0.95) * 100, 0, 1): a black
    picture (mean input -0.996) has no face, anything brighter has it."""
    stride = 8
    centre = np.array([(kps_canvas[2][0] // stride) * stride, (kps_canvas[2][1] // stride) * stride], np.float64)
    cell = int(centre[1] // stride) * (DET // stride) + int(centre[0] // stride)
    outs = F._empty_outputs()
    x1, y1, x2, y2 = box_canvas
    distances = np.array([centre[0] - x1, centre[1] - y1, x2 - centre[0], y2 - centre[1]]) / stride
    F._put(outs, stride, cell * 2, 0.9, distances, (np.asarray(kps_canvas) - centre) / stride)

    image = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, DET, DET])
    nodes = [helper.make_node("ReduceMean", ["input.1"], ["mean"], keepdims=0),
             helper.make_node("Add", ["mean", "offset"], ["shifted"]),
             helper.make_node("Mul", ["shifted", "gain"], ["steep"]),
             helper.make_node("Clip", ["steep", "zero", "one"], ["gate"]),
             helper.make_node("Mul", ["mean", "zero"], ["nothing"])]
    inits = [numpy_helper.from_array(np.array(v, np.float32), n)
             for n, v in (("offset", 0.95), ("gain", 100.0), ("zero", 0.0), ("one", 1.0))]
    results = []
    names = [f"{kind}_{s}" for kind in ("score", "bbox", "kps") for s in F.STRIDES]
    for i, (name, value) in enumerate(zip(names, outs)):
        inits.append(numpy_helper.from_array(value.astype(np.float32), f"{name}_value"))
        nodes.append(helper.make_node("Mul" if i < 3 else "Add", [f"{name}_value", "gate" if i < 3 else "nothing"], [name]))
        results.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(value.shape)))
    return F._save(helper.make_graph(nodes, "scrfd_gated_standin", [image], results, inits), path)


@pytest.fixture(scope="module")
def arcface_path(tmp_path_factory):
    rng = np.random.default_rng(7)  # the stand-in of test_face_models
    weight = (rng.normal(size=(588, 512)) / 10).astype(np.float32)
    bias = rng.normal(size=(512,)).astype(np.float32)
    return F.build_arcface(tmp_path_factory.mktemp("arcface") / "glintr100.onnx", weight, bias)


@pytest.fixture(scope="module")
def photo_analyzer(tmp_path_factory, arcface_path):
    """Detects the astronaut's face in 512x512 pictures (canvas = picture / 4)."""
    kps = ASTRONAUT_KPS / 4.0
    det = build_gated_scrfd(tmp_path_factory.mktemp("scrfd") / "scrfd_10g_bnkps.onnx", kps, (44.25, 16.5, 68.0, 40.25))
    return FaceAnalyzer(det, arcface_path, providers=["CPUExecutionProvider"], det_size=DET)


@pytest.fixture(scope="module")
def photos():
    astronaut = skdata.astronaut().astype(np.float32) / 255.0
    camera = np.repeat(skdata.camera()[..., None], 3, axis=-1).astype(np.float32) / 255.0
    to_astronaut = umeyama_similarity(CAMERAMAN_KPS, ASTRONAUT_KPS)[:2]
    cameraman = np.clip(warp_affine(camera, to_astronaut, 512, 512), 0, 1)
    return astronaut, cameraman


# ----------------------------------------------------------------------------- identity

def test_identity_is_one_for_the_reference_and_lower_for_another_face(photo_analyzer, photos):
    astronaut, cameraman = photos
    black = np.zeros_like(astronaut)
    reporter = QualityReporter(photo_analyzer, astronaut, fps=10.0, frames_per_clip=3)
    reporter.add_frames(np.stack([astronaut, astronaut, astronaut]))  # clip 0: the reference itself
    reporter.add_frames(torch.from_numpy(np.stack([cameraman, black, cameraman])))  # clip 1: someone else + no face
    reporter.add_frames((np.stack([astronaut[:, ::-1]]) * 255).astype(np.uint8))  # clip 2: mirrored, uint8
    report = reporter.finish()
    s = report.similarity
    assert np.all(s[:3] > 0.9999)
    assert np.isnan(s[4]) and not report.face_found[4]
    assert s[3] < 0.6 and s[5] < 0.6 and abs(s[3] - s[5]) < 1e-6
    assert s[6] < 0.9  # the mirrored face is not the same picture to ArcFace's alignment

    ident = report.identity_summary()
    assert ident["frames_no_face"] == 1 and ident["frames_scored"] == 6
    assert [c["no_face"] for c in ident["per_clip"]] == [0, 1, 0]
    assert ident["per_clip"][0]["mean"] == pytest.approx(1.0, abs=1e-4)
    assert ident["per_clip"][1]["mean"] == pytest.approx(s[3], abs=1e-4) and ident["per_clip"][1]["scored"] == 2
    assert ident["min"] == pytest.approx(np.nanmin(s), abs=1e-4) and ident["min_at_frame"] in (3, 5)
    assert ident["drift"]["slope_per_s"] < 0  # later frames are further from the reference
    data = json.loads(report.to_json())
    assert data["series"]["identity"][4] is None and len(data["series"]["identity"]) == 7


def test_identity_survives_the_video_codec(photo_analyzer, photos, tmp_path):
    astronaut, _ = photos
    path = tmp_path / "same.mp4"
    write_video(path, np.stack([astronaut] * 4), fps=8)
    report = analyze_video(path, photo_analyzer, astronaut, frames_per_clip=2)
    assert report.frames == 4 and report.fps == 8.0 and report.sync is None
    assert np.all(report.similarity > 0.98)
    assert any("no sync proxy" in note for note in report.notes)


def test_reference_without_a_face_is_an_error(photo_analyzer, photos):
    with pytest.raises(NoFaceError, match="reference image"):
        QualityReporter(photo_analyzer, np.zeros((512, 512, 3), np.float32), fps=25.0)
    haar = FaceAnalyzer()
    with pytest.raises(ValueError, match="ArcFace"):
        QualityReporter(haar, photos[0], fps=25.0)


def test_faceless_reference_when_allowed_is_marked_and_scores_nothing(photo_analyzer, photos):
    astronaut, _ = photos
    reporter = QualityReporter(photo_analyzer, np.zeros((512, 512, 3), np.float32), fps=10.0, frames_per_clip=2,
                               allow_faceless_reference=True)
    reporter.add_frames(np.stack([astronaut, astronaut]))
    report = reporter.finish()
    assert report.reference_face is None and np.isnan(report.similarity).all() and report.face_found.all()
    ident = report.to_dict()["identity"]
    assert ident["reference_face_found"] is False and ident["frames_scored"] == 0 and ident["mean"] is None
    assert "identity: NOT SCORED: no face found in the reference image" in report.text()
    assert np.asarray(render_report(report)).shape == (640, 1200, 3)
    found = QualityReporter(photo_analyzer, astronaut, fps=10.0)
    found.add_frames(np.stack([astronaut]))
    assert found.finish().to_dict()["identity"]["reference_face_found"] is True


def test_identity_every_n_frames_scores_only_those(photo_analyzer, photos):
    astronaut, cameraman = photos
    reporter = QualityReporter(photo_analyzer, astronaut, fps=10.0, frames_per_clip=4, identity_every=2)
    reporter.add_frames(np.stack([astronaut, cameraman, cameraman, astronaut]))
    report = reporter.finish()
    assert np.isfinite(report.similarity[[0, 2]]).all() and np.isnan(report.similarity[[1, 3]]).all()
    assert report.face_found.all() and report.identity_summary()["frames_no_face"] == 0


def test_linear_drift():
    t = np.arange(100) / 25.0
    y = 0.9 - 0.01 * t
    y[10] = np.nan
    drift = linear_drift(t, y)
    assert drift["slope_per_s"] == pytest.approx(-0.01, abs=1e-6) and drift["slope_per_min"] == pytest.approx(-0.6)
    assert drift["change"] == pytest.approx(-0.01 * t[-1], abs=1e-4)
    assert linear_drift(t[:1], y[:1])["slope_per_s"] is None


# ----------------------------------------------------------------------------- sync proxy

FPS = 25.0
RATE = 16000
# The face of the synthetic talking-head frames, 128x128 pictures = canvas coordinates.
HEAD_KPS = np.array([[54.0, 44.0], [74.0, 44.0], [64.0, 54.0], [56.0, 66.0], [72.0, 66.0]])


@pytest.fixture(scope="module")
def head_analyzer(tmp_path_factory, arcface_path):
    det = build_gated_scrfd(tmp_path_factory.mktemp("scrfd_head") / "det.onnx", HEAD_KPS, (40.0, 24.0, 88.0, 84.0))
    return FaceAnalyzer(det, arcface_path, providers=["CPUExecutionProvider"], det_size=DET)


def syllables(frames: int, seed: int) -> np.ndarray:
    """A speech-like envelope per frame: raised-cosine syllables of 3-9 frames, pauses between."""
    rng = np.random.default_rng(seed)
    env = np.zeros(frames)
    position = int(rng.integers(0, 5))
    while position < frames:
        width = int(rng.integers(3, 10))
        bump = np.sin(np.linspace(0, np.pi, width + 2)[1:-1]) ** 2 * rng.uniform(0.4, 1.0)
        env[position:position + width] = bump[: max(0, frames - position)]
        position += width + int(rng.integers(0, 6))
    return env


def talking_head(envelope: np.ndarray, lag: int, seed: int = 0) -> np.ndarray:
    """uint8 frames [n, 128, 128, 3]: a still head whose mouth brightness is envelope[t - lag]."""
    n = envelope.size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:128, 0:128]
    base = np.full((128, 128, 3), 0.35, np.float32)
    skin = ((x - 64) / 30.0) ** 2 + ((y - 56) / 38.0) ** 2 < 1
    base[skin] = (0.85, 0.68, 0.55)
    for ex, ey in HEAD_KPS[:2]:
        base[(x - ex) ** 2 + (y - ey) ** 2 < 9] = 0.1
    mouth = (abs(x - 64) <= 7) & (y >= 62) & (y <= 71)
    frames = np.empty((n, 128, 128, 3), np.float32)
    for t in range(n):
        source = t - lag
        level = envelope[source] if 0 <= source < n else 0.0
        frame = base.copy()
        frame[mouth] = 0.75 - 0.65 * level  # the mouth opens (darkens) with the sound
        frames[t] = frame + rng.normal(0, 0.01, size=frame.shape)
    return (np.clip(frames, 0, 1) * 255).round().astype(np.uint8)


def speech(envelope: np.ndarray, seed: int = 1) -> np.ndarray:
    """Noise in the speech band whose amplitude follows the per-frame envelope (16 kHz)."""
    per_frame = int(RATE / FPS)
    rng = np.random.default_rng(seed)
    amplitude = np.repeat(envelope, per_frame)
    return (0.3 * amplitude * rng.normal(size=amplitude.size) + 1e-4 * rng.normal(size=amplitude.size)).astype(np.float32)


@pytest.mark.parametrize("lag", [0, 2, 5, -3, -7])
def test_sync_proxy_recovers_a_known_lag(head_analyzer, lag):
    envelope = syllables(250, seed=abs(lag) + 3)  # 10 s at 25 fps
    frames = talking_head(envelope, lag)
    reporter = QualityReporter(head_analyzer, frames[0], FPS, frames_per_clip=16, identity_every=50)  # sync only
    for start in range(0, len(frames), 16):
        reporter.add_frames(frames[start:start + 16])
    report = reporter.finish((speech(envelope), RATE))
    assert report.sync.lag_frames is not None and abs(report.sync.lag_frames - lag) <= 1, report.sync.to_dict()
    assert report.sync.peak_r > 0.5 and report.sync.frames_used == 250 and report.sync.clear
    if lag:
        assert report.sync.r_at_zero < report.sync.peak_r
    summary = report.to_dict()["sync_proxy"]
    assert "proxy" in summary["kind"] and "not SyncNet" in summary["kind"]
    assert "proxy" in report.text().lower()


def test_sync_proxy_through_an_mp4_with_its_own_audio(head_analyzer, tmp_path):
    """The CLI path: H.264 video + AAC audio in one file, decoded clip by clip."""
    envelope = syllables(200, seed=11)
    lag = 3
    frames = talking_head(envelope, lag)
    path = tmp_path / "talking.mp4"
    write_video(path, frames, fps=FPS, audio=(speech(envelope), RATE))
    report = analyze_video(path, head_analyzer, frames[0], frames_per_clip=16, identity_every=50)
    assert report.frames == 200 and abs(report.sync.lag_frames - lag) <= 1 and report.sync.peak_r > 0.5


def test_sync_proxy_with_unrelated_audio_finds_no_clear_peak(head_analyzer):
    frames = talking_head(syllables(250, seed=21), 0)
    reporter = QualityReporter(head_analyzer, frames[0], FPS, identity_every=50)
    reporter.add_frames(frames)
    report = reporter.finish((speech(syllables(250, seed=22)), RATE))  # another "sentence"
    assert not report.sync.clear and report.sync.peak_r < report.sync.threshold
    assert "no clear peak" in report.sync.note and "no clear peak" in report.text()


def test_sync_proxy_without_a_mouth_says_so(head_analyzer):
    envelope = syllables(60, seed=2)
    frames = talking_head(envelope, 0)
    reporter = QualityReporter(head_analyzer, frames[0], FPS)
    reporter.add_frames(np.zeros_like(frames))  # no face anywhere
    report = reporter.finish((speech(envelope), RATE))
    assert report.sync.peak_r is None and "not enough frames" in report.sync.note
    assert report.identity_summary()["frames_no_face"] == 60
    assert "not computed" in report.text()


def test_lagged_correlation_convention_and_gaps():
    rng = np.random.default_rng(0)
    audio = rng.normal(size=300)
    visual = np.roll(audio, 4)  # visual[t] = audio[t - 4]
    visual[:4] = np.nan
    visual[100:110] = np.nan
    lags, r = lagged_correlation(visual, audio, 10)
    assert lags[np.nanargmax(r)] == 4 and np.nanmax(r) == pytest.approx(1.0)
    assert np.all(np.isnan(lagged_correlation(np.full(5, np.nan), audio[:5], 2)[1]))


def test_frame_energy_centres_the_transitions():
    np.testing.assert_allclose(frame_energy(np.array([1.0, 3.0, np.nan, 5.0]), 5), [1.0, 2.0, 3.0, 5.0, 5.0])
    assert np.isnan(frame_energy(np.array([]), 1)).all()


def test_speech_envelope_follows_the_per_frame_level():
    envelope = np.repeat([0.0, 1.0, 0.25, 0.5], 10)
    measured = speech_envelope(speech(envelope), RATE, FPS, envelope.size + 3)
    assert measured.shape == (43,) and np.all(measured[-3:] == 0)  # past the end of the audio: silent
    levels = [measured[i * 10 + 2:i * 10 + 8].mean() for i in range(4)]
    assert levels[0] < 0.02 * levels[1] and levels[2] / levels[1] == pytest.approx(0.25, rel=0.15)
    assert levels[3] / levels[1] == pytest.approx(0.5, rel=0.15)


def test_speech_envelope_streams_block_by_block():
    audio = speech(syllables(120, seed=4))
    whole = speech_envelope(audio, RATE, FPS, 120, block=audio.size)
    np.testing.assert_allclose(speech_envelope(audio, RATE, FPS, 120, block=777), whole, rtol=1e-9, atol=1e-12)
    # 44.1 kHz stereo gives the same envelope as 16 kHz mono of the same sound, up to resampling
    from scipy.signal import resample_poly

    stereo = np.stack([resample_poly(audio, 441, 160)] * 2)
    measured = speech_envelope(stereo.mean(axis=0), 44100, FPS, 120)
    assert np.corrcoef(measured, whole)[0, 1] > 0.99


def test_mouth_box_is_in_face_units():
    box = mouth_box_matrix(HEAD_KPS)
    scaled = mouth_box_matrix(HEAD_KPS * 3)
    np.testing.assert_allclose(scaled[:, :2], box[:, :2] * 3)  # the box grows with the face
    rotated_kps = HEAD_KPS @ np.array([[0.0, 1.0], [-1.0, 0.0]])  # a quarter turn
    rotated = mouth_box_matrix(rotated_kps)
    assert np.linalg.norm(rotated[:, 0]) == pytest.approx(np.linalg.norm(box[:, 0]))
    assert mouth_box_matrix(np.zeros((5, 2))) is None


# ----------------------------------------------------------------------------- emotion timeline

def test_emotion_timeline_round_trips_a_schedule():
    fps = 30.0
    labels = schedule_frame_labels("0:neutral, 1.5:happy, 48f:sad, 3.2:surprised", 128, fps)
    segments = emotion_segments(labels)
    assert [(s.start_frame, s.end_frame, s.name) for s in segments] == [
        (0, 45, "neutral"), (45, 48, "happy"), (48, 96, "sad"), (96, 128, "surprised")]
    assert segments[1].to_dict(fps)["start_s"] == 1.5
    assert torch.equal(segments_to_frame_labels(segments), labels)
    schedule = segments_to_schedule(segments)
    assert schedule == "0f:neutral, 45f:happy, 48f:sad, 96f:surprised"
    assert torch.equal(schedule_frame_labels(schedule, 128, fps), labels)
    # the per-clip labels are what each clip was conditioned on (most frequent; ties -> smaller index)
    assert clip_conditioning(labels, 16) == [4, 4, 4, 6, 6, 6, 7, 7]
    assert clip_conditioning(torch.tensor([3, 3, 4, 4]), 4) == [3]
    with pytest.raises(ValueError, match="0..8"):
        emotion_segments(torch.tensor([1, 9]))


def test_report_emotion_part_stops_at_the_video_end(head_analyzer):
    envelope = syllables(40, seed=5)
    frames = talking_head(envelope, 0)
    reporter = QualityReporter(head_analyzer, frames[0], FPS, frames_per_clip=16)
    reporter.add_frames(frames[:40])
    labels = schedule_frame_labels("0:neutral, 0.8:happy", 48, FPS)  # padded to 3 clips of 16, as generation does
    report = reporter.finish((speech(envelope), RATE), labels, "schedule")
    emotion = report.to_dict()["emotion"]
    assert emotion["segments"][-1]["end_frame"] == 40 and emotion["clip_labels"] == ["neutral", "happy", "happy"]
    assert "emotion timeline: 0.00-0.80 s neutral; 0.80-1.60 s happy" in report.text()


# ----------------------------------------------------------------------------- plot

def test_plot_shows_the_three_parts(head_analyzer, photo_analyzer, photos):
    envelope = syllables(100, seed=9)
    frames = talking_head(envelope, 1)
    reporter = QualityReporter(head_analyzer, frames[0], FPS, frames_per_clip=16)
    reporter.add_frames(frames[:50])
    reporter.add_frames(np.zeros_like(frames[50:55]))
    reporter.add_frames(frames[55:])
    report = reporter.finish((speech(envelope), RATE), schedule_frame_labels("0:neutral, 2:happy", 100, FPS))
    image = np.asarray(render_report(report))
    assert image.shape == (640, 1200, 3) and image.dtype == np.uint8
    colours = {tuple(c) for c in image.reshape(-1, 3)[::7]}
    from memo_pipeline.quality import plot

    for colour in (plot.IDENTITY, plot.NO_FACE, plot.MOTION, plot.FLUX, plot.EMOTION_COLOURS["happy"],
                   plot.EMOTION_COLOURS["neutral"]):
        assert colour in colours, colour
    # without audio and emotions the plot still renders and says what is missing
    bare = QualityReporter(photo_analyzer, photos[0], 10.0)
    bare.add_frames(np.stack([photos[0]]))
    assert np.asarray(render_report(bare.finish())).shape == (640, 1200, 3)
    assert math.isfinite(report.to_dict()["identity"]["mean"])
