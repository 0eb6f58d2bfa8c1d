"""Reading a video file clip by clip (PyAV), so a long video is never held in memory whole."""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np


def video_frame_rate(path: str | os.PathLike) -> float:
    from ..video_io import read_video_info

    info = read_video_info(path)
    if not info["fps"]:
        raise ValueError(f"{os.fspath(path)}: the video stream declares no frame rate")
    return float(info["fps"])


def iter_video_chunks(path: str | os.PathLike, chunk: int = 16) -> Iterator[np.ndarray]:
    """Decoded RGB frames of the first video stream as uint8 ``[n, H, W, 3]`` chunks of ``chunk`` frames."""
    from ..video_io import open_video

    if chunk <= 0:
        raise ValueError(f"chunk must be positive, got {chunk}")
    with open_video(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        batch: list[np.ndarray] = []
        for frame in container.decode(stream):
            batch.append(frame.to_ndarray(format="rgb24"))
            if len(batch) == chunk:
                yield np.stack(batch)
                batch = []
        if batch:
            yield np.stack(batch)
