"""Read and validate the evaluation inputs: predictions CSVs, embedding files, cohort lists,
data-efficiency results. Every problem raises a ``PredictionsError`` naming the file, the column and,
where there is one, the patient; nothing here guesses. The format is documented in docs/evaluation.md.

Usage::

    preds = read_predictions("renalclip.csv", "RenalCLIP")   # -> ModelPredictions
    spec = read_cohort_list("cohorts.txt")                    # -> CohortSpec(order, groups)
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import MissingFileError, RenalCLIPError
from . import columns as C


class PredictionsError(RenalCLIPError):
    """A predictions, embeddings, cohort-list or data-efficiency file is malformed."""


@dataclass
class ModelPredictions:
    name: str
    path: Path
    frame: pd.DataFrame                      # validated; numeric columns are float, text columns str
    tasks: list[str]                         # evaluable tasks, in ALL_TASKS order
    notes: list[str] = field(default_factory=list)


@dataclass
class CohortSpec:
    order: list[str] = field(default_factory=list)          # cohorts and groups in table order
    groups: dict[str, list[str]] = field(default_factory=dict)
    source: str | None = None


def parse_named_path(arg: str, what: str = "--model") -> tuple[str, Path]:
    """``NAME=path`` -> (NAME, path)."""
    name, sep, path = arg.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise PredictionsError(None, f"{what} expects NAME=FILE, got {arg!r}")
    return name.strip(), Path(path.strip())


def _require_file(path: Path) -> None:
    if not Path(path).is_file():
        raise MissingFileError(path, "file not found")


def _known_columns() -> set[str]:
    known = {C.PATIENT_ID, C.COHORT, C.RISK, C.STAGE, C.GRADE, C.REPORT_TRUE, C.REPORT_PRED}
    for task in C.MULTICLASS_TASKS + C.BINARY_TASKS:
        known |= {C.true_column(task), *C.prob_columns(task)}
    for task in C.ZEROSHOT_TASKS:
        known |= set(C.prob_columns(task))
    for ep in C.SURVIVAL_TASKS:
        known |= {C.time_column(ep), C.event_column(ep)}
    return known


def _who(frame: pd.DataFrame, row: int) -> str:
    return f"row {row + 2} (patient {frame[C.PATIENT_ID].iloc[row]!r})"


def _numeric(frame: pd.DataFrame, raw: pd.DataFrame, col: str, path: Path) -> None:
    values = pd.to_numeric(raw[col].str.strip(), errors="coerce")
    bad = values.isna() & raw[col].notna() & (raw[col].str.strip() != "")
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise PredictionsError(path, f"column {col}: {raw[col].iloc[i]!r} in {_who(frame, i)} is not a number")
    if np.isinf(values.to_numpy(float)).any():
        i = int(np.flatnonzero(np.isinf(values.to_numpy(float)))[0])
        raise PredictionsError(path, f"column {col}: infinite value in {_who(frame, i)}")
    frame[col] = values.astype(float)


def _check_labels(frame: pd.DataFrame, col: str, allowed: range, path: Path) -> None:
    v = frame[col].to_numpy(float)
    bad = ~np.isnan(v) & ~np.isin(v, list(allowed))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise PredictionsError(path, f"column {col}: {v[i]:g} in {_who(frame, i)} is not one of "
                                     f"{', '.join(str(a) for a in allowed)}")


def _need(cols: set[str], wanted: list[str], because: str, path: Path) -> None:
    missing = [c for c in wanted if c not in cols]
    if missing:
        raise PredictionsError(path, f"missing column {missing[0]} (needed because {because} is present)")


def read_predictions(path: str | os.PathLike, name: str) -> ModelPredictions:
    """Read one model's predictions CSV and decide which tasks it can be evaluated on."""
    path = Path(path)
    _require_file(path)
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except Exception as exc:  # noqa: BLE001 - pandas raises many types for unreadable text
        raise PredictionsError(path, f"cannot read as CSV: {exc}") from None
    raw.columns = [str(c).strip() for c in raw.columns]
    cols = set(raw.columns)
    for col in (C.PATIENT_ID, C.COHORT):
        if col not in cols:
            raise PredictionsError(path, f"missing column {col}")
    if len(raw) == 0:
        raise PredictionsError(path, "no rows")
    raw = raw.replace({"NA": "", "NaN": "", "nan": "", "None": "", "null": ""})
    frame = pd.DataFrame({C.PATIENT_ID: raw[C.PATIENT_ID].str.strip(), C.COHORT: raw[C.COHORT].str.strip()})
    for col in (C.PATIENT_ID, C.COHORT):
        empty = frame[col] == ""
        if empty.any():
            raise PredictionsError(path, f"column {col}: empty in row {int(np.flatnonzero(empty)[0]) + 2}")
    dup = frame[C.PATIENT_ID].duplicated()
    if dup.any():
        raise PredictionsError(path, f"column {C.PATIENT_ID}: {frame[C.PATIENT_ID][dup].iloc[0]!r} appears "
                                     "twice (one row per patient)")
    tasks, notes = [], []
    text_cols = {C.STAGE, C.GRADE, C.REPORT_TRUE, C.REPORT_PRED}
    for col in raw.columns:
        if col in (C.PATIENT_ID, C.COHORT):
            continue
        if col in text_cols:
            frame[col] = raw[col].where(raw[col].str.strip() != "", None)
        elif col in _known_columns():
            _numeric(frame, raw, col, path)
    unknown = sorted(cols - _known_columns())
    if unknown:
        notes.append(f"{path.name}: ignored unrecognised column(s) {', '.join(unknown)}")

    for task in C.MULTICLASS_TASKS + C.BINARY_TASKS:
        true, probs = C.true_column(task), C.prob_columns(task)
        present = [c for c in probs if c in cols]
        if true in cols:
            _check_labels(frame, true, range(C.n_classes(task)), path)
        if present:
            _need(cols, [true] + probs, present[0], path)
            tasks.append(task)
    if C.RISK in cols:
        for ep in C.SURVIVAL_TASKS:
            t_col, e_col = C.time_column(ep), C.event_column(ep)
            if t_col in cols or e_col in cols:
                _need(cols, [t_col, e_col], t_col if t_col in cols else e_col, path)
                _check_survival(frame, t_col, e_col, path)
                tasks.append(ep)
        if not any(ep in tasks for ep in C.SURVIVAL_TASKS):
            notes.append(f"{path.name}: column risk present but no survival columns (e.g. rfs_time, rfs_event)")
    elif any(c in cols for ep in C.SURVIVAL_TASKS for c in (C.time_column(ep), C.event_column(ep))):
        raise PredictionsError(path, "missing column risk (needed because survival times are present)")
    for task in C.ZEROSHOT_TASKS:
        col = C.prob_columns(task)[0]
        if col in cols:
            _need(cols, [C.true_column(task)], col, path)
            tasks.append(task)
    if C.REPORT_TRUE in cols or C.REPORT_PRED in cols:
        _need(cols, [C.REPORT_TRUE, C.REPORT_PRED], C.REPORT_TRUE if C.REPORT_TRUE in cols else C.REPORT_PRED,
              path)
        tasks.append(C.REPORT_TASK)
    if not tasks:
        raise PredictionsError(path, "no task columns found (expected e.g. malignancy_true + malignancy_prob, "
                                     "renal_R_true + renal_R_prob_0..2, risk + rfs_time + rfs_event)")
    tasks = [t for t in C.ALL_TASKS if t in tasks]
    return ModelPredictions(name, path, frame, tasks, notes)


def _check_survival(frame: pd.DataFrame, t_col: str, e_col: str, path: Path) -> None:
    t = frame[t_col].to_numpy(float)
    e = frame[e_col].to_numpy(float)
    half = np.isnan(t) != np.isnan(e)
    if half.any():
        i = int(np.flatnonzero(half)[0])
        given, other = (t_col, e_col) if not np.isnan(t[i]) else (e_col, t_col)
        raise PredictionsError(path, f"column {other}: empty in {_who(frame, i)} although {given} is given")
    if (t < 0).any():
        i = int(np.flatnonzero(t < 0)[0])
        raise PredictionsError(path, f"column {t_col}: negative time {t[i]:g} in {_who(frame, i)}")
    _check_labels(frame, e_col, range(2), path)


def read_embeddings(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """An ``.npz`` with ``image`` (n, d), ``text`` (n, d), ``patient_id`` (n,) and optional ``cohort``."""
    path = Path(path)
    _require_file(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as exc:  # noqa: BLE001
        raise PredictionsError(path, f"cannot read as .npz: {exc}") from None
    for key in ("image", "text", "patient_id"):
        if key not in data:
            raise PredictionsError(path, f"missing array {key!r} (has {', '.join(sorted(data)) or 'none'})")
    img, txt = np.asarray(data["image"], float), np.asarray(data["text"], float)
    ids = np.asarray(data["patient_id"]).astype(str)
    if img.ndim != 2 or txt.ndim != 2 or img.shape[0] != txt.shape[0] or ids.shape != (img.shape[0],):
        raise PredictionsError(path, f"shapes do not match: image {img.shape}, text {txt.shape}, "
                                     f"patient_id {ids.shape} (expected (n, d), (n, d'), (n,))")
    if img.shape[1] != txt.shape[1]:
        raise PredictionsError(path, f"image and text embeddings differ in width ({img.shape[1]} vs "
                                     f"{txt.shape[1]}): project them into the joint space first")
    if not (np.isfinite(img).all() and np.isfinite(txt).all()):
        raise PredictionsError(path, "non-finite values in the embeddings")
    if len(set(ids)) != len(ids):
        raise PredictionsError(path, "patient_id has duplicates (one image/text pair per patient)")
    out = {"image": img, "text": txt, "patient_id": ids}
    if "cohort" in data:
        out["cohort"] = np.asarray(data["cohort"]).astype(str)
    return out


_GROUP = re.compile(r"^\s*([^=]+?)\s*=\s*(.+?)\s*$")


def parse_group(text: str, source: str | None = None) -> tuple[str, list[str]]:
    m = _GROUP.match(text)
    members = [s.strip() for s in m.group(2).split(",") if s.strip()] if m else []
    if not m or not members:
        raise PredictionsError(source, f"a cohort group is written NAME = a, b, c; got {text.strip()!r}")
    return m.group(1), members


def read_cohort_list(path: str | os.PathLike) -> CohortSpec:
    """One cohort per line in table order; ``NAME = a, b, c`` defines a group; ``#`` starts a comment."""
    path = Path(path)
    _require_file(path)
    spec = CohortSpec(source=str(path))
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if "=" in line:
            name, members = parse_group(line, str(path))
            spec.groups[name] = members
            spec.order.append(name)
        else:
            spec.order.append(line)
    if len(set(spec.order)) != len(spec.order):
        raise PredictionsError(path, "a cohort or group is listed twice")
    return spec


def resolve_cohorts(spec: CohortSpec, models: list[ModelPredictions],
                    extra_cohorts=()) -> tuple[list[str], dict, list[str]]:
    """Final row order, {name: member cohorts}, and notes; errors on groups naming unknown cohorts."""
    seen = []
    for values in [m.frame[C.COHORT] for m in models] + [extra_cohorts]:
        for c in values:
            if c not in seen:
                seen.append(c)
    notes, members = [], {}
    for g, ms in spec.groups.items():
        if g in seen:
            raise PredictionsError(spec.source, f"group {g!r} has the name of a cohort in the predictions")
        unknown = [c for c in ms if c not in seen]
        if unknown:
            raise PredictionsError(spec.source, f"group {g!r} names cohort {unknown[0]!r}, which no "
                                                f"predictions file contains (cohorts: {', '.join(seen)})")
        members[g] = list(ms)
    order = [c for c in spec.order if c in seen or c in spec.groups]
    listed_missing = [c for c in spec.order if c not in seen and c not in spec.groups]
    if listed_missing:
        notes.append(f"cohort list names {', '.join(listed_missing)}, absent from every predictions file")
    extra = [c for c in seen if c not in order]
    if spec.order and extra:
        notes.append(f"cohorts not in the cohort list were added at the end: {', '.join(extra)}")
    order += extra + [g for g in spec.groups if g not in order]
    members.update({c: [c] for c in seen})
    return order, members, notes


DATA_EFFICIENCY_COLUMNS = ("model", "task", "cohort", "fraction", "seed", "value")


def read_data_efficiency(path: str | os.PathLike) -> pd.DataFrame:
    """CSV (or JSON list of records) with model, task, cohort, fraction, seed, value [, metric]."""
    path = Path(path)
    _require_file(path)
    try:
        df = pd.read_json(path) if path.suffix.lower() == ".json" else pd.read_csv(path, skipinitialspace=True)
    except Exception as exc:  # noqa: BLE001
        raise PredictionsError(path, f"cannot read: {exc}") from None
    df.columns = [str(c).strip() for c in df.columns]
    for col in DATA_EFFICIENCY_COLUMNS:
        if col not in df.columns:
            raise PredictionsError(path, f"missing column {col} (expected {', '.join(DATA_EFFICIENCY_COLUMNS)})")
    if "metric" not in df.columns:
        df["metric"] = "roc_auc"
    for col in ("fraction", "value"):
        num = pd.to_numeric(df[col], errors="coerce")
        if num.isna().any():
            i = int(np.flatnonzero(num.isna().to_numpy())[0])
            raise PredictionsError(path, f"column {col}: {df[col].iloc[i]!r} in row {i + 2} is not a number")
        df[col] = num.astype(float)
    bad = (df["fraction"] <= 0) | (df["fraction"] > 1)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise PredictionsError(path, f"column fraction: {df['fraction'].iloc[i]:g} in row {i + 2} is not in (0, 1]")
    for col in ("model", "task", "cohort", "metric"):
        df[col] = df[col].astype(str).str.strip()
    unknown = sorted(set(df["task"]) - set(C.ALL_TASKS))
    if unknown:
        raise PredictionsError(path, f"column task: unknown task {unknown[0]!r} (known: {', '.join(C.CORE_TASKS)})")
    return df
