"""RenalCLIP's image encoder: a MedicalNet-style 3D ResNet-18 with parameter-free shortcuts.

Exactly the published architecture, so the authors' weights load key for key:
conv1 (7^3, stride 2, no bias) -> BN -> ReLU -> max pool (3, stride 2, pad 1) -> layer1..layer4
(two BasicBlocks each; 64/128/256/512 channels; the first block of layer2..4 has stride 2) ->
global average pool -> 512-d feature. The "type A" shortcut is strided subsampling
(avg_pool3d with kernel 1) with zero channels appended, so there are no ``downsample`` weights.
``global_embedding.head`` (Linear 512 -> 4096) projects into the joint image-text space.

Two deliberate differences from the release's code, neither changing what the forward computes:
the shortcut runs on any device (the release calls ``.cuda()``), and it keeps its gradient (the
release detaches the shortcut through ``.data``).

Usage::

    enc = ImageEncoder()
    f = enc.features(x)      # x: (B, 1, 32, 128, 128) -> (B, 512)
    e = enc.embed(x)         # (B, 4096), L2-normalised
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FEATURE_DIM = 512
EMBED_DIM = 4096


def conv3x3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv3d:
    return nn.Conv3d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class ZeroPadShortcut(nn.Module):
    """Parameter-free "type A" shortcut: subsample by ``stride`` and append zero channels."""

    def __init__(self, planes: int, stride: int):
        super().__init__()
        self.planes = planes
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.avg_pool3d(x, kernel_size=1, stride=self.stride)
        extra = self.planes - out.shape[1]
        if extra > 0:
            out = F.pad(out, (0, 0, 0, 0, 0, 0, 0, extra))
        return out


class BasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm3d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3x3(planes, planes)
        self.bn2 = nn.BatchNorm3d(planes)
        self.shortcut = ZeroPadShortcut(planes, stride) if (stride != 1 or inplanes != planes) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.shortcut is None else self.shortcut(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + residual)


class GlobalEmbedding(nn.Module):
    """The joint-space projection, named as in the release (``global_embedding.head``)."""

    def __init__(self, in_dim: int = FEATURE_DIM, out_dim: int = EMBED_DIM):
        super().__init__()
        self.head = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


class ImageEncoder(nn.Module):
    """3D ResNet-18 backbone + projection head; see the module docstring.

    ``width`` 64 is the published network (512-d feature); smaller widths (e.g. 16: 128-d) keep
    the same topology for quick CPU runs on the synthetic cohort.
    """

    def __init__(self, embed_dim: int = EMBED_DIM, with_projection: bool = True, width: int = 64):
        super().__init__()
        self.width = width
        self.feature_dim = 8 * width
        self.conv1 = nn.Conv3d(1, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm3d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
        inplanes = width
        for i, planes in enumerate((width, 2 * width, 4 * width, 8 * width), start=1):
            stride = 1 if i == 1 else 2
            layer = nn.Sequential(BasicBlock(inplanes, planes, stride), BasicBlock(planes, planes, 1))
            self.add_module(f"layer{i}", layer)
            inplanes = planes
        self.global_embedding = GlobalEmbedding(self.feature_dim, embed_dim) if with_projection else None
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def has_projection(self) -> bool:
        return self.global_embedding is not None

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The 512-d globally pooled feature of a (B, 1, D, H, W) batch."""
        return self.feature_map(x).mean(dim=(2, 3, 4))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The L2-normalised joint-space embedding (B, 4096)."""
        if self.global_embedding is None:
            raise RuntimeError("this encoder has no projection head (loaded from a file without one)")
        return F.normalize(self.global_embedding(self.features(x)), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def backbone_parameters(self):
        return [p for n, p in self.named_parameters() if not n.startswith("global_embedding.")]
