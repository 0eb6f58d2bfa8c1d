"""Real detection on real photographs, with detector weights that ship inside a registry package.

Photos: scikit-image's sample data (``astronaut``: Eileen Collins, NASA, public domain; ``coffee``:
CC0; ``rocket``: NASA, public domain). Detector: OpenCV's frontal-face Haar cascade from
opencv-python (4.x). In CI both packages must be installed, so a missing one fails there instead
of silently skipping the only real-photo test.
"""

import numpy as np
import pytest
import torch
from PIL import Image
from support import need

need("cv2")
data = need("skimage.data")

from memo_pipeline.face import FaceAnalyzer, FaceImageError, HaarFaceDetector, NoFaceError  # noqa: E402

# Hand-marked on the 512x512 astronaut photo: eye centres and the middle of the mouth.
EYES_AND_MOUTH = np.array([[207, 105], [246, 107], [226, 147]])


@pytest.fixture(scope="module")
def analyzer():
    return FaceAnalyzer()  # no detector file: the Haar cascade


@pytest.fixture(scope="module")
def astronaut():
    return data.astronaut()


def _contains(box, points, margin=0.0):
    x1, y1, x2, y2 = box
    return all(x1 - margin <= x <= x2 + margin and y1 - margin <= y <= y2 + margin for x, y in points)


def test_finds_the_astronauts_face(analyzer, astronaut):
    faces = analyzer.detect(astronaut, name="astronaut")
    assert len(faces) == 1
    face = faces[0]
    assert _contains(face.box, EYES_AND_MOUTH)
    assert 70 <= face.width <= 130 and 70 <= face.height <= 130
    assert face.kps is None  # Haar gives boxes only


def test_same_face_in_every_pixel_format(analyzer, astronaut):
    reference = np.array(analyzer.select(astronaut).box)
    gray = np.asarray(Image.fromarray(astronaut).convert("L"))
    rgba = np.concatenate([astronaut, np.full((*astronaut.shape[:2], 1), 255, np.uint8)], axis=-1)
    variants = {
        "float tensor batch": torch.from_numpy(astronaut / 255.0).float()[None],
        "uint16": astronaut.astype(np.uint16) * 257,
        "gray": gray,
        "rgba": rgba,
    }
    for label, variant in variants.items():
        box = np.array(analyzer.select(variant, name=label).box)
        assert np.abs(box - reference).max() <= 0.05 * (reference[2] - reference[0]), label


def test_large_photo_is_detected_at_working_size_and_mapped_back(analyzer, astronaut):
    big = np.asarray(Image.fromarray(astronaut).resize((2048, 2048), Image.BICUBIC))
    face = analyzer.select(big, name="big")
    assert _contains(face.box, EYES_AND_MOUTH * 4)
    small = analyzer.select(astronaut)
    assert face.width == pytest.approx(4 * small.width, rel=0.1)


def test_several_faces_pick_largest_or_by_index(analyzer, astronaut):
    canvas = np.full((512, 1024, 3), 200, np.uint8)
    canvas[:, :512] = astronaut
    canvas[100:400, 650:950] = np.asarray(Image.fromarray(astronaut).resize((300, 300), Image.BICUBIC))
    faces = analyzer.detect(canvas, name="pair")
    assert len(faces) == 2
    largest, other = analyzer.select(canvas, 0), analyzer.select(canvas, 1)
    assert _contains(largest.box, EYES_AND_MOUTH)
    assert _contains(other.box, EYES_AND_MOUTH * (300 / 512) + [650, 100])
    assert largest.area > other.area
    with pytest.raises(NoFaceError, match="index 2.*pair has 2 face"):
        analyzer.select(canvas, 2, name="pair")


@pytest.mark.parametrize("photo", ["coffee", "rocket"])
def test_photos_without_faces(analyzer, photo):
    image = getattr(data, photo)()
    assert analyzer.detect(image) == []
    with pytest.raises(NoFaceError, match=f"no face found in {photo}.png"):
        analyzer.select(image, name=f"{photo}.png")
    with pytest.warns(UserWarning, match="zero identity embedding"):
        embedding, face = analyzer.identity(image, allow_missing_face=True, name=f"{photo}.png")
    assert face is None and embedding.shape == (1, 512) and not embedding.any()


def test_bad_images_fail_before_detection(analyzer, astronaut):
    with pytest.raises(FaceImageError, match="thumb.*too small"):
        analyzer.detect(astronaut[:40, :40], name="thumb")
    with pytest.raises(FaceImageError, match="scan.*\\[0, 1\\]"):
        analyzer.detect(astronaut.astype(np.float32), name="scan")  # 0..255 floats


def test_haar_detector_parameters_and_missing_cascade(tmp_path, astronaut):
    strict = HaarFaceDetector(min_neighbors=40)
    loose = HaarFaceDetector(min_neighbors=3)
    assert len(strict.detect(astronaut)) <= len(loose.detect(astronaut))
    from memo_pipeline.face import FaceModelError

    with pytest.raises(FaceModelError, match="nothing.xml"):
        HaarFaceDetector(cascade_path=tmp_path / "nothing.xml")
