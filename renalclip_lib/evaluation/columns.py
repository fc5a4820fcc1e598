"""Column names of a predictions CSV and the names of evaluation tasks and metrics (one place).

Task names come from ``renalclip_lib.tasks.TASKS``; evaluation adds zero-shot variants of the
binary tasks (``zeroshot_malignancy``), ``retrieval`` and ``report``. Every name a table, figure or
``metrics.json`` uses is built here.

Usage: ``prob_columns("renal_R") == ["renal_R_prob_0", "renal_R_prob_1", "renal_R_prob_2"]``
"""
from __future__ import annotations

from ..tasks import TASKS

PATIENT_ID = "patient_id"
COHORT = "cohort"
RISK = "risk"
STAGE = "stage"
GRADE = "grade"
REPORT_TRUE = "report_true"
REPORT_PRED = "report_pred"

MULTICLASS_TASKS = tuple(name for name, t in TASKS.items() if t.kind == "multiclass")
BINARY_TASKS = tuple(name for name, t in TASKS.items() if t.kind == "binary")
SURVIVAL_TASKS = tuple(name for name, t in TASKS.items() if t.kind == "survival")
CORE_TASKS = MULTICLASS_TASKS + BINARY_TASKS + SURVIVAL_TASKS        # the paper's 10 core tasks
ZEROSHOT_TASKS = tuple(f"zeroshot_{name}" for name in BINARY_TASKS)
RETRIEVAL_TASK = "retrieval"
REPORT_TASK = "report"
ALL_TASKS = CORE_TASKS + ZEROSHOT_TASKS + (RETRIEVAL_TASK, REPORT_TASK)

# The label that restricts survival analyses to malignant cases (paper: survival of kidney cancer).
MALIGNANT_TASK = "malignancy"

BINARY_METRICS = ("roc_auc", "pr_auc", "sensitivity", "specificity", "f1", "threshold")
RETRIEVAL_KS = (1, 3, 5)
RETRIEVAL_METRICS = tuple(f"{d}_recall@{k}" for d in ("t2i", "i2t") for k in RETRIEVAL_KS)
REPORT_METRICS = ("bleu1", "bleu2", "bleu4", "meteor", "rouge_l",
                  "side_agreement", "side_size_agreement", "consistency")   # the last three: extraction/consistency.py
DEFAULT_TIMES_MONTHS = tuple(12 * y for y in range(1, 11))          # yearly, 1..10 years

# Metrics where smaller is better (for bold "best" cells); p-values and thresholds have no best.
LOWER_IS_BETTER_PREFIXES = ("brier@",)
NO_BEST_PREFIXES = ("threshold", "km_logrank_p", "cox_", "km_")

METRIC_LABELS = {
    "roc_auc": "ROC AUC", "pr_auc": "PR AUC", "sensitivity": "Sensitivity", "specificity": "Specificity",
    "f1": "F1", "threshold": "Youden threshold", "c_index": "C-index", "bleu1": "BLEU-1", "bleu2": "BLEU-2",
    "bleu4": "BLEU-4", "meteor": "METEOR", "rouge_l": "ROUGE-L",
    "side_agreement": "Side agreement", "side_size_agreement": "Side + size agreement",
    "consistency": "Questionnaire consistency",
}

TASK_LABELS = {
    **{name: f"RENAL-{name[-1]}" for name in MULTICLASS_TASKS},
    "malignancy": "Malignancy", "aggressiveness": "Aggressiveness",
    "rfs": "RFS", "dss": "DSS", "os": "OS",
    **{f"zeroshot_{name}": f"Zero-shot {name}" for name in BINARY_TASKS},
    RETRIEVAL_TASK: "Cross-modal retrieval", REPORT_TASK: "Report generation",
}


def true_column(task: str) -> str:
    """Label column of a classification task: ``malignancy_true``; zero-shot uses the same label."""
    return f"{task.removeprefix('zeroshot_')}_true"


def prob_columns(task: str) -> list[str]:
    """Score columns: three per R.E.N.A.L. component, one per binary or zero-shot task."""
    if task in MULTICLASS_TASKS:
        return [f"{task}_prob_{k}" for k in range(len(TASKS[task].classes))]
    if task in BINARY_TASKS:
        return [f"{task}_prob"]
    if task in ZEROSHOT_TASKS:
        return [f"{task}_prob"]
    raise KeyError(task)


def time_column(endpoint: str) -> str:
    return f"{endpoint}_time"


def event_column(endpoint: str) -> str:
    return f"{endpoint}_event"


def n_classes(task: str) -> int:
    return len(TASKS[task.removeprefix("zeroshot_")].classes)


def td_metric(kind: str, months: float) -> str:
    """Name of a time-dependent metric: ``td_auc@12m``, ``td_cindex@12m``, ``brier@12m``."""
    return f"{kind}@{months:g}m"


def metric_label(metric: str) -> str:
    if "@" in metric and metric.endswith("m"):
        kind, months = metric.split("@")
        years = float(months[:-1]) / 12.0
        return {"td_auc": "AUC", "td_cindex": "C-index", "brier": "Brier"}.get(kind, kind) + f" {years:g} y"
    if "_recall@" in metric:
        direction, k = metric.split("_recall@")
        return f"{'Text-to-image' if direction == 't2i' else 'Image-to-text'} Recall@{k}"
    return METRIC_LABELS.get(metric, metric)


def higher_is_better(metric: str) -> bool | None:
    """True/False for performance metrics, None where no "best" applies (p-values, HRs, thresholds)."""
    if metric.startswith(NO_BEST_PREFIXES):
        return None
    return not metric.startswith(LOWER_IS_BETTER_PREFIXES)


def task_label(task: str) -> str:
    return TASK_LABELS.get(task, task)
