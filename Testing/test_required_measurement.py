"""``DecodingOptions.require_measurement``: beam search keeps only reports that state a size in cm.

A tiny generator learns one image's two reports, the one without a size twice as often as the one
with it. Unconstrained beam search must give the commoner report (no size), constrained beam search
the other one word for word; greedy decoding ignores the option; a saved generator keeps it.
"""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from renalclip_lib.models.decoding import DecodingOptions  # noqa: E402
from renalclip_lib.models.report_generator import ReportGenerator, measurement_unit_ids  # noqa: E402
from renalclip_lib.models.tokenizers import mistral_tokenizer  # noqa: E402

NO_SIZE = "Findings: A solid mass is seen in the left kidney.\nImpression: Left renal mass, likely malignant."
WITH_SIZE = ("Findings: A solid mass measuring 2.6 x 2.0 cm is seen in the left kidney.\n"
             "Impression: Left renal mass (2.6 cm), likely malignant.")


@pytest.fixture(scope="module")
def tok():
    return mistral_tokenizer()


def test_the_unit_is_the_mistral_cm_token(tok):
    assert tok.convert_ids_to_tokens(measurement_unit_ids(tok)) == ["▁cm"]


@pytest.fixture(scope="module")
def trained(tok, memorise):
    return memorise(tok, [NO_SIZE, NO_SIZE, WITH_SIZE], 150)[0]


def _decode(gen, greedy=False, **options):
    gen.decoding = DecodingOptions(repetition_penalty=1.0, no_repeat_ngram_size=0, **options)
    return gen.generate_from_features(torch.zeros(1, 4), greedy=greedy, max_new_tokens=60)[0]


def test_beam_search_states_the_size_only_when_required(trained):
    assert _decode(trained) == NO_SIZE
    assert _decode(trained, require_measurement=True) == WITH_SIZE
    assert _decode(trained, require_measurement=True, number_safe=True) == WITH_SIZE


def test_greedy_decoding_ignores_the_option(trained):
    assert _decode(trained, greedy=True, require_measurement=True) == NO_SIZE


def test_a_saved_generator_keeps_the_option(trained, tmp_path):
    trained.decoding = DecodingOptions(require_measurement=True)
    trained.save(tmp_path / "gen")
    assert ReportGenerator.load(tmp_path / "gen").decoding.require_measurement is True
