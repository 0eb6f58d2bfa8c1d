"""Face front end: detect the portrait's face, embed its identity, crop it square, paste results back.

Image convention (see ``image.py``): one image is float32 ``[H, W, 3]`` RGB in [0, 1]; frame
batches are ``[N, H, W, 3]`` (ComfyUI IMAGE). uint8/uint16 arrays, torch tensors, PIL images,
gray and RGBA inputs are converted at the boundary.
"""

from .alignment import ARCFACE_TEMPLATE, estimate_norm, norm_crop, umeyama_similarity
from .analyzer import DETECTOR_FILE, RECOGNIZER_FILE, FaceAnalyzer, find_face_models
from .arcface import EMBEDDING_SIZE, ArcFaceEmbedder
from .crop import CropInfo, crop_face, crop_with_info, face_crop_info, whole_image_crop_info
from .detection import Face, nms, select_face, sort_by_area
from .errors import FaceImageError, FaceModelError, NoFaceError
from .haar import HaarFaceDetector, haar_unavailable_reason
from .image import as_rgb_frames, as_rgb_image, load_image
from .paste import feather_mask, match_colors, paste_back
from .scrfd import ScrfdDetector

__all__ = [
    "ARCFACE_TEMPLATE",
    "DETECTOR_FILE",
    "EMBEDDING_SIZE",
    "RECOGNIZER_FILE",
    "ArcFaceEmbedder",
    "CropInfo",
    "Face",
    "FaceAnalyzer",
    "FaceImageError",
    "FaceModelError",
    "HaarFaceDetector",
    "NoFaceError",
    "ScrfdDetector",
    "as_rgb_frames",
    "as_rgb_image",
    "crop_face",
    "crop_with_info",
    "estimate_norm",
    "face_crop_info",
    "feather_mask",
    "find_face_models",
    "haar_unavailable_reason",
    "load_image",
    "match_colors",
    "nms",
    "norm_crop",
    "paste_back",
    "select_face",
    "sort_by_area",
    "umeyama_similarity",
    "whole_image_crop_info",
]
