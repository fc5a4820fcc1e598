"""Load the image encoder and heads from every checkpoint flavour the authors publish, and ours.

Flavours recognised (all read with ``torch.load(weights_only=True)``):
- contrastive stage ``*model-best-acc.pt``: ``{'model': sd, 'fp16_scaler': ...}`` with keys
  ``module.image_encoder_q_student.<encoder key>`` and ``module.logit_scale``;
- multi-task attribute stage ``best-checkpoint.pth``: ``backbone.image_encoder.*`` plus heads
  ``classifiers.text_label_<id>.block_forward.2.*``;
- downstream classifiers: ``backbone.image_encoder.*`` + ``classifiers.<TASK>.block_forward.{2,3,6}.*``;
- a bare encoder state dict (optionally under ``module.``);
- ours (``save_image_model``): the downstream layout plus ``cox.net.*`` and a ``meta`` dict.
The encoder's prefix is found from where ``conv1.weight`` sits. Missing or unexpected encoder keys
and wrong shapes raise ``RenalCLIPError`` listing the first offenders: never a silent partial load.

Usage::

    enc = load_image_encoder("RenalCLIP-image-encoder-model-best-acc.pt")
    ck = load_checkpoint("finetune/best.pt"); ck.classifiers["malignancy"](enc.features(x))
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..atomic import atomic_torch_save
from ..errors import MissingFileError, UnreadableFileError
from .heads import AttributeHead, ClassifierHead, CoxHead
from .image_encoder import ImageEncoder
from .image_model import ImageTaskModel

FORMAT = "renalclip-image/1"
_SHOW = 5


@dataclass
class LoadedCheckpoint:
    encoder: ImageEncoder
    classifiers: dict = field(default_factory=dict)   # name -> ClassifierHead or AttributeHead
    cox: CoxHead | None = None
    logit_scale: float | None = None
    meta: dict = field(default_factory=dict)
    flavour: str = ""


def _read(path) -> dict:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingFileError(path, "checkpoint file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is an unreadable file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnreadableFileError(path, f"not a readable PyTorch checkpoint ({reason[:160]})") from None
    if not isinstance(obj, dict):
        raise UnreadableFileError(path, f"checkpoint holds a {type(obj).__name__}, not a state dict")
    return obj


def _state_dict(obj: dict, path: str) -> dict:
    for key in ("model", "state_dict"):
        if key in obj and isinstance(obj[key], dict):
            return obj[key]
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    raise UnreadableFileError(path, "checkpoint has no 'model' or 'state_dict' entry and is not a state dict")


def _encoder_prefix(sd: dict, path: str) -> str:
    cands = sorted((k[: -len("conv1.weight")] for k in sd if k.endswith("conv1.weight") and ".layer" not in k
                    and not k.startswith("layer") and "classifiers." not in k), key=len)
    if not cands:
        raise UnreadableFileError(path, "no image encoder in the checkpoint (no key ending in 'conv1.weight')")
    return cands[0]


def _load_into(module: nn.Module, sd: dict, path: str, what: str) -> None:
    expected = module.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [f"{k} {tuple(sd[k].shape)} != {tuple(expected[k].shape)}" for k in sd
             if k in expected and tuple(sd[k].shape) != tuple(expected[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing keys {missing[:_SHOW]}{' ...' if len(missing) > _SHOW else ''}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:_SHOW]}{' ...' if len(unexpected) > _SHOW else ''}")
    if wrong:
        problems.append(f"wrong shapes {wrong[:_SHOW]}{' ...' if len(wrong) > _SHOW else ''}")
    if problems:
        raise UnreadableFileError(path, f"{what} does not match the RenalCLIP architecture: " + "; ".join(problems))
    module.load_state_dict(sd, strict=True)


def _classifier_heads(sd: dict, root: str, path: str) -> dict:
    heads = {}
    names = sorted({m.group(1) for k in sd for m in [re.match(re.escape(root) + r"classifiers\.([^.]+)\.", k)] if m})
    for name in names:
        pre = f"{root}classifiers.{name}."
        hsd = {k[len(pre):]: v for k, v in sd.items() if k.startswith(pre)}
        if "block_forward.6.weight" in hsd:
            w6 = hsd["block_forward.6.weight"]
            head = ClassifierHead(w6.shape[0], in_dim=hsd["block_forward.2.weight"].shape[1], hidden=w6.shape[1])
        elif "block_forward.2.weight" in hsd:
            w2 = hsd["block_forward.2.weight"]
            head = AttributeHead(w2.shape[0], in_dim=w2.shape[1])
        else:
            raise UnreadableFileError(path, f"head '{name}' has an unknown layout: keys {sorted(hsd)[:_SHOW]}")
        _load_into(head, hsd, path, f"head '{name}'")
        heads[name] = head.eval()
    return heads


def load_checkpoint(path) -> LoadedCheckpoint:
    """Encoder, heads, logit scale and metadata from any supported checkpoint (see module doc)."""
    path = os.fspath(path)
    obj = _read(path)
    sd = _state_dict(obj, path)
    prefix = _encoder_prefix(sd, path)
    enc_sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    head_w = enc_sd.get("global_embedding.head.weight")
    width = int(enc_sd["conv1.weight"].shape[0])
    encoder = ImageEncoder(embed_dim=head_w.shape[0] if head_w is not None else 4096,
                           with_projection=head_w is not None, width=width)
    _load_into(encoder, enc_sd, path, "image encoder")
    encoder.eval()
    root = prefix[: -len("image_encoder.")] if prefix.endswith("backbone.image_encoder.") else prefix
    root = root[: -len("backbone.")] if root.endswith("backbone.") else root
    classifiers = _classifier_heads(sd, root, path) if prefix.endswith("backbone.image_encoder.") else {}
    cox = None
    cox_sd = {k[len(root + "cox."):]: v for k, v in sd.items() if k.startswith(root + "cox.")}
    if cox_sd:
        cox = CoxHead(in_dim=cox_sd["net.0.weight"].shape[1], hidden=cox_sd["net.0.weight"].shape[0])
        _load_into(cox, cox_sd, path, "Cox head")
        cox.eval()
    scale = next((v for k, v in sd.items() if k.endswith("logit_scale")), None)
    flavour = ("contrastive" if "image_encoder_q_student" in prefix else
               "renalclip" if obj.get("format") == FORMAT else
               "attribute" if any(n.startswith("text_label_") for n in classifiers) else
               "downstream" if classifiers else "bare")
    meta = obj.get("meta", {}) if isinstance(obj.get("meta", {}), dict) else {}
    return LoadedCheckpoint(encoder, classifiers, cox, None if scale is None else float(scale), meta, flavour)


def load_task_model(path) -> ImageTaskModel:
    """Encoder and every head of a checkpoint as one ``ImageTaskModel`` (eval mode)."""
    ck = load_checkpoint(path)
    return ImageTaskModel(ck.encoder, ck.classifiers, ck.cox).eval()


def load_image_encoder(path) -> ImageEncoder:
    """The image encoder (eval mode) of any supported checkpoint flavour."""
    return load_checkpoint(path).encoder


def model_state_dict(encoder: ImageEncoder, classifiers: dict | None = None, cox: CoxHead | None = None) -> dict:
    """A state dict in the release's downstream layout (plus ``cox.net.*``)."""
    return ImageTaskModel(encoder, classifiers, cox).state_dict()


def save_image_model(path, encoder: ImageEncoder, classifiers: dict | None = None, cox: CoxHead | None = None,
                     meta: dict | None = None) -> Path:
    """Write our checkpoint atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    payload = {"format": FORMAT, "model": model_state_dict(encoder, classifiers, cox), "meta": dict(meta or {})}
    atomic_torch_save(payload, path)
    return path
