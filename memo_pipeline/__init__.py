"""MEMO (memory-guided, emotion-aware talking video diffusion), independent of ComfyUI."""

__version__ = "0.1.0"
