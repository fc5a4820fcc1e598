"""The 14 report questions of attribute pre-training, with the published release's ids and classes.

The paper extracts these answers from each kidney's report with an LLM (Supplementary Data Tables
33-35); the release trains one linear head per question. Class 0 is always "not mentioned / no
mass"; the other options follow in the questionnaire's letter order; ``DONT_KNOW`` (-1) is ignored
by the loss. The release's class counts fix two merges: question 1 folds "Other" into
"multiple/disseminated", question 4 has only "yes" against "not described".

Usage: ``for q in QUESTIONS: print(q.release_id, q.key, q.n_classes)``
"""
from __future__ import annotations

from dataclasses import dataclass

DONT_KNOW = -1
NOT_MENTIONED = 0


@dataclass(frozen=True)
class Question:
    number: int          # row of Supplementary Data Tables 33-34
    release_id: int      # id in the published checkpoint's head names (text_label_<id>)
    key: str             # short name, used in manifest columns ``q_<key>_<side>``
    text: str
    options: tuple[str, ...]  # class 0 first ("not mentioned / no mass"), then letter order

    @property
    def n_classes(self) -> int:
        return len(self.options)

    @property
    def head_name(self) -> str:
        """The question's head in attribute checkpoints, as released: ``text_label_<release id>``."""
        return f"text_label_{self.release_id}"

    def column(self, side: str) -> str:
        return f"q_{self.key}_{side}"


QUESTIONS: tuple[Question, ...] = (
    Question(1, 1, "number", "Overall nature and number of lesions",
             ("not mentioned/no mass", "solitary lesion", "multiple/disseminated lesions or other")),
    Question(2, 2, "location", "Location of the renal mass",
             ("not mentioned/no mass", "upper pole", "mid pole", "lower pole")),
    Question(3, 3, "size", "Size of the renal mass (maximum transverse diameter)",
             ("not mentioned/no mass", "<= 4 cm", "> 4 cm and <= 7 cm", "> 7 cm and <= 10 cm", "> 10 cm")),
    Question(4, 7, "exophytic", "Exophytic renal mass?", ("not described", "yes")),
    Question(5, 8, "morphology", "Morphology of the renal mass",
             ("not mentioned/no mass", "round, ovoid or oval", "irregular, ill-defined", "mass-like", "lobulated")),
    Question(6, 9, "cystic_solid", "Cystic or solid nature of the renal mass",
             ("not mentioned/no mass", "cystic", "cystic and solid", "solid")),
    Question(7, 11, "density", "Density of the renal mass",
             ("not mentioned/no mass", "hypodense", "isodense", "hyperdense", "heterogeneous density",
              "fat density (angiomyolipoma)", "mixed density")),
    Question(8, 13, "necrosis", "Imaging evidence of necrosis within the renal mass?",
             ("not mentioned/no mass", "yes", "no")),
    Question(9, 14, "enhancement", "Enhancement pattern after contrast administration",
             ("not mentioned/no mass", "non-enhancing", "mild enhancement", "moderate enhancement",
              "marked enhancement", "heterogeneous enhancement", "cyst wall/septal enhancement")),
    Question(10, 15, "arterial_enhancement", "Enhancement of the renal mass during the arterial phase",
             ("not mentioned/no mass", "no enhancement", "mild enhancement", "marked enhancement")),
    Question(11, 17, "margin", "Clarity of renal mass margins",
             ("not mentioned/no mass", "well-defined", "ill-defined")),
    Question(12, 18, "benign_malignant", "Is the renal mass likely benign or malignant?",
             ("not mentioned/no mass", "highly likely benign", "highly likely malignant", "more likely benign",
              "more likely malignant")),
    Question(13, 19, "nature", "Most likely nature of the renal mass",
             ("not mentioned/no mass", "malignant tumor", "angiomyolipoma", "cyst", "other benign lesion")),
    Question(14, 20, "sinus_invasion", "Invasion of renal pelvis/calyces/renal sinus/peripelvic fat?",
             ("not mentioned/no mass", "yes", "no")),
)

QUESTION_BY_KEY = {q.key: q for q in QUESTIONS}
RELEASE_CLASS_COUNTS = {1: 3, 2: 4, 3: 5, 7: 2, 8: 5, 9: 4, 11: 7, 13: 3, 14: 7, 15: 4, 17: 3, 18: 5, 19: 5, 20: 3}


def option_index(key: str, option: str) -> int:
    """Class index of an option text of question ``key`` (exact text as in ``options``)."""
    return QUESTION_BY_KEY[key].options.index(option)


def size_class(diameter_cm: float) -> int:
    """Question 3's class for a reported maximum diameter: <= 4, 4-7, 7-10, > 10 cm -> 1..4."""
    if diameter_cm <= 4.0:
        return 1
    if diameter_cm <= 7.0:
        return 2
    return 3 if diameter_cm <= 10.0 else 4
