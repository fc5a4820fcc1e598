"""Mistral-architecture language models built from a config: a tiny one for CPU, BioMistral's shape.

The paper's report generator sits on BioMistral-7B, which never ships here. For tests and the demo
the same code runs on a small ``MistralForCausalLM`` (same blocks: RoPE, grouped-query attention,
SwiGLU, RMSNorm; the real 32k Mistral vocabulary) that the report stage first trains as a language
model on the cohort's report text, the stand-in for BioMistral's medical pre-training. The 7B
shape (Supplementary Data Table 42) is only built with random weights, for the speed benchmark.

Usage::

    llm = build_mistral(tiny_mistral_config(hidden_size=128, num_layers=2), seed=0)
    big = mistral_7b_config()          # 32 layers, 32 heads, 4096 / 14336, vocab 32000
"""
from __future__ import annotations

MISTRAL_VOCAB_SIZE = 32000


def tiny_mistral_config(hidden_size: int = 128, num_layers: int = 2, num_heads: int = 4, num_kv_heads: int = 2,
                        intermediate_size: int = 256, max_positions: int = 1024,
                        vocab_size: int = MISTRAL_VOCAB_SIZE, tie_word_embeddings: bool = True):
    """A small ``MistralConfig`` (bos 1, eos 2, pad 0, as the Mistral tokenizer)."""
    from transformers import MistralConfig

    if hidden_size % num_heads or num_heads % num_kv_heads:
        raise ValueError("hidden_size must be divisible by num_heads, and num_heads by num_kv_heads")
    return MistralConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
                         num_hidden_layers=num_layers, num_attention_heads=num_heads,
                         num_key_value_heads=num_kv_heads, max_position_embeddings=max_positions,
                         sliding_window=None, rms_norm_eps=1e-5, rope_theta=10000.0, bos_token_id=1,
                         eos_token_id=2, pad_token_id=0, tie_word_embeddings=tie_word_embeddings,
                         attention_dropout=0.0, use_cache=True)


def mistral_7b_config():
    """The shape of Mistral-7B / BioMistral-7B (Supplementary Data Table 42)."""
    from transformers import MistralConfig

    return MistralConfig(vocab_size=MISTRAL_VOCAB_SIZE, hidden_size=4096, intermediate_size=14336,
                         num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                         max_position_embeddings=32768, sliding_window=None, rope_theta=10000.0,
                         bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)


def build_mistral(config, seed: int = 0, dtype=None):
    """A randomly initialised ``MistralForCausalLM`` of ``config`` (seeded), with SDPA attention."""
    import torch
    from transformers import MistralForCausalLM

    config._attn_implementation = "sdpa"
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = MistralForCausalLM(config)
    finally:
        torch.random.set_rng_state(state)
    if dtype is not None:
        model = model.to(dtype)
    return model
