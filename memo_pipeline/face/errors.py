"""Exceptions of the face front end.

Both derive from ValueError so that callers (and ComfyUI, which shows the message) treat them as
bad-input errors rather than crashes.
"""


class FaceImageError(ValueError):
    """The image cannot be used (wrong shape, dtype, range, size, unreadable file)."""


class NoFaceError(ValueError):
    """No face (or not the requested face) was found in the image."""


class FaceModelError(ValueError):
    """A face model file is missing, unreadable or does not have the expected layout."""
