"""Import peft in a state where its LoRA layers work.

peft's LoRA layer checks ``isinstance(w, torch.distributed.tensor.DTensor)`` without importing that
submodule; in a fresh process the attribute does not exist yet and adapter injection fails with
``AttributeError``. Importing the submodule first makes the check work.

Usage: ``peft = import_peft(); peft.get_peft_model(model, peft.LoraConfig(...))``
"""
from __future__ import annotations


def import_peft():
    import torch.distributed.tensor  # noqa: F401
    import peft

    return peft
