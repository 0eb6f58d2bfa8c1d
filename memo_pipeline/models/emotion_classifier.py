"""MEMO's emotion head: an MLP over the 1024-d emotion2vec utterance feature, 9 classes.

The released head applies softmax inside `forward`; callers that follow the official label
extraction apply softmax once more before the argmax (monotone, so the argmax is unchanged).
"""

from collections import OrderedDict

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..audio.emotions import NUM_EMOTION_CLASSES

EMOTION2VEC_FEATURE_DIM = 1024


class AudioEmotionClassifier(ModelMixin, ConfigMixin):
    """`num_classifier_layers` Linear layers (named `fc1..fcN`, ReLU between) in `self.layers`;
    with a single layer, `self.layers` is that Linear itself, as in the released checkpoints."""

    @register_to_config
    def __init__(self, num_classifier_layers=5, num_classifier_channels=2048):
        super().__init__()
        if num_classifier_layers < 1:
            raise ValueError(f"num_classifier_layers must be >= 1, got {num_classifier_layers}")
        if num_classifier_layers == 1:
            self.layers = nn.Linear(EMOTION2VEC_FEATURE_DIM, NUM_EMOTION_CLASSES)
            return
        widths = [EMOTION2VEC_FEATURE_DIM] + [num_classifier_channels] * (num_classifier_layers - 1) + [NUM_EMOTION_CLASSES]
        named = []
        for i in range(num_classifier_layers):
            named.append((f"fc{i + 1}", nn.Linear(widths[i], widths[i + 1])))
            if i < num_classifier_layers - 1:
                named.append((f"relu{i + 1}", nn.ReLU()))
        self.layers = nn.Sequential(OrderedDict(named))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """`(batch, 1024)` -> class probabilities `(batch, 9)`."""
        return torch.softmax(self.layers(features), dim=-1)

    @torch.no_grad()
    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """Label per row, as the official extraction does it (softmax of the probabilities, argmax)."""
        return torch.softmax(self(features).float(), dim=-1).argmax(dim=-1)
