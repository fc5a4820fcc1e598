"""Per-kidney report text exactly as the published release builds it, with its sentence shuffles.

The release (``utils/data_util.py`` and ``preprocessing/get_llm2vec_offline.ipynb``) turns a
kidney's findings and impression into one string:

1. ``preprocess_text``: decimals ``4.9`` and the abbreviation ``R.E.N.A.L`` are protected
   (``4<dot>9``, ``<abbr0>``), numbered prefixes (``1.``, ``2)``, ``3、``, ``4,``, ``5-``) are
   removed, and every line gets a final full stop if it has no sentence end.
2. Empty findings become "No abnormalities in the left kidney." (kidney without a lesion) or
   "Left kidney assessment unavailable." (the lesion's kidney).
3. Each part is preprocessed again, optionally sentence-shuffled (split after ``;`` ``.``
   ``；`` ``。``, newlines dropped, pieces shuffled and joined), and the protected tokens restored.
4. ``"Findings: " + findings + "\\n" + "Impression:" + impression`` (no space after "Impression:").

Step 3 repeats step 1 on text that already ends its lines with full stops, so a number right
before a line end ("score 7." + newline) is taken for a numbered prefix and removed: a quirk of
the release that its text features (and so the published weights) carry; we keep it.

The release precomputes five texts per kidney: the original and four shuffled copies. Our
shuffles draw from ``random.Random(seed)`` (the release uses Python's global ``random``; same
algorithm, but seeded so a rerun gives the same copies).

Usage::

    text = kidney_report("Mass 4.9 cm. Washout.", "Likely RCC", "left", has_lesion=True)
    texts = report_variants("Mass 4.9 cm. Washout.", "Likely RCC", "left", True, n_shuffles=4, seed=7)
"""
from __future__ import annotations

import random
import re

ABBR_TO_IGNORE = ("R.E.N.A.L",)
N_SHUFFLES = 4


def replace_special_cases(text: str) -> str:
    text = re.sub(r"(\d)\.(\d)", r"\1<dot>\2", text)
    for i, abbr in enumerate(ABBR_TO_IGNORE):
        text = text.replace(abbr, f"<abbr{i}>")
    return text


def restore_special_cases(text: str) -> str:
    text = text.replace("<dot>", ".")
    for i, abbr in enumerate(ABBR_TO_IGNORE):
        text = text.replace(f"<abbr{i}>", abbr)
    return text


def remove_numbered_prefixes(text: str) -> str:
    return re.sub(r"\b\d+\s*[\.\)、,\-]\s*", "", text)


def ensure_sentence_endings(text: str) -> str:
    out = []
    for sub in re.split(r"(\n)", text):
        if sub.strip() and not re.match(r"(\n;。\.；)", sub):
            if not sub.strip().endswith(("。", "；", ".", "!", "?", ";")):
                sub = sub.strip() + "."
        out.append(sub)
    return "".join(out)


def preprocess_text(text: str) -> str:
    return ensure_sentence_endings(remove_numbered_prefixes(replace_special_cases(text or "")))


def sentence_shuffling(text: str, rng: random.Random) -> str:
    """Split after sentence ends, drop newlines and pieces that start with punctuation, shuffle."""
    split = text.replace(";", ";|").replace(".", ".|").replace("；", "；|").replace("。", "。|").replace("\n", "")
    pieces = [s for s in split.split("|") if s.strip() and not re.match(r"[\n;。.；]", s)]
    rng.shuffle(pieces)
    return "".join(pieces)


def _process(part: str, rng: random.Random | None) -> str:
    part = preprocess_text(part)
    if rng is not None:
        part = sentence_shuffling(part, rng)
    return restore_special_cases(part)


def default_findings(side: str, has_lesion: bool) -> str:
    """What the release writes for a kidney whose findings are empty."""
    if has_lesion:
        return f"{side.capitalize()} kidney assessment unavailable."
    return f"No abnormalities in the {side} kidney."


def kidney_report(findings: str, impression: str, side: str, has_lesion: bool = False,
                  rng: random.Random | None = None) -> str:
    """One kidney's report as the text encoder sees it; ``rng`` set: a sentence-shuffled copy."""
    f = preprocess_text(findings)
    if len(f.strip()) == 0:       # the release tests len(f) == 0; blank cells count as empty too
        f = default_findings(side, has_lesion)
    i = preprocess_text(impression)
    return "".join(["Findings: ", _process(f, rng), "\n", "Impression:", _process(i, rng)])


def report_variants(findings: str, impression: str, side: str, has_lesion: bool = False,
                    n_shuffles: int = N_SHUFFLES, seed: int = 0) -> list[str]:
    """The original report followed by ``n_shuffles`` sentence-shuffled copies (seeded)."""
    rng = random.Random(seed)
    return [kidney_report(findings, impression, side, has_lesion)] + \
        [kidney_report(findings, impression, side, has_lesion, rng) for _ in range(n_shuffles)]


def has_report(findings: str, impression: str) -> bool:
    return bool((findings or "").strip() or (impression or "").strip())
