"""The MEMO nodes as ComfyUI sees them: V3 schemas (`io.ComfyNode`) and the extension that registers them.

Written against ``comfy_api.v0_0_2``, the newest numbered API version ComfyUI 0.8.0 ships (see
docs/comfyui_notes.md for why a pinned version and not ``comfy_api.latest``). This is the only
module of the pack that imports ``comfy_api``; the work is done by the ComfyUI-free classes listed
in ``nodes.IMPLEMENTATIONS``, and every ``execute`` here is one call into them.

Each node id, input name, type, default and output (in order) is the one the V1 nodes of earlier
releases declared, so saved workflows keep loading; Generate To File gains a native ``VIDEO``
output after its old ones. Numbers that are generation settings take their default, range and
step from the library's input policy (`memo_pipeline.settings.LIMITS`), as the checks do.

The host (ComfyUI's, or a standalone one in tests) is bound to the classes by `node_classes`;
every schema and execute call runs inside it (`host.use_host`), so nothing here is process-wide.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from comfy_api.v0_0_2 import ComfyExtension, InputImpl, io

from . import audio_nodes, face_nodes, loaders, quality_nodes, sampler
from .common import CATEGORY_AUDIO, CATEGORY_FACE, CATEGORY_GENERATE, CATEGORY_LOADERS, DTYPES
from .host import Host, get_host, use_host
from .memo_types import (
    MEMO_AUDIO,
    MEMO_AUDIO_ENCODER,
    MEMO_CROP,
    MEMO_EMOTION,
    MEMO_EMOTION_MODEL,
    MEMO_FACE,
    MEMO_FACE_MODEL,
    MEMO_MODEL,
    MEMO_STATE,
)
from ..memo_pipeline.attention_backend import BACKENDS as ATTENTION_BACKENDS
from ..memo_pipeline.layers import WEIGHT_DTYPES
from ..memo_pipeline.settings import LIMITS

# Our objects as custom V3 types: a MEMO_* socket only ever connects to another MEMO_* socket.
MemoModelType = io.Custom(MEMO_MODEL)
MemoAudioEncoderType = io.Custom(MEMO_AUDIO_ENCODER)
MemoAudioType = io.Custom(MEMO_AUDIO)
MemoEmotionModelType = io.Custom(MEMO_EMOTION_MODEL)
MemoEmotionType = io.Custom(MEMO_EMOTION)
MemoFaceModelType = io.Custom(MEMO_FACE_MODEL)
MemoFaceType = io.Custom(MEMO_FACE)
MemoCropType = io.Custom(MEMO_CROP)
MemoStateType = io.Custom(MEMO_STATE)
CUSTOM_TYPES = (MemoModelType, MemoAudioEncoderType, MemoAudioType, MemoEmotionModelType, MemoEmotionType,
                MemoFaceModelType, MemoFaceType, MemoCropType, MemoStateType)


def setting_int(input_id: str, tooltip: str, setting: str | None = None, **extra) -> io.Int.Input:
    """An INT widget whose default, min, max and step are the library's (`LIMITS[setting]`)."""
    limit = LIMITS[setting or input_id]
    return io.Int.Input(input_id, default=limit.default, min=limit.minimum, max=limit.maximum, step=limit.step,
                        tooltip=tooltip, **extra)


def setting_float(input_id: str, tooltip: str, setting: str | None = None, **extra) -> io.Float.Input:
    """A FLOAT widget whose default, min, max and step are the library's (`LIMITS[setting]`)."""
    limit = LIMITS[setting or input_id]
    return io.Float.Input(input_id, default=limit.default, min=limit.minimum, max=limit.maximum, step=limit.step,
                          tooltip=tooltip, **extra)


def in_host(define_schema: Callable) -> Callable:
    """Build the schema inside the class's host, whose model folders fill the model lists."""
    @functools.wraps(define_schema)
    def in_the_host(cls):
        with cls.entered():
            return define_schema(cls)
    return in_the_host


class MemoNode(io.ComfyNode):
    """What every MEMO node shares: its host, and how a V1-style result becomes a `NodeOutput`."""

    HOST: Host | None = None  # set by `node_classes`; None: whatever host the caller entered

    @classmethod
    def entered(cls):
        return use_host(cls.HOST or get_host())

    @classmethod
    def run(cls, work: Callable, inputs: dict[str, Any], *extra_outputs) -> io.NodeOutput:
        """Call `work(**inputs)` in the node's host; its tuple or {'ui', 'result'} becomes a NodeOutput."""
        with cls.entered():
            result = work(**inputs)
        ui = None
        if isinstance(result, dict):
            ui, result = result.get("ui"), result["result"]
        return io.NodeOutput(*result, *extra_outputs, ui=ui)

    @classmethod
    def workflow(cls) -> dict:
        """The hidden prompt and workflow (for the metadata of written files); empty outside a run."""
        hidden = cls.hidden
        return {} if hidden is None else {"prompt": hidden.prompt, "extra_pnginfo": hidden.extra_pnginfo}


# ----------------------------------------------------------------------------- loaders

class MemoModelLoader(MemoNode):
    @classmethod
    @in_host
    def define_schema(cls):
        return io.Schema(
            node_id="MemoModelLoader", display_name="MEMO Model Loader", category=CATEGORY_LOADERS,
            description="Loads a MEMO checkpoint folder (reference_net, diffusion_net, image_proj, audio_proj) from "
                        "models/memo/<name>/, strictly: any missing or mismatched weight is an error naming the file.",
            inputs=[
                io.Combo.Input("checkpoint", options=loaders.checkpoint_options(),
                               tooltip="A MEMO checkpoint folder under models/memo/ "
                                       "(holding reference_net/, diffusion_net/, image_proj/, audio_proj/)."),
                io.Combo.Input("dtype", options=["auto"] + DTYPES, default="auto",
                               tooltip="Weight dtype. auto: bf16 where ComfyUI finds the device supports it (the "
                                       "release dtype), else fp32 (the CPU, older GPUs). fp16 may overflow."),
                io.Combo.Input("attention", options=list(ATTENTION_BACKENDS), default="sdpa",
                               tooltip="Attention kernels: PyTorch SDPA, or xformers (needs the xformers package and "
                                       "a CUDA GPU)."),
                io.Combo.Input("weight_dtype", options=list(WEIGHT_DTYPES), default="default", optional=True,
                               tooltip="How the layer weights are stored: default = in dtype. bf16/fp16 take half "
                                       "and fp8_e4m3fn/fp8_e5m2 a quarter of the fp32 weight memory (normalisations "
                                       "and embeddings stay in dtype). Each layer casts its weights to dtype as it "
                                       "runs: some speed is lost, and the weights are rounded (fp8 the most), so "
                                       "the video differs slightly from default."),
            ],
            outputs=[MemoModelType.Output("memo_model", tooltip="The MEMO networks, for MEMO Sampler / MEMO Generate "
                                                                "To File.")],
        )

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        return cls.run(loaders.MemoModelLoader().load, inputs)


class MemoAudioEncoderLoader(MemoNode):
    @classmethod
    @in_host
    def define_schema(cls):
        return io.Schema(
            node_id="MemoAudioEncoderLoader", display_name="MEMO Audio Encoder Loader", category=CATEGORY_LOADERS,
            description="Loads the wav2vec2 speech encoder MEMO was trained with (facebook/wav2vec2-base-960h) from "
                        "models/audio_encoders/: a Hugging Face folder (config.json + model.safetensors) or one file.",
            inputs=[
                io.Combo.Input("audio_encoder", options=loaders.audio_encoder_options(),
                               tooltip="wav2vec2-base-960h under models/audio_encoders/: its Hugging Face folder, or "
                                       "a single .safetensors file."),
                io.Combo.Input("dtype", options=list(DTYPES), default="fp32",
                               tooltip="Weight dtype of the encoder; fp32 matches the official features."),
            ],
            outputs=[MemoAudioEncoderType.Output("audio_encoder", tooltip="The wav2vec2 encoder, for MEMO Audio "
                                                                          "Encode.")],
        )

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        return cls.run(loaders.MemoAudioEncoderLoader().load, inputs)


class MemoEmotionModelLoader(MemoNode):
    @classmethod
    @in_host
    def define_schema(cls):
        return io.Schema(
            node_id="MemoEmotionModelLoader", display_name="MEMO Emotion Model Loader", category=CATEGORY_LOADERS,
            description="Loads the audio emotion detector: the emotion2vec_plus_large backbone (models/emotion2vec/) "
                        "and MEMO's emotion classifier (misc/audio_emotion_classifier of a MEMO checkpoint).",
            inputs=[
                io.Combo.Input("emotion2vec", options=loaders.emotion2vec_options(),
                               tooltip="emotion2vec_plus_large folder under models/emotion2vec/ (model.pt or "
                                       "model.safetensors, with its config.yaml)."),
                io.Combo.Input("classifier_checkpoint", options=loaders.classifier_options(),
                               tooltip="The MEMO checkpoint whose misc/audio_emotion_classifier/ is used."),
                io.Combo.Input("dtype", options=list(DTYPES), default="fp32", tooltip="Weight dtype of both networks."),
            ],
            outputs=[MemoEmotionModelType.Output("emotion_model", tooltip="The emotion detector, for MEMO Emotion "
                                                                          "Detect.")],
        )

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        return cls.run(loaders.MemoEmotionModelLoader().load, inputs)


class MemoFaceModelLoader(MemoNode):
    @classmethod
    @in_host
    def define_schema(cls):
        return io.Schema(
            node_id="MemoFaceModelLoader", display_name="MEMO Face Model Loader", category=CATEGORY_LOADERS,
            description="Loads MEMO's face models: the SCRFD detector (scrfd_10g_bnkps.onnx) and the ArcFace identity "
                        "network (glintr100.onnx), from a MEMO checkpoint (misc/face_analysis/models/) or "
                        "models/insightface/. The OpenCV Haar choice, listed only when OpenCV (cv2, 4.x or newer with "
                        "its cascade classifier) is installed, needs no model files but cannot compute an identity.",
            inputs=[
                io.Combo.Input("face_models", options=loaders.face_model_options(),
                               tooltip="Where scrfd_10g_bnkps.onnx and glintr100.onnx are: a MEMO checkpoint or a "
                                       "folder under models/insightface/."),
                io.Int.Input("detection_size", default=640, min=128, max=1280, step=32,
                             tooltip="Canvas side the detector runs at (multiple of 32); 640 as in MEMO. A model with "
                                     "a fixed input size ignores it."),
                io.Combo.Input("device", options=["auto", "cpu"], default="auto",
                               tooltip="auto: onnxruntime's CUDA provider when installed, else the CPU."),
            ],
            outputs=[MemoFaceModelType.Output("face_model", tooltip="Face detector + identity embedder, for MEMO Face "
                                                                    "Crop / MEMO Face Embed.")],
        )

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        return cls.run(loaders.MemoFaceModelLoader().load, inputs)


# ----------------------------------------------------------------------------- audio

class MemoAudioEncode(MemoNode):
    @classmethod
    @in_host
    def define_schema(cls):
        return io.Schema(
            node_id="MemoAudioEncode", display_name="MEMO Audio Encode", category=CATEGORY_AUDIO,
            description="Turns an AUDIO track into MEMO's speech features: wav2vec2 layer outputs resampled to the "
                        "video frame rate, padded to whole clips, as the official preprocessing does. Optionally cuts "
                        "a part of the track first; the cut AUDIO comes out again for muxing and emotion detection.",
            inputs=[
                MemoAudioEncoderType.Input("audio_encoder", tooltip="From MEMO Audio Encoder Loader."),
                io.Audio.Input("audio", tooltip="The speech (or song) that drives the face, e.g. from Load Audio. Use "
                                                "MEMO Vocal Separation first when there is music under the voice."),
                setting_float("fps", "Video frame rate. MEMO was trained at 30 fps."),
                setting_int("frames_per_clip", "Frames generated per clip (16 in MEMO). The features are padded to "
                                               "whole clips here, so the sampler takes it from here."),
                io.Float.Input("start_seconds", default=0.0, min=0.0, max=1.0e6, step=0.1,
                               tooltip="Skip this much audio at the start."),
                io.Float.Input("duration_seconds", default=0.0, min=0.0, max=1.0e6, step=0.1,
                               tooltip="Use this much audio from the start point; 0 = to the end."),
            ],
            outputs=[
                MemoAudioType.Output("memo_audio", tooltip="Speech features for MEMO Sampler / MEMO Generate To File."),
                io.Audio.Output("audio", tooltip="The (cut) audio the features were made from: mux it with the video "
                                                 "and feed it to MEMO Emotion Detect."),
                io.Int.Output("frame_count", tooltip="Number of video frames the audio covers: ceil(duration x fps)."),
                io.Float.Output("fps", tooltip="The frame rate, for Create Video."),
            ],
        )

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        return cls.run(audio_nodes.MemoAudioEncode().encode, inputs)


class MemoEmotionDetect(MemoNode):
    @classmethod
    @in_host
    def define_schema(cls):
        return io.Schema(
            node_id="MemoEmotionDetect", display_name="MEMO Emotion Detect", category=CATEGORY_AUDIO,
            description="Detects the emotion of the speech over time, as MEMO does: emotion2vec + MEMO's classifier "
                        "on 3-second windows, one label per second (2-second windows at the ends). Feed it the speech "
                        "cut like the MEMO audio: the 'audio' output of MEMO Audio Encode.",
            inputs=[
                MemoEmotionModelType.Input("emotion_model", tooltip="From MEMO Emotion Model Loader."),
                io.Audio.Input("audio", tooltip="The speech track (the same cut as the MEMO audio)."),
            ],
            outputs=[
                MemoEmotionType.Output("emotion", tooltip="Emotion labels over the track, for the sampler's emotion "
                                                          "input."),
                io.String.Output("summary", tooltip="The detected emotions as text, e.g. for a Preview Any node."),
            ],
        )

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        return cls.run(audio_nodes.MemoEmotionDetect().detect, inputs)


class MemoEmotionSchedule(MemoNode):
    @classmethod
    @in_host
    def define_schema(cls):
        return io.Schema(
            node_id="MemoEmotionSchedule", display_name="MEMO Emotion Schedule", category=CATEGORY_AUDIO,
            description="Sets the emotion by hand instead of detecting it: one label ('happy') or change points "
                        "('0:neutral, 3.5:happy, 8:sad' in seconds, '48f:happy' in frames). Labels: angry, "
                        "disgusted, fearful, happy, neutral, other, sad, surprised, unknown. The released model "
                        "treats it as a hint.",
            inputs=[
                MemoAudioType.Input("memo_audio", tooltip="The MEMO audio the schedule is for (its length and frame "
                                                          "rate turn times into frames)."),
                io.String.Input("schedule", default="0:neutral", multiline=True,
                                tooltip="A label, or 'time:label' pairs separated by commas or new lines; times in "
                                        "seconds, or frames with an f suffix. Must start at 0."),
            ],
            outputs=[
                MemoEmotionType.Output("emotion", tooltip="Emotion labels over the track, for the sampler's emotion "
                                                          "input."),
                io.String.Output("summary", tooltip="Which frames get which emotion, as text."),
            ],
        )

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        return cls.run(audio_nodes.MemoEmotionSchedule().schedule, inputs)


class MemoVocalSeparation(MemoNode):
    @classmethod
    @in_host
    def define_schema(cls):
        return io.Schema(
            node_id="MemoVocalSeparation", display_name="MEMO Vocal Separation", category=CATEGORY_AUDIO,
            description="Extracts the voice from a mix with the MDX-Net model MEMO uses (Kim_Vocal_2.onnx, run with "
                        "onnxruntime), so music or noise under the voice does not drive the mouth. Output: the vocal "
                        "stem at the input's sample rate and channel count.",
            inputs=[
                io.Audio.Input("audio", tooltip="The mix to separate."),
                io.Combo.Input("model", options=loaders.vocal_model_options(),
                               tooltip="Kim_Vocal_2.onnx under models/vocal_separator/ or a MEMO checkpoint's "
                                       f"{loaders.VOCAL_SUBPATH}."),
                io.Boolean.Input("peak_normalize", default=True,
                                 tooltip="Scale the stem to a 0.6-0.9 peak as MEMO's audio-separator does; off keeps "
                                         "the input's level."),
                io.Combo.Input("order", options=["official", "full-band"], default="official",
                               tooltip="official: as MEMO, the track is first converted to 16 kHz 16-bit and that is "
                                       "separated (the stem comes out at 16 kHz); full-band: the track is separated "
                                       "at its own rate (cleaner, but not what MEMO did)."),
            ],
            outputs=[io.Audio.Output("vocals", tooltip="The vocal stem, for MEMO Audio Encode.")],
        )

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        return cls.run(audio_nodes.MemoVocalSeparation().separate, inputs)


# ----------------------------------------------------------------------------- face

NO_FACE_TOOLTIP = "What to do when no face is found: stop with an error, or "


class MemoFaceCrop(MemoNode):
    @classmethod
    @in_host
    def define_schema(cls):
        return io.Schema(
            node_id="MemoFaceCrop", display_name="MEMO Face Crop", category=CATEGORY_FACE,
            description="Finds the face in a picture, cuts a square head-and-shoulders crop around it at the "
                        "generation resolution, and computes the face's identity embedding. The crop record lets MEMO "
                        "Paste Back put the generated video into the original picture.",
            inputs=[
                MemoFaceModelType.Input("face_model", tooltip="From MEMO Face Model Loader."),
                io.Image.Input("image", tooltip="The portrait (one image)."),
                setting_int("resolution", "Side of the square crop; MEMO was trained at 512."),
                io.Float.Input("scale", default=2.5, min=1.0, max=6.0, step=0.05,
                               tooltip="Crop side as a multiple of the face box's larger side."),
                io.Float.Input("shift_y", default=0.25, min=-1.0, max=1.0, step=0.01,
                               tooltip="Move the crop down by this many face heights (more shoulders, less space "
                                       "above the head)."),
                io.Int.Input("face_index", default=0, min=0, max=63, step=1,
                             tooltip="Which face when there are several: 0 = the largest."),
                io.Combo.Input("no_face", options=list(face_nodes.NO_FACE_CHOICES), default="error",
                               tooltip=NO_FACE_TOOLTIP + "crop the whole picture (centred square) and go on without "
                                                         "identity."),
            ],
            outputs=[
                io.Image.Output("image", tooltip="The square crop, resolution x resolution: the sampler's reference "
                                                 "image."),
                MemoCropType.Output("crop", tooltip="Where the crop came from, for MEMO Paste Back."),
                MemoFaceType.Output("face", tooltip="The identity embedding, for the sampler's face input."),
            ],
        )

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        return cls.run(face_nodes.MemoFaceCrop().crop, inputs)


class MemoFaceEmbed(MemoNode):
    @classmethod
    @in_host
    def define_schema(cls):
        return io.Schema(
            node_id="MemoFaceEmbed", display_name="MEMO Face Embed", category=CATEGORY_FACE,
            description="Computes the identity embedding of the face in a picture without cropping (for portraits "
                        "that are already framed). MEMO uses it to keep the person's identity.",
            inputs=[
                MemoFaceModelType.Input("face_model", tooltip="From MEMO Face Model Loader (SCRFD + ArcFace)."),
                io.Image.Input("image", tooltip="The portrait (one image)."),
                io.Int.Input("face_index", default=0, min=0, max=63, step=1,
                             tooltip="Which face when there are several: 0 = the largest."),
                io.Combo.Input("no_face", options=list(face_nodes.NO_FACE_CHOICES), default="error",
                               tooltip=NO_FACE_TOOLTIP + "go on without identity (MEMO's own fallback: a zero "
                                                         "embedding)."),
            ],
            outputs=[MemoFaceType.Output("face", tooltip="The identity embedding, for the sampler's face input.")],
        )

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        return cls.run(face_nodes.MemoFaceEmbed().embed, inputs)


class MemoPasteBack(MemoNode):
    @classmethod
    @in_host
    def define_schema(cls):
        return io.Schema(
            node_id="MemoPasteBack", display_name="MEMO Paste Back", category=CATEGORY_FACE,
            description="Puts generated square frames back into the picture the crop came from, blending the crop's "
                        "edges. Works on the frames in chunks; the original may be one picture or a video of the same "
                        "length.",
            inputs=[
                io.Image.Input("images", tooltip="Generated frames (MEMO Sampler output), at the crop's resolution."),
                MemoCropType.Input("crop", tooltip="From MEMO Face Crop."),
                io.Image.Input("original_image", tooltip="The picture that was cropped (or its video, frame for "
                                                         "frame)."),
                io.Float.Input("feather", default=0.1, min=0.0, max=0.5, step=0.01,
                               tooltip="Width of the blend at the crop's inner edges, as a fraction of the crop side."),
                io.Boolean.Input("color_match", default=False,
                                 tooltip="Match each frame's colour statistics to the original crop (removes slow "
                                         "colour drift)."),
            ],
            outputs=[io.Image.Output("images", tooltip="The original picture with the generated face, one frame per "
                                                       "generated frame.")],
        )

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        return cls.run(face_nodes.MemoPasteBack().paste, inputs)


# ----------------------------------------------------------------------------- generation

def generation_inputs() -> list:
    """Inputs shared by MEMO Sampler and MEMO Generate To File, in their saved order (required first)."""
    return [
        MemoModelType.Input("memo_model", tooltip="From MEMO Model Loader."),
        io.Vae.Input("vae", tooltip="The SD1.5 VAE MEMO uses (sd-vae-ft-mse), from Load VAE."),
        io.Image.Input("reference_image", tooltip="The portrait to animate (one image), resized to a square as the "
                                                  "official code does: a non-square picture is squashed, so crop it "
                                                  "first (MEMO Face Crop frames the face)."),
        MemoAudioType.Input("memo_audio", tooltip="From MEMO Audio Encode; sets length, frame rate and clip size."),
        MemoFaceType.Input("face", tooltip="Identity embedding from MEMO Face Crop or MEMO Face Embed."),
        setting_int("seed", "Noise seed (ignored when continuing from a state, which carries its own).",
                    control_after_generate=True),
        setting_int("steps", "Denoising steps per clip (20 in MEMO)."),
        setting_float("cfg", "Classifier-free guidance scale (3.5 in MEMO); <= 1 runs a single conditional pass, "
                             "about twice as fast.", "guidance_scale"),
        setting_int("past_frames", "Motion frames from the previous clip that condition the next (16 in MEMO); the "
                                   "first clip uses the reference image this many times."),
        setting_int("resolution", "Side of the square video (a multiple of 8); MEMO was trained at 512."),
    ]


def continuation_inputs() -> list:
    return [
        MemoEmotionType.Input("emotion", optional=True, tooltip="From MEMO Emotion Detect or MEMO Emotion Schedule; "
                                                                "without it every clip is 'neutral'."),
        MemoStateType.Input("state", optional=True, tooltip="Continue a generation that stopped early (same audio, "
                                                            "resolution and clip size): its motion memory, last "
                                                            "frames and noise generator."),
        setting_int("max_clips", "Stop after this many clips (0 = until the audio ends); the state output continues "
                                 "from there.", optional=True),
    ]


def torch_compile_input() -> io.Boolean.Input:
    return io.Boolean.Input("torch_compile", default=False, optional=True,
                            tooltip="Compile the diffusion net with torch.compile (needs Triton on NVIDIA GPUs, a C++ "
                                    "compiler on CPUs). The first two clips pay the compile time, later clips run "
                                    "faster: worth it for long audio. Same video within rounding.")


def cpu_tuning_input() -> io.Boolean.Input:
    return io.Boolean.Input("cpu_tuning", default=True, optional=True,
                            tooltip="On a CPU: faster kernels for the MEMO networks' upsampling and linear layers "
                                    "(memo_pipeline/cpu_tuning.py). Off: the plain PyTorch kernels, which differ "
                                    "only in the last bits. No effect on a GPU.")


FILENAME_PREFIX_DEFAULT = "MEMO/memo"


class MemoSampler(MemoNode):
    @classmethod
    @in_host
    def define_schema(cls):
        return io.Schema(
            node_id="MemoSampler", display_name="MEMO Sampler", category=CATEGORY_GENERATE,
            description="Generates the talking video: MEMO's memory-guided, emotion-aware diffusion, clip by clip, "
                        "driven by the audio features. Returns all frames as an IMAGE batch (for Create Video), so the "
                        "whole video is held in memory: for long audio use MEMO Generate To File.",
            inputs=generation_inputs() + continuation_inputs() + [torch_compile_input(), cpu_tuning_input()],
            outputs=[
                io.Image.Output("images", tooltip="The generated frames, resolution x resolution."),
                io.Float.Output("fps", tooltip="Frame rate of the video (from the audio encoding), for Create Video."),
                MemoStateType.Output("state", tooltip="Where this run stopped, to continue it in another sampler."),
                io.Audio.Output("audio", tooltip="The part of the audio under these frames, for Create Video."),
            ],
        )

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        return cls.run(sampler.MemoSampler().sample, inputs)


class MemoGenerateToFile(MemoNode):
    @classmethod
    @in_host
    def define_schema(cls):
        return io.Schema(
            node_id="MemoGenerateToFile", display_name="MEMO Generate To File", category=CATEGORY_GENERATE,
            description="Generates the talking video like MEMO Sampler but writes every clip to an H.264/AAC mp4 in "
                        "the output folder as soon as it is decoded, so memory does not grow with the audio length: "
                        "the node for long audio. Optionally pastes each clip back into the original picture. If the "
                        "run stops early (max_clips, Cancel, an error) the frames written so far stay in the file and "
                        "the state to continue is saved next to it (load it with MEMO Load State).",
            is_output_node=True,
            inputs=generation_inputs() + [
                io.String.Input("filename_prefix", default=FILENAME_PREFIX_DEFAULT,
                                tooltip="Path of the video inside ComfyUI's output folder; a counter and .mp4 are "
                                        "appended."),
            ] + continuation_inputs() + [
                io.Audio.Input("audio", optional=True,
                               tooltip="Audio to put in the file (e.g. the original mix when the features come from "
                                       "separated vocals); default: the MEMO audio's own track. It may be cut (MEMO "
                                       "Audio Encode's 'audio' output) or whole: a whole track is cut like the MEMO "
                                       "audio, so the sound stays under the frames it drove."),
                MemoCropType.Input("crop", optional=True, tooltip="With original_image: paste every clip back into "
                                                                  "the original picture."),
                io.Image.Input("original_image", optional=True, tooltip="The picture MEMO Face Crop cut the portrait "
                                                                        "from."),
                setting_int("crf", "H.264 quality: lower is better and bigger (18 is visually lossless).",
                            optional=True),
                torch_compile_input(),
                cpu_tuning_input(),
            ],
            outputs=[
                io.String.Output("video_path", tooltip="Absolute path of the written mp4."),
                io.Int.Output("frame_count", tooltip="Frames written."),
                MemoStateType.Output("state", tooltip="Where this run stopped, to continue it later."),
                io.Video.Output("video", tooltip="The written mp4 as a VIDEO, for core's Save Video, Preview Video or "
                                                 "Get Video Components."),
            ],
        )

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        output = cls.run(sampler.MemoGenerateToFile().generate, {**inputs, **cls.workflow()})
        video_path = output.args[0]
        return io.NodeOutput(*output.args, InputImpl.VideoFromFile(video_path), ui=output.ui)


class MemoSaveState(MemoNode):
    @classmethod
    @in_host
    def define_schema(cls):
        return io.Schema(
            node_id="MemoSaveState", display_name="MEMO Save State", category=CATEGORY_GENERATE,
            description="Saves a MEMO generation state to the output folder, to continue the generation in a later "
                        "session.",
            is_output_node=True,
            inputs=[
                MemoStateType.Input("state", tooltip="From MEMO Sampler or MEMO Generate To File."),
                io.String.Input("filename_prefix", default=FILENAME_PREFIX_DEFAULT,
                                tooltip="Path inside the output folder; a counter and .state.safetensors are "
                                        "appended."),
            ],
            outputs=[io.String.Output("state_path", tooltip="Absolute path of the saved state.")],
        )

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        return cls.run(sampler.MemoSaveState().save, {**inputs, **cls.workflow()})


class MemoLoadState(MemoNode):
    @classmethod
    @in_host
    def define_schema(cls):
        return io.Schema(
            node_id="MemoLoadState", display_name="MEMO Load State", category=CATEGORY_GENERATE,
            description="Loads a MEMO generation state saved in the output folder (by MEMO Save State, or by MEMO "
                        "Generate To File when it stopped early), to continue that generation.",
            inputs=[io.Combo.Input("state_file", options=sampler.state_files(),
                                   tooltip="A *.state.safetensors file in the output folder.")],
            outputs=[MemoStateType.Output("state", tooltip="The state, for the state input of MEMO Sampler / MEMO "
                                                           "Generate To File.")],
        )

    @classmethod
    def fingerprint_inputs(cls, state_file):
        with cls.entered():
            return sampler.MemoLoadState().fingerprint(state_file)

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        return cls.run(sampler.MemoLoadState().load, inputs)


# ----------------------------------------------------------------------------- quality

class MemoQualityReport(MemoNode):
    @classmethod
    @in_host
    def define_schema(cls):
        return io.Schema(
            node_id="MemoQualityReport", display_name="MEMO Quality Report", category=quality_nodes.CATEGORY_QUALITY,
            description="Checks a generated video without watching it. Identity: ArcFace similarity of every frame's "
                        "face to the reference face (per clip, minimum, drift; frames without a face are counted). "
                        "Sync PROXY: mouth-region motion against the speech energy, cross-correlated; the lag of the "
                        "peak shows an audio/video offset (a proxy, not SyncNet). Emotion: the labels used for "
                        "generation as a timeline. Reads the frames (IMAGE) or the video file of MEMO Generate To File "
                        "clip by clip.",
            is_output_node=True,
            inputs=[
                MemoFaceModelType.Input("face_model", tooltip="From MEMO Face Model Loader; needs SCRFD + ArcFace "
                                                              "(scrfd_10g_bnkps.onnx, glintr100.onnx)."),
                io.Image.Input("reference_image", tooltip="The portrait the video was made from."),
                io.Audio.Input("audio", tooltip="The speech the video was made from (the vocals if they were "
                                                "separated), cut like the MEMO audio."),
                setting_float("fps", "Frame rate of the frames (a video file's own rate is used for a file)."),
                setting_int("frames_per_clip", "Frames per clip used for generation (clip boundaries, per-clip "
                                               "numbers)."),
                io.Int.Input("identity_every", default=1, min=1, max=1000, step=1,
                             tooltip="Score the identity on every n-th frame only (ArcFace is the slow part without a "
                                     "GPU); faces are still looked for in every frame."),
                io.Image.Input("images", optional=True, tooltip="The generated frames (MEMO Sampler, or after MEMO "
                                                                "Paste Back). Give these or video_path."),
                io.String.Input("video_path", default="", optional=True,
                                tooltip="A video file to read clip by clip instead of frames: connect MEMO Generate "
                                        "To File's video_path."),
                MemoEmotionType.Input("emotion", optional=True, tooltip="The emotion input given to the generator, "
                                                                        "for the emotion timeline."),
            ],
            outputs=[
                io.Image.Output("plot", tooltip="The report as a picture: identity over time with clip boundaries, the "
                                                "sync-proxy signals, the emotion band (connect a Preview Image)."),
                io.String.Output("summary", tooltip="The report's numbers as JSON (see the README's 'Quality report' "
                                                    "section)."),
            ],
        )

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        return cls.run(quality_nodes.MemoQualityReport().report, inputs)


NODES: tuple[type[MemoNode], ...] = (
    MemoModelLoader, MemoAudioEncoderLoader, MemoEmotionModelLoader, MemoFaceModelLoader,
    MemoAudioEncode, MemoEmotionDetect, MemoEmotionSchedule, MemoVocalSeparation,
    MemoFaceCrop, MemoFaceEmbed, MemoPasteBack,
    MemoSampler, MemoGenerateToFile, MemoSaveState, MemoLoadState,
    MemoQualityReport,
)


def node_classes(host: Host | None = None) -> list[type[MemoNode]]:
    """The node classes bound to `host` (each a subclass of its declaration; None: the caller's host)."""
    return [type(node.__name__, (node,), {"HOST": host, "__module__": node.__module__}) for node in NODES]


class MemoExtension(ComfyExtension):
    """What ComfyUI loads through `comfy_entrypoint`: the nodes bound to one host.

    ComfyUI 0.8.0 awaits `get_node_list` once while it loads the pack (it never calls `on_load`),
    so the host's model folders are registered there, before any schema lists them."""

    def __init__(self, host: Host):
        self.host = host

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        self.host.register_model_folders()  # idempotent
        return node_classes(self.host)
