"""Task heads on the 512-d image feature, with the published release's module layout.

- ``ClassifierHead``: Linear(512, 128, no bias) -> BatchNorm1d -> ReLU -> Linear(128, C); its
  Sequential is padded with parameter-free layers so keys read ``block_forward.{2,3,6}`` as released.
- ``AttributeHead``: one Linear(512, C) per report question at ``block_forward.2``.
- ``CoxHead``: Linear(512, 128) -> ReLU -> Linear(128, 128) -> ReLU -> Linear(128, 1), a log-risk.

Usage: ``logits = ClassifierHead(3)(features)``
"""
from __future__ import annotations

from torch import nn

from .image_encoder import FEATURE_DIM


class ClassifierHead(nn.Module):
    def __init__(self, n_classes: int, in_dim: int = FEATURE_DIM, hidden: int = 128, dropout: float = 0.0):
        super().__init__()
        self.block_forward = nn.Sequential(
            nn.Identity(), nn.Dropout(dropout),
            nn.Linear(in_dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(hidden, n_classes),
        )

    def forward(self, x):
        return self.block_forward(x)


class AttributeHead(nn.Module):
    def __init__(self, n_classes: int, in_dim: int = FEATURE_DIM, dropout: float = 0.0):
        super().__init__()
        self.block_forward = nn.Sequential(nn.Identity(), nn.Dropout(dropout), nn.Linear(in_dim, n_classes))

    def forward(self, x):
        return self.block_forward(x)


class CoxHead(nn.Module):
    def __init__(self, in_dim: int = FEATURE_DIM, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, hidden),
                                 nn.ReLU(inplace=True), nn.Linear(hidden, 1))

    def forward(self, x):
        return self.net(x).squeeze(-1)
