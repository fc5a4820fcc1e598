"""The contrastive model: the image encoder (backbone + projection to the text width) and a
learnable logit scale; text features come precomputed from the frozen text encoder.

As released: the logit scale is stored as its logarithm, initialised at log(1/0.07) and clamped
to [0, log 100] (the release clamps ``.data`` to [0, 4.6052]) before each forward; the loss is
the symmetric InfoNCE ``(CE(S) + CE(S^T)) / 2`` with ``S = exp(scale) * u v^T`` over the global
batch (image and text embeddings L2-normalised; under torchrun both are gathered across ranks
with gradients). The text side has no projection head.

Usage::

    model = ClipModel(ImageEncoder(width=16, embed_dim=384))
    img, scale = model(images)                       # normalised (B, 384), exp(logit scale)
    loss = clip_loss(img, F.normalize(text, dim=-1), scale)
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..atomic import atomic_torch_save
from .checkpoints import FORMAT, model_state_dict
from .image_encoder import ImageEncoder

LOGIT_SCALE_INIT_TEMPERATURE = 0.07
LOGIT_SCALE_MAX = 100.0


class ClipModel(nn.Module):
    def __init__(self, encoder: ImageEncoder, init_temperature: float = LOGIT_SCALE_INIT_TEMPERATURE,
                 max_scale: float = LOGIT_SCALE_MAX):
        super().__init__()
        if not encoder.has_projection:
            raise ValueError("the contrastive model needs an image encoder with a projection head")
        self.image_encoder = encoder
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature), dtype=torch.float32))
        self.max_log_scale = math.log(max_scale)

    def clamp_scale(self) -> None:
        with torch.no_grad():
            self.logit_scale.clamp_(0.0, self.max_log_scale)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(L2-normalised joint-space image embeddings, exp(logit scale)) after clamping."""
        self.clamp_scale()
        return self.image_encoder.embed(images), self.logit_scale.exp()

    def head_parameters(self) -> list:
        return list(self.image_encoder.global_embedding.parameters()) + [self.logit_scale]


def clip_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, gather: bool = True) -> torch.Tensor:
    """Symmetric InfoNCE over the (gathered) batch; inputs already L2-normalised."""
    if gather:
        from ..training.sync_ops import gather_with_grad

        image, text = gather_with_grad(image), gather_with_grad(text)
    logits = scale * image.float() @ text.float().t()
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


def with_text_projection(encoder: ImageEncoder, text_dim: int, seed: int = 0) -> ImageEncoder:
    """The encoder with a projection to ``text_dim`` (a fresh head if its own has another width)."""
    if encoder.has_projection and encoder.global_embedding.head.out_features == text_dim:
        return encoder
    from .image_encoder import GlobalEmbedding

    gen = torch.random.fork_rng()
    with gen:
        torch.manual_seed(seed)
        encoder.global_embedding = GlobalEmbedding(encoder.feature_dim, text_dim)
    return encoder


def save_clip_model(path, model: ClipModel, meta: dict | None = None) -> Path:
    """Our checkpoint layout (``load_image_encoder`` reads it) plus ``logit_scale`` (its log, as released)."""
    sd = model_state_dict(model.image_encoder)
    sd["logit_scale"] = model.logit_scale.detach().clone().cpu()
    meta = {**(meta or {}), "logit_scale": float(model.logit_scale.detach().exp())}
    return atomic_torch_save({"format": FORMAT, "model": sd, "meta": meta}, Path(path))
