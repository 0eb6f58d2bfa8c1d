"""SCRFD decoding and the ArcFace embedding path, on small synthetic ONNX models.

The SCRFD stand-in has the real model's interface (one ``[1, 3, H, W]`` input, nine outputs:
scores, box distances and keypoint offsets for strides 8/16/32) but returns outputs chosen here,
so every decoded number can be checked against a hand computation. The ArcFace stand-in has
glintr100's ``[N, 3, 112, 112] -> [N, 512]`` signature: an 8x8 average pool followed by a fixed
random linear map, which a numpy forward pass reproduces exactly.
"""

import warnings

import numpy as np
import pytest
from support import need

onnx = need("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from memo_pipeline.face import (  # noqa: E402
    ARCFACE_TEMPLATE,
    ArcFaceEmbedder,
    Face,
    FaceAnalyzer,
    FaceModelError,
    NoFaceError,
    ScrfdDetector,
    nms,
)
from memo_pipeline.face.alignment import estimate_norm  # noqa: E402
from memo_pipeline.face.scrfd import anchor_centers, letterbox  # noqa: E402

DET = 128  # detector canvas used in these tests: 16x16, 8x8 and 4x4 cells
STRIDES = (8, 16, 32)
CELLS = {s: (DET // s) ** 2 * 2 for s in STRIDES}


def _save(graph, path):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def build_scrfd(path, outputs, input_hw=("height", "width")):
    """A model returning ``outputs`` (list of arrays) plus 0 * mean(input), so the input is really read."""
    image = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, *input_hw])
    nodes = [
        helper.make_node("ReduceMean", ["input.1"], ["mean"], keepdims=0),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
    ]
    initializers = [numpy_helper.from_array(np.array(0.0, np.float32), "zero")]
    names = [f"{kind}_{s}" for kind in ("score", "bbox", "kps") for s in STRIDES][: len(outputs)]
    results = []
    for name, value in zip(names, outputs):
        initializers.append(numpy_helper.from_array(value.astype(np.float32), f"{name}_value"))
        nodes.append(helper.make_node("Add", [f"{name}_value", "nothing"], [name]))
        results.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(value.shape)))
    return _save(helper.make_graph(nodes, "scrfd_standin", [image], results, initializers), path)


def build_arcface(path, weight, bias, input_shape=("None", 3, 112, 112)):
    image = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, list(input_shape))
    embedding = helper.make_tensor_value_info("683", TensorProto.FLOAT, ["None", weight.shape[1]])
    nodes = [
        helper.make_node("AveragePool", ["input.1"], ["pooled"], kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "weight"], ["projected"]),
        helper.make_node("Add", ["projected", "bias"], ["683"]),
    ]
    inits = [numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias")]
    return _save(helper.make_graph(nodes, "arcface_standin", [image], [embedding], inits), path)


def arcface_forward(blob, weight, bias):
    """numpy version of the stand-in network."""
    n = blob.shape[0]
    pooled = blob.reshape(n, 3, 14, 8, 14, 8).mean(axis=(3, 5))
    return pooled.reshape(n, -1) @ weight + bias


def _empty_outputs(batch_axis=False):
    outs = [np.zeros((CELLS[s], 1)) for s in STRIDES]
    outs += [np.zeros((CELLS[s], 4)) for s in STRIDES]
    outs += [np.zeros((CELLS[s], 10)) for s in STRIDES]
    return [o[None] for o in outs] if batch_axis else outs


def _put(outs, stride, index, score, dist, kps):
    level = STRIDES.index(stride)
    outs[level][index, 0] = score
    outs[3 + level][index] = dist
    outs[6 + level][index] = np.ravel(kps)


KPS_A = np.array([[-0.5, -0.5], [0.5, -0.5], [0.0, 0.0], [-0.4, 0.6], [0.4, 0.6]])


def scripted_outputs(batch_axis=False):
    """Five candidate faces; see test_scrfd_decoding for what must come out."""
    outs = _empty_outputs()
    # A: stride 16, row 2, column 3, second anchor -> index (2 * 8 + 3) * 2 + 1, centre (48, 32).
    _put(outs, 16, 39, 0.9, [1.0, 1.5, 2.0, 2.5], KPS_A)
    # B: stride 8, row 5, column 6, first anchor, centre (48, 40): the same box as A, lower score.
    _put(outs, 8, (5 * 16 + 6) * 2, 0.8, [2.0, 4.0, 4.0, 4.0], np.zeros((5, 2)))
    # C: stride 32, row 3, column 3, centre (96, 96), no overlap with A.
    _put(outs, 32, (3 * 4 + 3) * 2, 0.7, [0.5, 0.5, 0.5, 0.5], KPS_A / 4)
    # D: below the 0.5 threshold.
    _put(outs, 8, 10, 0.49, [1.0, 1.0, 1.0, 1.0], np.zeros((5, 2)))
    # E: exactly at the threshold (kept), first cell of stride 16, centre (0, 0).
    _put(outs, 16, 0, 0.5, [0.25, 0.25, 0.5, 0.5], np.zeros((5, 2)))
    return [o[None] for o in outs] if batch_axis else outs


@pytest.fixture(scope="module")
def scrfd_path(tmp_path_factory):
    return build_scrfd(tmp_path_factory.mktemp("scrfd") / "scrfd_10g_bnkps.onnx", scripted_outputs())


@pytest.fixture(scope="module")
def arcface_parts(tmp_path_factory):
    rng = np.random.default_rng(7)
    weight = (rng.normal(size=(588, 512)) / 10).astype(np.float32)
    bias = rng.normal(size=(512,)).astype(np.float32)
    path = build_arcface(tmp_path_factory.mktemp("arcface") / "glintr100.onnx", weight, bias)
    return path, weight, bias


def _image(height=128, width=256, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- SCRFD


def test_anchor_layout():
    centres = anchor_centers(2, 3, 16)
    expected = [[0, 0], [0, 0], [16, 0], [16, 0], [32, 0], [32, 0], [0, 16], [0, 16], [16, 16], [16, 16], [32, 16], [32, 16]]
    np.testing.assert_array_equal(centres, expected)


@pytest.mark.parametrize("batch_axis", [False, True])
def test_scrfd_decoding(tmp_path, batch_axis):
    path = build_scrfd(tmp_path / "det.onnx", scripted_outputs(batch_axis))
    detector = ScrfdDetector(path, providers=["CPUExecutionProvider"], det_size=DET)
    faces = detector.detect(_image())  # 256x128 image -> 128x64 on the canvas: det scale 0.5
    assert [round(f.score, 6) for f in faces] == [0.9, 0.7, 0.5]

    a, c, e = faces
    # A: centre (48, 32), distances (1, 1.5, 2, 2.5) * 16, back to the image by / 0.5.
    np.testing.assert_allclose(a.box, np.array([48 - 16, 32 - 24, 48 + 32, 32 + 40]) / 0.5, atol=1e-4)
    np.testing.assert_allclose(a.kps_array(), (np.array([48, 32]) + KPS_A * 16) / 0.5, atol=1e-4)
    np.testing.assert_allclose(c.box, np.array([80, 80, 112, 112]) / 0.5, atol=1e-4)
    np.testing.assert_allclose(e.box, np.array([-4, -4, 8, 8]) / 0.5, atol=1e-4)


def test_analyzer_orders_by_area_and_selects_by_index(scrfd_path):
    analyzer = FaceAnalyzer(detector_path=scrfd_path, det_size=DET, providers=["CPUExecutionProvider"])
    faces = analyzer.detect(_image())
    assert [round(f.score, 6) for f in faces] == [0.9, 0.7, 0.5]  # also largest first here
    assert analyzer.select(_image(), index=1).score == pytest.approx(0.7)
    with pytest.raises(NoFaceError, match="index 3.*3 face"):
        analyzer.select(_image(), index=3, name="group.jpg")


def test_scrfd_feeds_insightfaces_blob(scrfd_path):
    """Letterbox and normalisation match insightface's cv2-based preprocessing (to one 8-bit level)."""
    cv2 = need("cv2")
    detector = ScrfdDetector(scrfd_path, providers=["CPUExecutionProvider"], det_size=DET)
    seen = {}
    session = detector.session

    class Spy:
        def run(self, names, feed):
            seen.update(feed)
            return session.run(names, feed)

    detector.session = Spy()
    image = _image(170, 300, seed=4)  # a non-integer scale: 300x170 -> 128x72
    detector.detect(image)
    blob = seen["input.1"]
    assert blob.shape == (1, 3, DET, DET) and blob.dtype == np.float32

    resized = cv2.resize(image[..., ::-1], (128, 72))  # insightface works on BGR ...
    canvas = np.zeros((DET, DET, 3), np.uint8)
    canvas[:72, :128] = resized
    reference = cv2.dnn.blobFromImage(canvas, 1.0 / 128, (DET, DET), (127.5, 127.5, 127.5), swapRB=True)  # ... to RGB
    assert np.array_equal(blob, reference)  # with OpenCV present, the very pixels insightface feeds
    letterboxed, scale = letterbox(image.astype(np.float32) / 255, DET, DET)
    assert scale == pytest.approx(72 / 170)
    assert np.all(letterboxed[72:] == 0)


def test_letterbox_without_opencv_is_within_a_level(monkeypatch):
    cv2 = pytest.importorskip("cv2")
    image = _image(170, 300, seed=4)
    exact, _ = letterbox(image.astype(np.float32) / 255, DET, DET)
    monkeypatch.setenv("MEMO_NO_OPENCV", "1")
    fallback, _ = letterbox(image.astype(np.float32) / 255, DET, DET)
    assert np.abs(fallback - exact).max() <= 1 and np.abs(fallback - exact).mean() < 0.2
    assert np.array_equal(exact[:72, :128], cv2.resize(image, (128, 72)).astype(np.float32))


def _insightface_nms_order(boxes, scores, threshold):
    """insightface's SCRFD.detect + nms, written out: float32 rows sorted by `argsort()[::-1]`,
    then sorted again inside nms the same way; indices mapped back to the input rows."""
    dets = np.hstack([boxes, scores[:, None]]).astype(np.float32)
    first = dets[:, 4].argsort()[::-1]
    dets = dets[first]
    x1, y1, x2, y2, s = dets.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order, keep = s.argsort()[::-1], []
    while order.size:
        i = order[0]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[order[1:]]) - np.maximum(x1[i], x1[order[1:]]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[order[1:]]) - np.maximum(y1[i], y1[order[1:]]) + 1)
        inter = w * h
        order = order[np.where(inter / (areas[i] + areas[order[1:]] - inter) <= threshold)[0] + 1]
    return first[keep]


def test_nms_breaks_ties_in_insightfaces_order():
    rng = np.random.default_rng(7)
    differs = 0
    for _ in range(300):
        n = int(rng.integers(2, 40))
        xy = rng.integers(0, 40, (n, 2)).astype(np.float32)
        boxes = np.hstack([xy, xy + rng.integers(8, 20, (n, 2))]).astype(np.float32)
        scores = rng.choice(np.array([0.6, 0.7, 0.8], np.float32), n)  # many exact ties
        expected = _insightface_nms_order(boxes, scores, 0.4)
        np.testing.assert_array_equal(nms(boxes, scores, 0.4), expected)
        stable = np.argsort(-scores, kind="stable")
        differs += not np.array_equal(stable[: len(expected)], expected)
    assert differs > 0  # the cases above do exercise ties where the order matters


def test_fixed_input_size_wins_over_det_size(tmp_path):
    path = build_scrfd(tmp_path / "fixed.onnx", scripted_outputs(), input_hw=(DET, DET))
    detector = ScrfdDetector(path, providers=["CPUExecutionProvider"], det_size=640)
    assert (detector.det_width, detector.det_height) == (DET, DET)
    assert len(detector.detect(_image())) == 3


def test_nms_keeps_overlaps_up_to_the_threshold():
    boxes = np.array([[0, 0, 9, 9], [5, 0, 14, 9], [2, 0, 11, 9], [0, 0, 9, 24]], np.float32)
    scores = np.array([0.9, 0.8, 0.85, 0.7])
    # IoU with box 0 (inclusive pixel areas): box 1 -> 50/150, box 2 -> 80/120, box 3 -> 100/250 = 0.4.
    np.testing.assert_array_equal(nms(boxes, scores, 0.4), [0, 1, 3])
    np.testing.assert_array_equal(nms(boxes, scores, 0.39), [0, 1])


def test_scrfd_model_layout_errors(tmp_path):
    with pytest.raises(FaceModelError, match="not found.*nowhere.onnx"):
        ScrfdDetector(tmp_path / "nowhere.onnx")
    (tmp_path / "garbage.onnx").write_bytes(b"\x00\x01 definitely not protobuf")
    with pytest.raises(FaceModelError, match="garbage.onnx"):
        ScrfdDetector(tmp_path / "garbage.onnx", providers=["CPUExecutionProvider"])
    six = build_scrfd(tmp_path / "six.onnx", _empty_outputs()[:6])
    with pytest.raises(FaceModelError, match="9 outputs"):
        ScrfdDetector(six, providers=["CPUExecutionProvider"])
    wrong = _empty_outputs()
    wrong[0] = np.zeros((7, 1))
    bad = build_scrfd(tmp_path / "bad.onnx", wrong)
    with pytest.raises(FaceModelError, match="stride 8 scores"):
        ScrfdDetector(bad, providers=["CPUExecutionProvider"], det_size=DET).detect(_image())
    with pytest.raises(ValueError, match="multiples of 32"):
        ScrfdDetector(bad, providers=["CPUExecutionProvider"], det_size=100)


# ----------------------------------------------------------------------------- ArcFace

KPS = np.array([[206.8, 104.9], [246.1, 107.3], [224.4, 127.6], [209.3, 146.2], [241.7, 147.9]], np.float32)


def _astronaut():
    return need("skimage.data").astronaut()


def test_embedding_equals_numpy_forward_of_the_aligned_face(arcface_parts):
    path, weight, bias = arcface_parts
    embedder = ArcFaceEmbedder(path, providers=["CPUExecutionProvider"])
    photo = _astronaut()
    face = Face(box=(177, 66, 272, 161), score=0.9, kps=tuple(map(tuple, KPS)))
    embedding = embedder.embed(photo, face)
    assert embedding.shape == (1, 512) and embedding.dtype == np.float32

    aligned = embedder.aligned_face(photo, face)
    assert aligned.shape == (112, 112, 3) and np.all(aligned == np.rint(aligned))
    blob = ((aligned - 127.5) / 127.5).transpose(2, 0, 1)[None]
    np.testing.assert_allclose(embedding, arcface_forward(blob, weight, bias), rtol=1e-4, atol=1e-4)
    swapped = arcface_forward(blob[:, ::-1], weight, bias)
    assert np.abs(swapped - embedding).max() > 100 * 1e-4  # the check above would notice RGB/BGR mix-ups

    # Accepts the same picture as float and as a torch batch of one.
    torch = need("torch")
    np.testing.assert_allclose(embedder.embed(torch.from_numpy(photo / 255.0)[None], face), embedding, atol=1e-4)


def test_embedding_matches_insightfaces_procedure(arcface_parts):
    """Reference: skimage similarity fit + cv2.warpAffine on the BGR image + cv2 blob with swapRB."""
    cv2 = need("cv2")
    transform = need("skimage.transform")
    path, weight, bias = arcface_parts
    photo = _astronaut()
    tform = transform.SimilarityTransform()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tform.estimate(KPS, ARCFACE_TEMPLATE)
    aligned_bgr = cv2.warpAffine(photo[..., ::-1].copy(), tform.params[:2], (112, 112), borderValue=0.0)
    blob = cv2.dnn.blobFromImages([aligned_bgr], 1.0 / 127.5, (112, 112), (127.5, 127.5, 127.5), swapRB=True)
    reference = arcface_forward(blob, weight, bias)

    ours = ArcFaceEmbedder(path, providers=["CPUExecutionProvider"]).embed(photo, Face((0, 0, 1, 1), 1.0, tuple(map(tuple, KPS))))
    cosine = (ours @ reference.T).item() / (np.linalg.norm(ours) * np.linalg.norm(reference))
    assert cosine > 0.9999
    # the pixels are OpenCV's own: with the same alignment matrix the crop is exactly cv2.warpAffine's
    # (recent scikit-image fits float32 landmarks in float32, 1e-5 px away from our float64 fit,
    # which can move a sample into the neighbouring 1/32-pixel bin of OpenCV's warp)
    embedder = ArcFaceEmbedder(path, providers=["CPUExecutionProvider"])
    face = Face((0, 0, 1, 1), 1.0, tuple(map(tuple, KPS)))
    same_matrix = cv2.warpAffine(photo, estimate_norm(KPS, 112), (112, 112), borderValue=0.0)
    assert np.array_equal(embedder.aligned_face(photo, face), same_matrix.astype(np.float32))
    assert np.abs(ours - reference).max() < 0.01 * np.abs(reference).max()


def test_embedding_model_errors(tmp_path, arcface_parts):
    path, weight, bias = arcface_parts
    short = build_arcface(tmp_path / "short.onnx", weight[:, :128].copy(), bias[:128].copy())
    with pytest.raises(FaceModelError, match="128-d.*512"):
        ArcFaceEmbedder(short, providers=["CPUExecutionProvider"])
    with pytest.raises(FaceModelError, match="not found"):
        ArcFaceEmbedder(tmp_path / "glintr100.onnx")
    embedder = ArcFaceEmbedder(path, providers=["CPUExecutionProvider"])
    with pytest.raises(NoFaceError, match="boxonly.png.*landmarks"):
        embedder.embed(_image(), Face(box=(10, 10, 60, 60), score=1.0), name="boxonly.png")
    collapsed = Face(box=(10, 10, 60, 60), score=1.0, kps=((30.0, 30.0),) * 5)
    with pytest.raises(NoFaceError, match="dot.png.*landmarks"):
        embedder.embed(_image(), collapsed, name="dot.png")


def test_analyzer_identity_end_to_end(tmp_path, scrfd_path, arcface_parts):
    path, weight, bias = arcface_parts
    models = tmp_path / "ckpt" / "misc" / "face_analysis" / "models"
    models.mkdir(parents=True)
    (models / "scrfd_10g_bnkps.onnx").write_bytes(open(scrfd_path, "rb").read())
    (models / "glintr100.onnx").write_bytes(open(path, "rb").read())
    analyzer = FaceAnalyzer.from_model_dir(tmp_path / "ckpt", providers=["CPUExecutionProvider"], det_size=DET)

    image = _image()
    embedding, face = analyzer.identity(image)
    assert face.score == pytest.approx(0.9)  # face A, the largest
    np.testing.assert_array_equal(embedding, analyzer.embed(image, face))
    second, face_c = analyzer.identity(image, index=1)
    assert face_c.score == pytest.approx(0.7) and not np.allclose(second, embedding)


def test_no_face_is_an_error_unless_the_zero_fallback_is_asked_for(tmp_path, arcface_parts):
    blank = build_scrfd(tmp_path / "blank.onnx", _empty_outputs())
    analyzer = FaceAnalyzer(blank, arcface_parts[0], providers=["CPUExecutionProvider"], det_size=DET)
    with pytest.raises(NoFaceError, match="no face found in holiday.jpg"):
        analyzer.identity(_image(), name="holiday.jpg")
    with pytest.warns(UserWarning, match="holiday.jpg.*zero identity embedding"):
        embedding, face = analyzer.identity(_image(), allow_missing_face=True, name="holiday.jpg")
    assert face is None and embedding.shape == (1, 512) and embedding.dtype == np.float32 and not embedding.any()


def test_from_model_dir_names_what_is_missing(tmp_path):
    with pytest.raises(FaceModelError, match="scrfd_10g_bnkps.onnx and glintr100.onnx not found"):
        FaceAnalyzer.from_model_dir(tmp_path)


def test_embedding_needs_a_recognizer(scrfd_path):
    analyzer = FaceAnalyzer(detector_path=scrfd_path, det_size=DET, providers=["CPUExecutionProvider"])
    with pytest.raises(FaceModelError, match="glintr100.onnx"):
        analyzer.identity(_image())
