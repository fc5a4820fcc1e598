"""The paper's evaluation of any model's prediction files: metrics with bootstrap CIs, tables, figures.

Independent of training: point ``renalclip evaluate`` (or ``evaluate``) at predictions CSVs of RenalCLIP
or of a baseline (CT-FM, Merlin, ...). Format and definitions: docs/evaluation.md.

Usage::

    from renalclip_lib.evaluation import read_predictions, evaluate, write_run
    res = evaluate([read_predictions("ours.csv", "RenalCLIP"), read_predictions("ctfm.csv", "CT-FM")])
    write_run(res, "eval_out")
"""
import importlib

_EXPORTS = {"evaluate": "engine", "Settings": "engine", "Results": "engine", "write_run": "output",
            "read_predictions": "predictions", "read_embeddings": "predictions", "read_cohort_list": "predictions",
            "CohortSpec": "predictions", "PredictionsError": "predictions"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    """Import lazily: ``renalclip --help`` should not pay for pandas and scikit-learn."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
