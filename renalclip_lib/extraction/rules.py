"""Rule-based answers to the 14 report questions (Supplementary Data Tables 33-34) from English text.

Reads a report the way the questionnaire asks: which kidney holds a mass, then per kidney the
number, pole, size class, exophytic growth, shape, cystic/solid nature, density, necrosis,
enhancement (overall and arterial), margins, the benign/malignant call, the likely nature and
sinus invasion. Phrasing covered: the synthetic cohort's vocabulary (``phantom/reports.py``) and
common radiology wording ("hypoattenuating", "avid enhancement", "RCC", "favouring", ...).

How a sentence is attributed to a kidney: a sentence naming one side sets the current side; one
naming none belongs to the current side (``"It is hypodense."``). A kidney has a mass when a
sentence about it names a mass (mass, lesion, cyst, tumour, carcinoma, ...) outside a negation
(``"no focal lesion"``). Unmentioned findings are class 0, as in the manifest.

Usage::

    answers = extract_answers(report_text)            # {"side": "left", "q_size_left": 2, ...}
    answers = extract_answers(findings_left + " " + impression_left, side="left")
"""
from __future__ import annotations

import re

from ..constants import SIDES
from ..questionnaire import QUESTIONS, size_class
from .report_text import split_report

SIDE_KEY = "side"
_FLAGS = re.IGNORECASE
_SENTENCE = re.compile(r"(?<=[.;!?])\s+(?=[A-Z(])|\n+")
_SIDE_WORD = re.compile(r"\b(left|right|bilateral(?:ly)?|both kidneys)\b", _FLAGS)
_MASS = re.compile(r"\b(mass(?:es)?|lesions?|cysts?|tumou?rs?|neoplasms?|carcinomas?|nodules?|angiomyolipomas?|"
                   r"oncocytomas?|rcc|aml)\b", _FLAGS)
_NEGATOR = re.compile(r"\b(no|without|not|negative for|free of|absence of)\b", _FLAGS)
SIZE_PATTERN = re.compile(r"(\d+(?:\.\d+)?)\s*(?:(?:x|×|by)\s*(\d+(?:\.\d+)?)\s*)?(?:(?:x|×|by)\s*(\d+(?:\.\d+)?)\s*)?(cm|mm)\b",
                   _FLAGS)
_ARTERIAL = re.compile(r"arterial phase|corticomedullary phase enhancement|on arterial", _FLAGS)
_ADDITIONAL = re.compile(r"\b(additional|another|second|separate|incidental)\b", _FLAGS)


def _first(patterns, text: str) -> int:
    """Class of the first (pattern, class) pair whose pattern is found in ``text``; 0 if none."""
    for pattern, cls in patterns:
        if re.search(pattern, text, _FLAGS):
            return cls
    return 0


_LOCATION = ((r"\b(upper|superior) pole\b", 1), (r"\binterpolar\b|\bmid(?:dle)?[- ]?(?:pole|portion|third|kidney)\b", 2),
             (r"\b(lower|inferior) pole\b", 3))
_EXOPHYTIC = ((r"exophytic|protrud\w* beyond the (?:renal )?contour|bulg\w* (?:from|beyond) the renal surface|"
               r"extends? beyond the renal (?:contour|capsule)", 1),)
_MORPHOLOGY = ((r"lobulated", 4), (r"mass-like|\blarge (?:[\w-]+ ){0,5}(?:mass|lesion)", 3),
               (r"\birregular(?:ly)?\b(?! margin)", 2), (r"\b(round|rounded|oval|ovoid)\b", 1))
_CYSTIC_SOLID = ((r"cystic[- ]solid|cystic and solid|solid and cystic|mixed cystic|partially cystic|"
                  r"solid (?:mass|lesion) with (?:a )?cystic|complex cystic and solid", 2),
                 (r"\bsolid\b|soft[- ]tissue", 3), (r"\bcyst\b(?!\s+wall)|\bcystic\b", 1))
_DENSITY = ((r"fat[- ]containing|macroscopic fat|fat (?:density|attenuation)|fatty", 5), (r"mixed (?:density|attenuation)", 6),
            (r"heterogeneous (?:density|attenuation)|heterogeneously (?:dense|attenuating)", 4),
            (r"hyperdense|hyperattenuating|high attenuation|high density", 3),
            (r"isodense|isoattenuating", 2), (r"hypodense|hypoattenuating", 1))
_NECROSIS = ((r"\bno (?:\w+ ){0,2}necros|without (?:\w+ ){0,2}necros|necrosis is not", 2), (r"necros|necrotic", 1))
_ENHANCEMENT = ((r"non-?enhancing(?!\s+necrotic)|no enhancement is seen after|does not enhance after|no (?:internal )?enhancement", 1),
                (r"septa\w*[^.]*enhanc|enhancing septa|(?:cyst )?wall[^.]*enhanc", 6),
                (r"heterogeneous(?:ly)? enhanc", 5),
                (r"\bmarked(?:ly)? enhanc|\bavid(?:ly)? enhanc|marked enhancement|avid enhancement|hyperenhanc|brisk", 4),
                (r"moderate(?:ly)? enhanc", 3), (r"mild(?:ly)? enhanc|slight(?:ly)? enhanc|minimal(?:ly)? enhanc|apparent enhanc", 2))
_ARTERIAL_ENH = ((r"does not enhance|no enhancement|non-?enhancing", 1), (r"only mild|mild|slight|minimal", 2),
                 (r"marked|avid|intense|brisk|strong", 3))
_MARGIN = ((r"ill[- ]defined|infiltrative|unclear|poorly defined|indistinct|blurred", 2),
           (r"well[- ]defined|well[- ]circumscribed(?!\s+(?:round|oval|ovoid))|sharp(?:ly)? (?:defined|margin)|clear margin", 1))
_BENIGN_MALIGNANT = ((r"highly suspicious|highly likely malignant|highly suggestive of malignan|consistent with (?:a )?"
                      r"(?:renal cell carcinoma|rcc|malignan|carcinoma)|diagnostic of (?:renal cell )?carcinoma", 2),
                     (r"probably benign|more likely benign|likely benign|favou?r(?:ing)? benign", 3),
                     (r"(?<!highly )likely malignant|probably malignant|more likely malignant|suspicious for malignan|"
                      r"indeterminate,? (?:possibly|likely) malignant", 4),
                     (r"benign appearance|no follow-up needed|highly likely benign|definitely benign|consistent with (?:a )?"
                      r"(?:simple |complex )?(?:cyst|angiomyolipoma|aml|benign)|diagnostic of (?:an )?angiomyolipoma", 1))
_NATURE = ((r"angiomyolipoma|\baml\b", 2), (r"carcinoma|\brcc\b|malignant (?:renal )?(?:neoplasm|tumou?r)", 1),
           (r"oncocytoma|benign (?:neoplasm|tumou?r|lesion)", 4), (r"\bcysts?\b(?!\s+wall)|cystic lesion", 3))
_SINUS = ((r"(?:sinus|collecting system|pelvis|calyc\w*)[^.]*(?:not|no longer) (?:involved|invaded)|no (?:\w+ ){0,2}invasion|"
           r"without (?:\w+ ){0,2}invasion|(?:sinus|collecting system) (?:is|are) (?:spared|intact|preserved)", 2),
          (r"(?:extends?|extending|invad\w*|invasion|infiltrat\w*)[^.]*(?:renal sinus|sinus fat|collecting system|renal pelvis|"
           r"calyc|peripelvic)|(?:sinus|pelvic|collecting system) invasion", 1))
_NUMBER_MULTIPLE = r"\b(multiple|several|numerous|multifocal|two|three)\b[^.]*(mass|lesion|cyst|nodule)|" \
                   r"\badditional\b[^.]*(mass|lesion|cyst|nodule)"


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(str(text or "")) if s.strip()]


def _mentions_mass(sentence: str) -> bool:
    """A mass word outside a negation of the same clause (``"no focal lesion"`` is not a mass)."""
    for clause in re.split(r"[,;:]", sentence):
        for m in _MASS.finditer(clause):
            before = clause[:m.start()].split()[-4:]
            if not _NEGATOR.search(" ".join(before)):
                return True
    return False


def _size_class(text: str) -> int:
    m = SIZE_PATTERN.search(text)
    if not m:
        return 0
    dims = [float(x) for x in m.groups()[:3] if x]
    cm = max(dims) / (10.0 if m.group(4).lower() == "mm" else 1.0)
    return size_class(round(cm, 1))


def _side_of(sentence: str) -> str | None:
    found = {w.lower() for w in _SIDE_WORD.findall(sentence)}
    if any(w.startswith("bilateral") or w == "both kidneys" for w in found) or found >= {"left", "right"}:
        return "both"
    if found:
        return found.pop()
    return None


def answers_for_kidney(findings: list[str], impression: list[str]) -> dict:
    """Class per question key from one kidney's findings and impression sentences."""
    out = {q.key: 0 for q in QUESTIONS}
    all_s = findings + impression
    mass_s = [s for s in all_s if _mentions_mass(s)]
    if not mass_s:
        return out
    primary = [s for s in all_s if not _ADDITIONAL.search(s)]
    text = " ".join(primary)
    find_text = " ".join(s for s in findings if not _ADDITIONAL.search(s)) or text
    imp_text = " ".join(s for s in impression if not _ADDITIONAL.search(s)) or text
    first_mass = next((s for s in findings if _mentions_mass(s) and not _ADDITIONAL.search(s)), mass_s[0])
    out["number"] = 2 if re.search(_NUMBER_MULTIPLE, " ".join(all_s), _FLAGS) else 1
    out["location"] = _first(_LOCATION, text)
    out["size"] = _size_class(find_text) or _size_class(text)
    out["exophytic"] = _first(_EXOPHYTIC, text)
    out["morphology"] = _first(_MORPHOLOGY, find_text)
    out["cystic_solid"] = _first(_CYSTIC_SOLID, first_mass)
    out["density"] = _first(_DENSITY, find_text)
    out["necrosis"] = _first(_NECROSIS, text)
    overall = " ".join(s for s in findings if not _ARTERIAL.search(s) and not _ADDITIONAL.search(s))
    out["enhancement"] = _first(_ENHANCEMENT, overall)
    arterial = " ".join(s for s in all_s if _ARTERIAL.search(s))
    out["arterial_enhancement"] = _first(_ARTERIAL_ENH, arterial) if arterial else 0
    out["margin"] = _first(_MARGIN, find_text)
    out["benign_malignant"] = _first(_BENIGN_MALIGNANT, imp_text)
    out["nature"] = _first(_NATURE, imp_text)
    out["sinus_invasion"] = _first(_SINUS, text)
    return out


def extract_answers(report_text: str, side: str | None = None) -> dict:
    """Questionnaire answers of a report: ``side`` (left, right, bilateral or None) and
    ``q_<key>_<side>`` class indices for both kidneys (the manifest's column names).

    With ``side`` given, the whole text is about that kidney (one kidney's findings + impression).
    """
    findings_text, impression_text = split_report(report_text)
    per_side = {s: ([], []) for s in SIDES}
    current = side
    for part, text in ((0, findings_text), (1, impression_text)):
        for s in sentences(text):
            named = _side_of(s) if side is None else side
            if named is not None:
                current = named
            targets = SIDES if current == "both" else (current,) if current in SIDES else ()
            for t in targets:
                per_side[t][part].append(s)
    out: dict = {}
    with_mass = []
    for s in SIDES:
        ans = answers_for_kidney(*per_side[s])
        if any(ans.values()):
            with_mass.append(s)
        out.update({f"q_{k}_{s}": v for k, v in ans.items()})
    out[SIDE_KEY] = "bilateral" if len(with_mass) == 2 else (with_mass[0] if with_mass else None)
    return out
