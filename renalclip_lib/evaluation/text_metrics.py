"""Report-generation metrics per report: BLEU-1/2/4 and METEOR (nltk), ROUGE-L (rouge-score).

A cohort's score is the mean of the per-report scores (its bootstrap resamples reports). Text is
lower-cased and split into word and punctuation tokens by one regular expression for BLEU and METEOR
(no nltk tokenizer models, so nothing is downloaded); ROUGE-L uses rouge-score's own tokenizer on
the raw text and reports the F-measure. BLEU is sentence BLEU without smoothing (a report sharing no
4-gram with its reference scores 0 on BLEU-4, as the paper's 0.000 entries).

METEOR needs WordNet. It is never downloaded at run time: ``ensure_wordnet(dir)`` builds
``<dir>/corpora/wordnet`` from the Debian packages ``wordnet-base`` and ``wordnet-sense-index``
(``/usr/share/wordnet``) plus the ``lexnames`` file shipped in ``resources/``; without them METEOR is
null with a note.

Usage::

    reader = load_wordnet()                 # None if WordNet cannot be found or built
    scores = report_scores(references, predictions, reader)   # {"bleu1": array, ...}
"""
from __future__ import annotations

import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np

from ..errors import RenalCLIPError

DEBIAN_WORDNET = Path("/usr/share/wordnet")
LEXNAMES = Path(__file__).resolve().parent / "resources" / "wordnet-lexnames.txt"
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv", "index.noun", "index.verb", "index.adj",
                 "index.adv", "noun.exc", "verb.exc", "adj.exc", "adv.exc")
DEFAULT_NLTK_DATA = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "renalclip" / "nltk_data"
INSTALL_HINT = ("install the Debian packages: apt-get install -y --no-install-recommends wordnet-base "
                "wordnet-sense-index")
_TOKEN = re.compile(r"[a-z0-9]+(?:[.'-][a-z0-9]+)*|[^\sa-z0-9]")
BLEU_WEIGHTS = {"bleu1": (1.0,), "bleu2": (0.5, 0.5), "bleu4": (0.25, 0.25, 0.25, 0.25)}


class WordNetMissingError(RenalCLIPError):
    """WordNet data for METEOR is not on this machine (and is never downloaded)."""


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(str(text).lower())


def ensure_wordnet(nltk_data_dir: str | os.PathLike, source: str | os.PathLike | None = None) -> Path:
    """Build ``<nltk_data_dir>/corpora/wordnet`` (copies, not links: nltk refuses escaping paths).

    ``source`` is a WordNet 3.0 dict folder (default ``/usr/share/wordnet`` from Debian's
    wordnet-base + wordnet-sense-index); ``lexnames`` comes from this package if the source lacks it.
    Returns the wordnet folder; raises WordNetMissingError naming what is missing.
    """
    target = Path(nltk_data_dir) / "corpora" / "wordnet"
    if all((target / f).is_file() for f in WORDNET_FILES + ("lexnames",)):
        return target
    src = Path(source) if source is not None else DEBIAN_WORDNET
    missing = [f for f in WORDNET_FILES if not (src / f).is_file()]
    if missing:
        raise WordNetMissingError(src, f"WordNet data not found (missing {', '.join(missing[:3])}"
                                       f"{'...' if len(missing) > 3 else ''}); {INSTALL_HINT}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".wordnet-tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for f in src.iterdir():
            if f.is_file():
                shutil.copyfile(f, tmp / f.name)
        if not (tmp / "lexnames").is_file():
            shutil.copyfile(LEXNAMES, tmp / "lexnames")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


_READERS: dict[str, object] = {}


def load_wordnet(nltk_data_dir: str | os.PathLike | None = None, source=None):
    """A WordNet reader for METEOR, or None when WordNet is not available (never downloads).

    Readers are cached per folder: nltk spends a few seconds indexing WordNet.
    """
    root = Path(nltk_data_dir or DEFAULT_NLTK_DATA)
    if str(root) in _READERS:
        return _READERS[str(root)]
    try:
        folder = ensure_wordnet(root, source)
    except (WordNetMissingError, OSError):
        return None
    import nltk.data
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    if str(root) not in nltk.data.path:         # nltk only reads corpora under its data path
        nltk.data.path.append(str(root))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")       # "multilingual functions are not available": not needed
        _READERS[str(root)] = WordNetCorpusReader(str(folder), None)
    return _READERS[str(root)]


def report_scores(references, predictions, wordnet=None) -> dict[str, np.ndarray]:
    """Per-report scores; ``meteor`` is all NaN when ``wordnet`` is None."""
    from nltk.translate.bleu_score import sentence_bleu
    from nltk.translate.meteor_score import meteor_score
    from rouge_score import rouge_scorer

    rouge = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    n = len(references)
    out = {k: np.full(n, np.nan) for k in ("bleu1", "bleu2", "bleu4", "meteor", "rouge_l")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")       # nltk warns when a higher-order n-gram has no match
        for i, (ref, hyp) in enumerate(zip(references, predictions)):
            r_tok, h_tok = tokenize(ref), tokenize(hyp)
            for name, w in BLEU_WEIGHTS.items():
                out[name][i] = sentence_bleu([r_tok], h_tok, weights=w) if r_tok and h_tok else 0.0
            if wordnet is not None:
                out["meteor"][i] = meteor_score([r_tok], h_tok, wordnet=wordnet) if r_tok and h_tok else 0.0
            out["rouge_l"][i] = rouge.score(str(ref), str(hyp))["rougeL"].fmeasure
    return out
