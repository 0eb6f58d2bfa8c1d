"""Face nodes: square portrait crop + identity embedding, identity only, and paste-back."""

from __future__ import annotations

import numpy as np
import torch

from .common import check_setting, logger, single_image, user_errors
from .memo_types import MEMO_CROP, MEMO_FACE_MODEL, MemoFace, MemoFaceModel, expect

NO_FACE_CHOICES = ["error", "continue without identity"]


def _zero_face(note: str) -> MemoFace:
    from ..memo_pipeline.face import EMBEDDING_SIZE

    logger.warning("MEMO face: %s", note)
    return MemoFace(torch.zeros(1, EMBEDDING_SIZE), None, note)


def _embed(model: MemoFaceModel, picture: np.ndarray, face, input_name: str) -> MemoFace:
    if not model.can_embed:
        return _zero_face(f"'{model.name}' has no identity network; the video will not be tied to the face's identity "
                          "(load scrfd_10g_bnkps.onnx + glintr100.onnx for that)")
    if face.kps is None:
        return _zero_face("the detector gave no landmarks, so no identity embedding could be computed")
    with user_errors(input_name):
        embedding = model.analyzer.embed(picture, face, input_name)
    return MemoFace(torch.from_numpy(np.asarray(embedding, dtype=np.float32)).reshape(1, -1), face.to_dict())


class MemoFaceCrop:
    """The work of MEMO Face Crop; its inputs and outputs are declared in comfy_nodes.py."""

    def crop(self, face_model, image, resolution=512, scale=2.5, shift_y=0.25, face_index=0, no_face="error"):
        from ..memo_pipeline.face import crop_face, crop_with_info, select_face, whole_image_crop_info

        resolution = check_setting(resolution, "resolution")  # named as the input, not as 'image'
        model, picture, faces = _detect(face_model, image, no_face)
        if not faces and no_face == "error":
            raise _no_face_error("MemoFaceCrop")
        if not faces:
            with user_errors("image"):
                info = whole_image_crop_info(picture.shape[1], picture.shape[0], int(resolution))
                cropped = crop_with_info(picture, info, "image")
            face = _zero_face("no face found in the image; using the whole picture and no identity")
        else:
            with user_errors("image"):
                chosen = select_face(faces, int(face_index), "the image")
                cropped, info = crop_face(picture, chosen, float(scale), int(resolution), float(shift_y), name="image")
            face = _embed(model, picture, chosen, "image")
        return (torch.from_numpy(cropped)[None].contiguous(), info, face)


def _no_face_error(node: str) -> ValueError:
    """What to do when the picture has no detectable face, naming the option that goes on without one."""
    if node == "MemoFaceCrop":
        alternative = ("set this node's no_face option to 'continue without identity' to crop the whole picture "
                       "(centred square) and go on without identity, MEMO's zero-embedding fallback")
    else:
        alternative = ("set this node's no_face option to 'continue without identity' to go on without identity "
                       "(MEMO's zero-embedding fallback), or use MEMO Face Crop instead, whose no_face option "
                       "'continue without identity' also crops the whole picture for the sampler")
    return ValueError(f"image: no face found in the image; {alternative}. A face that is small in a large picture "
                      "can be missed: cropping the picture closer to the face first may help.")


def _detect(face_model, image, no_face):
    """The checked face model, the picture as an array and the faces found in it (largest first)."""
    model = expect(face_model, MemoFaceModel, "face_model", MEMO_FACE_MODEL)
    if no_face not in NO_FACE_CHOICES:
        raise ValueError(f"input 'no_face' must be one of {NO_FACE_CHOICES}, got {no_face!r}")
    picture = single_image(image, "image").numpy()
    with user_errors("image"):
        faces = model.analyzer.detect(picture, "image")
    return model, picture, faces


class MemoFaceEmbed:
    """The work of MEMO Face Embed; its inputs and outputs are declared in comfy_nodes.py."""

    def embed(self, face_model, image, face_index=0, no_face="error"):
        from ..memo_pipeline.face import select_face

        model, picture, faces = _detect(face_model, image, no_face)
        if not faces and no_face == "error":
            raise _no_face_error("MemoFaceEmbed")
        if not faces:
            return (_zero_face("no face found in the image; going on without identity"),)
        with user_errors("image"):
            chosen = select_face(faces, int(face_index), "the image")
        return (_embed(model, picture, chosen, "image"),)


class MemoPasteBack:
    """The work of MEMO Paste Back; its inputs and outputs are declared in comfy_nodes.py."""

    def paste(self, images, crop, original_image, feather=0.1, color_match=False):
        return (paste_frames(images, crop, original_image, float(feather), bool(color_match)),)


def paste_frames(images, crop, original_image, feather: float = 0.1, color_match: bool = False) -> torch.Tensor:
    from ..memo_pipeline.face import CropInfo, paste_back

    info = expect(crop, CropInfo, "crop", MEMO_CROP)
    if not torch.is_tensor(images) or images.dim() != 4:
        raise ValueError(f"input 'images' must be an IMAGE batch [N, H, W, C], got {getattr(images, 'shape', type(images))}")
    if images.shape[1:3] != (info.resolution, info.resolution):
        raise ValueError(f"input 'images' is {images.shape[2]}x{images.shape[1]} but the crop was made at "
                         f"{info.resolution}x{info.resolution}: give the sampler the same resolution as MEMO Face Crop")
    if not torch.is_tensor(original_image) or original_image.dim() != 4:
        raise ValueError("input 'original_image' must be an IMAGE batch [N, H, W, C]")
    original = original_image
    if original.shape[0] not in (1, images.shape[0]):
        raise ValueError(f"input 'original_image' has {original.shape[0]} frames; give one picture or exactly as "
                         f"many frames as 'images' ({images.shape[0]})")
    with user_errors("paste back"):
        chunks = list(paste_back(images, info, original, feather=feather, color_match=color_match))
    return torch.cat(chunks).float().contiguous() if chunks else images[:0]


IMPLEMENTATIONS = {  # node id -> (class doing the work, its method); nodes/comfy_nodes.py declares them
    "MemoFaceCrop": (MemoFaceCrop, "crop"),
    "MemoFaceEmbed": (MemoFaceEmbed, "embed"),
    "MemoPasteBack": (MemoPasteBack, "paste"),
}
