"""Number-safe decoding: the released 3-gram block and repetition penalty, except on digits.

Checked against transformers' own processors (identical scores on text without digits), on the
token sequence that the released constraints break ("2.6 x 2.0"), and end to end: a generator that
has memorised a report gives its measurements back intact only with ``number_safe``.
"""
from __future__ import annotations

import re

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from transformers import NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor  # noqa: E402

from renalclip_lib.models.number_safe_decoding import (NumberSafeNoRepeatNGram,  # noqa: E402
                                                       NumberSafeRepetitionPenalty, digit_token_ids,
                                                       number_safe_processors)
from renalclip_lib.models.tokenizers import mistral_tokenizer  # noqa: E402

REPORT = "Findings: A solid mass measuring 2.6 x 2.0 cm in the left kidney.\nImpression: Left renal mass (2.6 cm)."


@pytest.fixture(scope="module")
def tok():
    return mistral_tokenizer()


@pytest.fixture(scope="module")
def digits(tok):
    return digit_token_ids(tok)


def _ids(tok, text):
    return tok(text, add_special_tokens=False).input_ids


def test_digit_tokens_are_the_ten_digits_of_the_mistral_vocabulary(tok, digits):
    assert sorted(tok.convert_ids_to_tokens(sorted(digits))) == list("0123456789")
    # A number is written one digit at a time, after a lone word-boundary mark.
    assert tok.convert_ids_to_tokens(_ids(tok, "measuring 2.6 x 2.0")) == \
        ["▁measuring", "▁", "2", ".", "6", "▁x", "▁", "2", ".", "0"]


def test_same_scores_as_transformers_on_text_without_digits(tok, digits):
    g = torch.Generator().manual_seed(0)
    words = [i for i in range(3, 2000) if i not in digits]
    pool = torch.tensor(words)[torch.randint(0, len(words), (12,), generator=g)]
    # Short sequences over a 12-token pool: repeated 3-grams, so the block bans something.
    seqs = pool[torch.randint(0, 12, (4, 30), generator=g)]
    scores = torch.randn(4, len(tok), generator=g)
    for ours, ref in ((NumberSafeNoRepeatNGram(3, digits), NoRepeatNGramLogitsProcessor(3)),
                      (NumberSafeRepetitionPenalty(1.2, digits), RepetitionPenaltyLogitsProcessor(1.2))):
        want = ref(seqs, scores.clone())
        got = ours(seqs, scores.clone())
        assert torch.equal(torch.isinf(got), torch.isinf(want))
        assert torch.allclose(got[~torch.isinf(got)], want[~torch.isinf(want)])
    assert torch.isinf(NoRepeatNGramLogitsProcessor(3)(seqs, scores.clone())).any()


def test_numbers_are_neither_blocked_nor_penalised(tok, digits):
    seq = torch.tensor([_ids(tok, "measuring 2.6 x 2")])       # ... ▁ 2 . 6 ▁x ▁ 2
    dot, six, x = tok.convert_tokens_to_ids(["."]), tok.convert_tokens_to_ids("6"), tok.convert_tokens_to_ids("▁x")
    scores = torch.ones(1, len(tok))
    # The released block forbids "." after "▁ 2" (the 3-gram "▁ 2 ." was written): "2.0" becomes "20".
    assert torch.isinf(NoRepeatNGramLogitsProcessor(3)(seq, scores.clone())[0, dot]).all()
    assert not torch.isinf(NumberSafeNoRepeatNGram(3, digits)(seq, scores.clone())).any()
    # Digits keep their score; other repeated tokens are penalised as released.
    ref = RepetitionPenaltyLogitsProcessor(1.2)(seq, scores.clone())
    got = NumberSafeRepetitionPenalty(1.2, digits)(seq, scores.clone())
    assert ref[0, six] == pytest.approx(1 / 1.2) and got[0, six] == 1.0
    assert got[0, x] == pytest.approx(1 / 1.2)
    # A word 3-gram is still blocked when a number was written before it.
    words = torch.tensor([_ids(tok, "the left kidney 2.6 the left")])
    assert torch.isinf(NumberSafeNoRepeatNGram(3, digits)(words, scores.clone())[0, _ids(tok, "the left kidney")[2]])
    assert len(number_safe_processors(tok, 0, 1.0)) == 0 and len(number_safe_processors(tok, 3, 1.2)) == 2


def test_a_memorised_report_keeps_its_measurements_only_with_number_safe_decoding(tok, memorise, tmp_path):
    from renalclip_lib.models.decoding import DecodingOptions
    from renalclip_lib.models.report_generator import ReportGenerator

    gen, loss = memorise(tok, [REPORT], 80)
    feats = torch.zeros(1, 4)
    assert loss < 0.05

    def decode(**options):
        gen.decoding = DecodingOptions(**options)
        return gen.generate_from_features(feats, max_new_tokens=48)[0]

    def numbers(text):
        return re.findall(r"\d+(?:\.\d+)?", text)

    assert decode(repetition_penalty=1.0, no_repeat_ngram_size=0) == REPORT      # memorised
    assert numbers(REPORT) == ["2.6", "2.0", "2.6"]
    assert numbers(decode()) != numbers(REPORT)                      # the released constraints rewrite them
    assert numbers(decode(number_safe=True)) == numbers(REPORT)
    gen.save(tmp_path / "bundle")
    assert ReportGenerator.load(tmp_path / "bundle").decoding.number_safe is True


def test_analyze_can_switch_number_safe_decoding_on_for_a_bundle_without_it():
    from types import SimpleNamespace

    from renalclip_lib.inference.analyze import _generate_report
    from renalclip_lib.models.decoding import DecodingOptions

    seen = []

    class Generator:
        def __init__(self):
            self.decoding = DecodingOptions()

        def generate_from_features(self, feats, greedy=False):
            seen.append(self.decoding.number_safe)
            return ["Findings: A 2.6 x 2.0 cm mass.\nImpression: Renal mass (2.6 cm)."]

    gen = Generator()
    bundle = SimpleNamespace(load_report_generator=lambda: gen,
                             report_encoder=SimpleNamespace(features=lambda x: torch.zeros(1, 4)))
    x = torch.zeros(1, 1, 32, 128, 128)
    out = _generate_report(bundle, x, False, [])
    assert seen == [False] and out["impression"] == "Renal mass (2.6 cm)."
    _generate_report(bundle, x, False, [], number_safe=True)
    assert seen == [False, True] and gen.decoding.number_safe is False   # for that report only


def test_a_bundle_can_carry_number_safe_decoding(tok, tmp_path):
    from renalclip_lib.inference import build_bundle, load_bundle
    from renalclip_lib.models.checkpoints import save_image_model
    from renalclip_lib.models.image_encoder import ImageEncoder
    from renalclip_lib.models.report_generator import ReportGenerator
    from renalclip_lib.models.tiny_mistral import build_mistral, tiny_mistral_config

    encoder = ImageEncoder(width=4)
    save_image_model(tmp_path / "enc.pt", encoder)
    llm = build_mistral(tiny_mistral_config(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                                            intermediate_size=64), seed=0)
    ReportGenerator(llm, tok, encoder.feature_dim, n_image_tokens=2).save(tmp_path / "gen")
    for flag, want in ((None, False), (True, True)):
        out = build_bundle(tmp_path / f"b{want}", report=tmp_path / "gen", report_encoder=tmp_path / "enc.pt",
                           number_safe=flag, require_measurement=flag)
        decoding = load_bundle(out).load_report_generator().decoding
        assert decoding.number_safe is want and decoding.require_measurement is want
    assert ReportGenerator.load(tmp_path / "gen").decoding.number_safe is False     # the source is untouched
