"""A tiny Llama with the real Mistral 32k tokenizer, built from a config: the text stage on CPU.

No Llama or Mistral weights ship offline, so tests and the demo run the LLM2Vec text stage on a
randomly initialised ``LlamaForCausalLM`` of a few layers, saved as a normal Hugging Face folder
(config, safetensors, tokenizer): every code path (bidirectional model, MNTP, SimCSE, LoRA,
LLM2Vec loading) is the one an 8B model takes.

Usage: ``write_tiny_llama("run/text/base", hidden=64, layers=2, heads=4)``
"""
from __future__ import annotations

from pathlib import Path


def tiny_llama_config(vocab_size: int, hidden: int = 64, layers: int = 2, heads: int = 4, max_positions: int = 512):
    from transformers import LlamaConfig

    if hidden % heads:
        raise ValueError(f"hidden ({hidden}) must be a multiple of heads ({heads})")
    return LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=max_positions,
                       bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False,
                       attention_dropout=0.0, rms_norm_eps=1e-5)


def write_tiny_llama(folder, hidden: int = 64, layers: int = 2, heads: int = 4, seed: int = 0) -> Path:
    """Write config, weights and tokenizer of a random tiny Llama into ``folder`` (returned)."""
    import torch
    from transformers import LlamaForCausalLM

    from .tokenizers import mistral_tokenizer

    folder = Path(folder)
    tok = mistral_tokenizer()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(tiny_llama_config(len(tok), hidden, layers, heads))
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder
