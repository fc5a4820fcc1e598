"""Report generation speed: generated tokens per second of the LLaVA-style generator.

- CPU: the demo's tiny Mistral (hidden 128, 2 layers, real 32k vocabulary), greedy and 4-beam
  decoding (repetition penalty 1.2, no repeated 3-gram, as released), batch 1 and 8, and 4-beam
  decoding with ``require_measurement`` (constrained beam search, the "cm" token forced) as a ratio
  to plain 4-beam decoding;
- CUDA (when available): a Mistral-7B-shaped model (BioMistral's shape: 32 layers, 4096 / 14336,
  vocab 32000) with random weights built from a config (no download), bf16, the same decoding.
Every run generates exactly ``--tokens`` new tokens (end-of-sequence suppressed), so tokens/s is
batch x tokens / median seconds; with beams the count is of returned tokens, not hypotheses.

Usage: ``python benchmarks/bench_report.py [--tokens 128] [--repeats 3] [--no-gpu]``
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe_machine, median_seconds  # noqa: E402

from renalclip_lib.models.report_generator import ReportGenerator, measurement_constraint  # noqa: E402
from renalclip_lib.models.tiny_mistral import build_mistral, mistral_7b_config, tiny_mistral_config  # noqa: E402
from renalclip_lib.models.tokenizers import mistral_tokenizer  # noqa: E402


def tokens_per_second(gen: ReportGenerator, batch: int, beams: int, tokens: int, repeats: int,
                      require_measurement: bool = False) -> float:
    feats = torch.randn(batch, gen.feature_dim, device=gen.device)
    inputs = gen.build_inputs(feats)
    d = gen.decoding
    forced = measurement_constraint(gen.tokenizer) if require_measurement else {}

    def run():
        with torch.no_grad():
            out = gen.llm.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, num_beams=beams,
                                   do_sample=False, repetition_penalty=d.repetition_penalty,
                                   no_repeat_ngram_size=d.no_repeat_ngram_size, pad_token_id=gen.tokenizer.pad_token_id,
                                   eos_token_id=gen.tokenizer.eos_token_id, **forced)
        assert out.shape == (batch, tokens)
        if gen.device.type == "cuda":
            torch.cuda.synchronize()

    return batch * tokens / median_seconds(run, repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--feature-dim", type=int, default=512)
    ap.add_argument("--no-gpu", action="store_true")
    args = ap.parse_args()
    print(describe_machine())
    tok = mistral_tokenizer()
    torch.manual_seed(0)
    gen = ReportGenerator(build_mistral(tiny_mistral_config()), tok, args.feature_dim).eval()
    print(f"tiny Mistral (hidden 128, 2 layers, {sum(p.numel() for p in gen.llm.parameters()) / 1e6:.1f} M params), "
          f"CPU fp32, {torch.get_num_threads()} threads, {args.tokens} new tokens:")
    for batch, beams in ((1, 1), (1, 4), (8, 1), (8, 4)):
        tps = tokens_per_second(gen, batch, beams, args.tokens, args.repeats)
        print(f"  batch {batch}, {'greedy' if beams == 1 else f'{beams} beams'}: {tps:8.1f} tokens/s")
        if beams > 1:
            forced = tokens_per_second(gen, batch, beams, args.tokens, args.repeats, require_measurement=True)
            print(f"  batch {batch}, {beams} beams, require_measurement: {forced:8.1f} tokens/s "
                  f"({forced / tps:.2f} x plain)")
    if args.no_gpu or not torch.cuda.is_available():
        print("CUDA not available: 7B-shape benchmark skipped")
        return
    dev = torch.device("cuda")
    torch.set_default_dtype(torch.bfloat16)
    with dev:
        llm = build_mistral(mistral_7b_config(), seed=0)
    torch.set_default_dtype(torch.float32)
    big = ReportGenerator(llm, tok, args.feature_dim).eval()
    print(f"Mistral-7B shape ({sum(p.numel() for p in llm.parameters()) / 1e9:.2f} B params, random), bf16 on "
          f"{torch.cuda.get_device_name(0)}, {args.tokens} new tokens:")
    for batch, beams in ((1, 1), (1, 4), (8, 1), (8, 4)):
        tps = tokens_per_second(big, batch, beams, args.tokens, args.repeats)
        print(f"  batch {batch}, {'greedy' if beams == 1 else f'{beams} beams'}: {tps:8.1f} tokens/s")
    print(f"  peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
