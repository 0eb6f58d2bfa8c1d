"""pytest fixtures shared by the whole suite."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread_determinism():
    """The golden fixtures were made with one thread; keep summation order comparable."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> dict[str, Path]:
    """Tiny random-weight MEMO checkpoint + VAE + wav2vec2 in the released layouts (written once per session)."""
    from memo_pipeline.tiny import write_tiny_bundle

    return write_tiny_bundle(tmp_path_factory.mktemp("tiny"), seed=0)
