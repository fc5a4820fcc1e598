"""Text and alignment throughput: reports/s of the MiniLM text encoder, CLIP training samples/s.

- text features: reports per second for the demo's MiniLM encoder (real weights) on synthetic
  per-kidney reports formatted as released (batch 32, median of repeats);
- alignment: training samples per second per process of one contrastive step (forward, symmetric
  InfoNCE, backward, AdamW) of the image encoder at ``--width`` on random ROIs; on a GPU bf16.

Usage: ``python benchmarks/bench_text.py [--reports 128] [--width 64] [--batch 8]``
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe_machine, median_seconds  # noqa: E402

from renalclip_lib.models import ImageEncoder  # noqa: E402
from renalclip_lib.models.clip_model import ClipModel, clip_loss  # noqa: E402
from renalclip_lib.models.text_encoder import demo_text_encoder_spec, load_text_encoder  # noqa: E402
from renalclip_lib.text.reports import kidney_report  # noqa: E402


def synthetic_reports(n: int) -> list[str]:
    from renalclip_lib.phantom import generate_patient

    texts = []
    i = 0
    while len(texts) < n:
        r = generate_patient(i, "pretrain", matrix=32).reports
        texts += [kidney_report(r["findings_left"], r["impression_left"], "left"),
                  kidney_report(r["findings_right"], r["impression_right"], "right")]
        i += 1
    return texts[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reports", type=int, default=128)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(describe_machine())
    texts = synthetic_reports(args.reports)
    enc = load_text_encoder(demo_text_encoder_spec())
    t = median_seconds(lambda: enc.encode(texts, batch_size=32), args.repeats)
    print(f"MiniLM text features: {len(texts) / t:.1f} reports/s ({len(texts)} reports, median {t:.2f} s)")

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = ClipModel(ImageEncoder(embed_dim=enc.dim, width=args.width)).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.98), weight_decay=1e-2)
    x = torch.rand(args.batch, 1, 32, 128, 128, device=dev)
    txt = F.normalize(torch.randn(args.batch, enc.dim, device=dev), dim=-1)

    def step():
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            img, scale = model(x)
            loss = clip_loss(img, txt, scale, gather=False)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.2)
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    t = median_seconds(step, args.repeats)
    print(f"alignment step ({dev.type}, width {args.width}, batch {args.batch}): {args.batch / t:.2f} samples/s per process")


if __name__ == "__main__":
    main()
