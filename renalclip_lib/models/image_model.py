"""The image encoder with its task heads, laid out as the release's downstream models.

``state_dict()`` keys read ``backbone.image_encoder.*``, ``classifiers.<task>.*`` and ``cox.net.*``,
so our checkpoints and the authors' load through the same code.

Usage::

    model = ImageTaskModel(ImageEncoder(width=16), {"malignancy": ClassifierHead(2, in_dim=128)})
    feats, logits = model(x)          # logits: {"malignancy": (B, 2)}
"""
from __future__ import annotations

import torch
from torch import nn

from .heads import CoxHead
from .image_encoder import ImageEncoder


class _Backbone(nn.Module):
    def __init__(self, encoder: ImageEncoder):
        super().__init__()
        self.image_encoder = encoder


class ImageTaskModel(nn.Module):
    def __init__(self, encoder: ImageEncoder, classifiers: dict | None = None, cox: CoxHead | None = None):
        super().__init__()
        self.backbone = _Backbone(encoder)
        self.classifiers = nn.ModuleDict(classifiers or {})
        self.cox = cox

    @property
    def encoder(self) -> ImageEncoder:
        return self.backbone.image_encoder

    def forward(self, x: torch.Tensor):
        feats = self.encoder.features(x)
        logits = {name: head(feats) for name, head in self.classifiers.items()}
        if self.cox is not None:
            logits["risk"] = self.cox(feats)
        return feats, logits

    def head_parameters(self):
        params = list(self.classifiers.parameters())
        if self.cox is not None:
            params += list(self.cox.parameters())
        return params
