"""The Mistral 32k SentencePiece tokenizer (BioMistral's) as a transformers fast tokenizer, offline.

The ``mistral-common`` package ships the vocabulary (``mistral_common/data/tokenizer.model.v1``).
Neither ``sentencepiece`` nor ``protobuf`` is installed here, so the model file (a protobuf
``ModelProto``) is decoded by the small reader below and turned into a ``tokenizers`` BPE model
exactly as transformers' ``LlamaConverter`` does (byte fallback, merges ordered by piece score,
"▁" word boundaries, legacy normalizer): the ids are the ones every Mistral-7B model expects
(``"[INST]"`` -> 733, 16289, 28793).

Special tokens: ``<s>`` (bos, 1), ``</s>`` (eos, 2), ``<unk>`` (0), which also pads (Mistral has
no pad token; padding positions are masked out of attention and loss anyway).

Usage::

    tok = mistral_tokenizer()                    # PreTrainedTokenizerFast, len 32000
    tok("Left renal mass", add_special_tokens=False).input_ids
    check_special_tokens(tok, "llm_folder")      # TokenizerError if bos/eos/unk/pad are missing
"""
from __future__ import annotations

import copy
import os
import struct
from functools import lru_cache
from pathlib import Path

from ..errors import RenalCLIPError

MISTRAL_VOCAB_FILE = "tokenizer.model.v1"
REQUIRED_SPECIAL = ("bos_token", "eos_token", "unk_token", "pad_token")
_BYTE, _CONTROL, _UNKNOWN = 6, 3, 2


class TokenizerError(RenalCLIPError):
    """A tokenizer file is missing, unreadable or lacks the special tokens generation needs."""


def mistral_vocab_path() -> Path:
    """The SentencePiece model file inside the installed ``mistral-common`` package."""
    try:
        import mistral_common
    except ImportError:
        raise TokenizerError("mistral-common", "package not installed (pip install mistral-common)") from None
    path = Path(mistral_common.__file__).resolve().parent / "data" / MISTRAL_VOCAB_FILE
    if not path.is_file():
        raise TokenizerError(path, "Mistral SentencePiece vocabulary not found in the mistral-common package")
    return path


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        out |= (b & 0x7F) << shift
        if b < 0x80:
            return out, pos
        shift += 7


def _fields(buf: bytes):
    """(field number, wire type, value) of one protobuf message; value is bytes for wire type 2."""
    pos, n = 0, len(buf)
    while pos < n:
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + length], pos + length
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield field, wire, value


def read_sentencepiece_pieces(path) -> list[tuple[str, float, int]]:
    """(piece, score, type) of every entry of a SentencePiece ``ModelProto`` file, in id order."""
    path = Path(path)
    try:
        data = path.read_bytes()
        pieces = []
        for field, wire, value in _fields(data):
            if field != 1 or wire != 2:
                continue
            piece, score, kind = "", 0.0, 1
            for f, w, v in _fields(value):
                if f == 1 and w == 2:
                    piece = v.decode("utf-8")
                elif f == 2 and w == 5:
                    score = struct.unpack("<f", v)[0]
                elif f == 3 and w == 0:
                    kind = v
            pieces.append((piece, score, kind))
    except (OSError, ValueError, IndexError, UnicodeDecodeError) as exc:
        raise TokenizerError(path, f"not a readable SentencePiece model ({exc})") from None
    if not pieces:
        raise TokenizerError(path, "no vocabulary pieces in this SentencePiece model")
    return pieces


def _backend(pieces: list[tuple[str, float, int]]):
    from tokenizers import Tokenizer, decoders, normalizers
    from tokenizers.models import BPE
    from transformers.convert_slow_tokenizer import generate_merges

    vocab_scores = [(p, 0.0 if i < 3 else s) for i, (p, s, _) in enumerate(pieces)]
    vocab = {p: i for i, (p, _) in enumerate(vocab_scores)}
    merges = generate_merges(vocab, vocab_scores)
    unk = next((p for p, _, t in pieces if t == _UNKNOWN), pieces[0][0])
    tk = Tokenizer(BPE(vocab, merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    tk.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(content=" ", left=1)])
    return tk


@lru_cache(maxsize=4)
def _cached_backend(path: str, mtime: float):
    return _backend(read_sentencepiece_pieces(path))


def mistral_tokenizer(vocab_file=None):
    """A ``PreTrainedTokenizerFast`` for the Mistral 32k vocabulary with bos/eos/unk/pad set.

    ``vocab_file``: a SentencePiece ``.model`` file (default: the one mistral-common ships).
    Adds ``<s>`` in front when called with ``add_special_tokens=True`` (as LlamaTokenizer does).
    """
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    path = Path(vocab_file) if vocab_file is not None else mistral_vocab_path()
    if not path.is_file():
        raise TokenizerError(path, "SentencePiece vocabulary file not found")
    backend = copy.deepcopy(_cached_backend(str(path), os.path.getmtime(path)))
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                           special_tokens=[("<s>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                  pad_token="<unk>", padding_side="right", clean_up_tokenization_spaces=False,
                                  model_input_names=["input_ids", "attention_mask"])
    check_special_tokens(tok, path)
    return tok


def check_special_tokens(tok, source) -> None:
    """Raise ``TokenizerError`` naming ``source`` if bos, eos, unk or pad is missing from ``tok``."""
    missing = [name for name in REQUIRED_SPECIAL
               if getattr(tok, name, None) is None or getattr(tok, name + "_id", None) is None]
    if missing:
        raise TokenizerError(source, f"tokenizer lacks the special token(s) {', '.join(missing)} "
                                     "(needs bos, eos, unk and pad)")
