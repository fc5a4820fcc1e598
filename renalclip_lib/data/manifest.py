"""The cohort manifest: one CSV row per CT image (patient x phase) with its labels and report.

The synthetic cohort writes it; a user fills in the same columns for real data. Paths are
relative to the manifest's folder (absolute paths also work). A blank cell means "unknown": the
label is ignored by training and evaluation. Extra columns are kept (``ManifestRow.extra``).

| column | required | values | meaning |
|---|---|---|---|
| patient_id | yes | text | one patient; all phases of a study share it |
| cohort | yes | text | site or synthetic cohort name (pretrain, internal, external_*, tcia_like, ...) |
| split | yes | pretrain, train, val, test | role of the patient |
| phase | yes | N, A, V, D | non-contrast, arterial (corticomedullary), venous (nephrographic), delayed (excretory) |
| image_path | yes | path | CT file (NIfTI, NRRD, MHA) or DICOM folder; must exist |
| label_path | no | path | label map (1 kidney, 2 tumour, 3 cyst) on the image's grid; must exist if given |
| lesion_side | no | left, right | kidney holding the primary lesion |
| center_x, center_y, center_z | no | mm (LPS) | primary lesion centre in this image; blank: computed from the label map |
| kidney_left_x/y/z, kidney_right_x/y/z | no | mm (LPS) | kidney centres (pre-training ROIs); blank: from the label map |
| findings_left, impression_left, findings_right, impression_right | no | text | report split per kidney |
| histology | no | text | pathology (e.g. clear_cell_rcc_aggressive, angiomyolipoma) |
| renal_R, renal_E, renal_N, renal_A, renal_L | no | 0, 1, 2 | R.E.N.A.L. components, classes A/B/C of Supplementary Data Table 1 |
| malignancy | no | 0, 1 | benign, malignant |
| aggressiveness | no | 0, 1 | indolent (benign or malignant indolent), aggressive |
| stage | no | 1-4 (or I-IV) | AJCC 8th stage group |
| grade | no | 1-4 | WHO/ISUP grade |
| rfs_time, dss_time, os_time | no | months >= 0 | time to event or censoring; give with the event |
| rfs_event, dss_event, os_event | no | 0, 1 | 1 event, 0 censored |
| q_<key>_left, q_<key>_right | no | -1 .. n-1 | the 14 report questions per kidney (``questionnaire.QUESTIONS``); 0 not mentioned, -1 don't know |

``read_manifest`` validates: required columns present (``ManifestError`` naming the file and the
column), each value in range (naming file, row, column and value), a coordinate triple given
whole or not at all, survival time and event together, image and label files present. With
``on_error="skip"`` bad rows are left out and listed in ``.problems`` as (row number, message).

Usage::

    rows = read_manifest("cohort/manifest.csv")                  # ManifestTable (a list of ManifestRow)
    rows = read_manifest(path, on_error="skip"); rows.problems   # [(7, "...: row 7: ...")]
    write_manifest(rows, "copy/manifest.csv")                    # atomic; paths made relative
"""
from __future__ import annotations

import csv
import io
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..constants import PHASES, SIDES
from ..errors import ManifestError
from ..questionnaire import DONT_KNOW, QUESTIONS
from ..tasks import RENAL_COMPONENTS, SURVIVAL_ENDPOINTS

SPLITS = ("pretrain", "train", "val", "test")
REQUIRED_COLUMNS = ("patient_id", "cohort", "split", "phase", "image_path")
REPORT_COLUMNS = tuple(f"{k}_{s}" for s in SIDES for k in ("findings", "impression"))
CENTER_COLUMNS = ("center_x", "center_y", "center_z")
KIDNEY_COLUMNS = tuple(f"kidney_{s}_{a}" for s in SIDES for a in "xyz")
RENAL_COLUMNS = tuple(f"renal_{c}" for c in RENAL_COMPONENTS)
SURVIVAL_COLUMNS = tuple(f"{e}_{k}" for e in SURVIVAL_ENDPOINTS for k in ("time", "event"))
QUESTION_COLUMNS = tuple(q.column(s) for s in SIDES for q in QUESTIONS)
COLUMNS = (REQUIRED_COLUMNS + ("label_path", "lesion_side") + CENTER_COLUMNS + KIDNEY_COLUMNS + REPORT_COLUMNS
           + ("histology",) + RENAL_COLUMNS + ("malignancy", "aggressiveness", "stage", "grade") + SURVIVAL_COLUMNS
           + QUESTION_COLUMNS)
_ROMAN = {"I": 1, "II": 2, "III": 3, "IV": 4}
_INT_RANGES = {**{c: (0, 2) for c in RENAL_COLUMNS}, "malignancy": (0, 1), "aggressiveness": (0, 1),
               "stage": (1, 4), "grade": (1, 4), **{f"{e}_event": (0, 1) for e in SURVIVAL_ENDPOINTS},
               **{q.column(s): (DONT_KNOW, q.n_classes - 1) for s in SIDES for q in QUESTIONS}}
_FLOATS = CENTER_COLUMNS + KIDNEY_COLUMNS + tuple(f"{e}_time" for e in SURVIVAL_ENDPOINTS)
_TEXT = REPORT_COLUMNS + ("histology",)


@dataclass
class ManifestRow:
    """One image. ``values`` holds every known column parsed (None = blank); paths are absolute."""

    patient_id: str
    cohort: str
    split: str
    phase: str
    image_path: Path
    label_path: Path | None = None
    values: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    row_number: int | None = None

    def __getitem__(self, column: str):
        if column in ("patient_id", "cohort", "split", "phase", "image_path", "label_path"):
            return getattr(self, column)
        return self.values.get(column)

    def get(self, column: str, default=None):
        v = self[column]
        return default if v is None else v

    @property
    def center(self):
        c = [self.values.get(k) for k in CENTER_COLUMNS]
        return None if c[0] is None else tuple(c)

    def kidney_center(self, side: str):
        c = [self.values.get(f"kidney_{side}_{a}") for a in "xyz"]
        return None if c[0] is None else tuple(c)

    def report(self, side: str) -> tuple[str, str]:
        return self.values.get(f"findings_{side}") or "", self.values.get(f"impression_{side}") or ""

    @classmethod
    def from_dict(cls, values: dict, base_dir=None, row_number: int | None = None, source: str = "<manifest>",
                  check_files: bool = False) -> "ManifestRow":
        """Build and validate a row from raw (string or typed) values; raises ``ManifestError``."""
        return _parse_row(values, Path(base_dir) if base_dir is not None else Path.cwd(), row_number, source, check_files)

    def to_strings(self, base_dir: Path) -> dict:
        out = {c: "" for c in COLUMNS}
        out.update({k: "" if v is None else str(v) for k, v in self.extra.items()})
        out.update(patient_id=self.patient_id, cohort=self.cohort, split=self.split, phase=self.phase,
                   image_path=_rel(self.image_path, base_dir), label_path=_rel(self.label_path, base_dir))
        for k, v in self.values.items():
            out[k] = _fmt(v)
        return out


class ManifestTable(list):
    """The rows of a manifest (a list of ``ManifestRow``) with the file and any skipped rows."""

    def __init__(self, rows=(), path: Path | None = None, problems=None):
        super().__init__(rows)
        self.path = path
        self.problems = list(problems or [])

    def by_patient(self) -> dict:
        out: dict = {}
        for r in self:
            out.setdefault(r.patient_id, []).append(r)
        return out


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(round(v, 4)) if not v.is_integer() else str(v)
    return str(v)


def _rel(p, base: Path) -> str:
    if p is None:
        return ""
    p = Path(p)
    try:
        return Path(os.path.relpath(p, base)).as_posix()
    except ValueError:
        return p.as_posix()


def _bad(source, row, column, value, why) -> ManifestError:
    where = f"row {row}: " if row is not None else ""
    return ManifestError(source, f"{where}column {column}: {why} (value {value!r})")


def _blank(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and v.strip() == "")


def _parse_row(raw: dict, base: Path, row, source: str, check_files: bool) -> ManifestRow:
    get = lambda c: None if _blank(raw.get(c)) else raw.get(c)  # noqa: E731
    for c in REQUIRED_COLUMNS:
        if get(c) is None:
            raise _bad(source, row, c, raw.get(c, ""), "required value is blank")
    split, phase = str(get("split")).strip(), str(get("phase")).strip()
    if split not in SPLITS:
        raise _bad(source, row, "split", split, f"must be one of {', '.join(SPLITS)}")
    if phase not in PHASES:
        raise _bad(source, row, "phase", phase, f"must be one of {', '.join(PHASES)}")
    paths = {}
    for c in ("image_path", "label_path"):
        v = get(c)
        if v is None:
            paths[c] = None
            continue
        p = Path(str(v).strip())
        p = p if p.is_absolute() else base / p
        if check_files and not p.exists():
            raise _bad(source, row, c, str(v), f"file not found ({p})")
        paths[c] = p
    values = {}
    side = get("lesion_side")
    if side is not None and str(side).strip() not in SIDES:
        raise _bad(source, row, "lesion_side", side, "must be left, right or blank")
    values["lesion_side"] = None if side is None else str(side).strip()
    for c in _TEXT:
        v = get(c)
        values[c] = None if v is None else str(v)
    for c in _FLOATS:
        v = get(c)
        if v is None:
            values[c] = None
            continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise _bad(source, row, c, v, "not a number") from None
        if not math.isfinite(f):
            raise _bad(source, row, c, v, "not a finite number")
        if c.endswith("_time") and f < 0:
            raise _bad(source, row, c, v, "survival time must be >= 0 months")
        values[c] = f
    for c, (lo, hi) in _INT_RANGES.items():
        v = get(c)
        if v is None:
            values[c] = None
            continue
        s = str(v).strip()
        if c == "stage" and s.upper() in _ROMAN:
            s = str(_ROMAN[s.upper()])
        try:
            f = float(s)
            if not f.is_integer():
                raise ValueError
            i = int(f)
        except (TypeError, ValueError):
            raise _bad(source, row, c, v, f"must be an integer {lo}..{hi}") from None
        if not lo <= i <= hi:
            raise _bad(source, row, c, v, f"out of range {lo}..{hi}")
        values[c] = i
    for group in (CENTER_COLUMNS,) + tuple(tuple(f"kidney_{s}_{a}" for a in "xyz") for s in SIDES):
        given = [values[c] is not None for c in group]
        if any(given) and not all(given):
            missing = next(c for c, g in zip(group, given) if not g)
            raise _bad(source, row, missing, "", f"{', '.join(group)} must be given together")
    for e in SURVIVAL_ENDPOINTS:
        t, ev = values[f"{e}_time"], values[f"{e}_event"]
        if (t is None) != (ev is None):
            col = f"{e}_event" if ev is None else f"{e}_time"
            raise _bad(source, row, col, "", f"{e}_time and {e}_event must be given together")
    extra = {k: v for k, v in raw.items() if k not in COLUMNS and k is not None}
    return ManifestRow(str(get("patient_id")).strip(), str(get("cohort")).strip(), split, phase, paths["image_path"],
                       paths["label_path"], values, extra, row)


def read_manifest(path, on_error: str = "fail", check_files: bool = True) -> ManifestTable:
    """Read and validate a manifest CSV (see module docstring); ``on_error`` is "fail" or "skip"."""
    if on_error not in ("fail", "skip"):
        raise ValueError("on_error must be 'fail' or 'skip'")
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise ManifestError(source, "manifest file not found")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise ManifestError(source, f"missing required column {missing[0]}" + (f" (also {', '.join(missing[1:])})" if missing[1:] else ""))
        rows, problems = [], []
        for n, raw in enumerate(reader, start=2):
            if None in raw:
                err = ManifestError(source, f"row {n}: more cells than header columns")
            else:
                try:
                    rows.append(_parse_row(raw, path.parent, n, source, check_files))
                    continue
                except ManifestError as exc:
                    err = exc
            if on_error == "fail":
                raise err
            problems.append((n, str(err)))
    return ManifestTable(rows, path, problems)


def write_manifest(rows, path) -> Path:
    """Write rows (``ManifestRow`` or dicts of column -> value) as CSV atomically; paths made relative."""
    path = Path(path)
    base = path.parent
    base.mkdir(parents=True, exist_ok=True)
    parsed = [r if isinstance(r, ManifestRow) else ManifestRow.from_dict(r, base) for r in rows]
    extra_cols = []
    for r in parsed:
        extra_cols += [k for k in r.extra if k not in extra_cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(COLUMNS) + extra_cols, lineterminator="\n")
    w.writeheader()
    for r in parsed:
        w.writerow(r.to_strings(base))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".csv", dir=base)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            fh.write(buf.getvalue())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def merge_manifests(paths, out) -> Path:
    """One manifest of several (e.g. two sites, or a cohort and an extra pre-training pool): every
    row validated, paths rewritten relative to ``out``'s folder. A patient's phase given by two
    manifests is one ``ManifestError`` naming both files; nothing is written then.

    Usage: ``merge_manifests(["cohort/manifest.csv", "more_pretrain/manifest.csv"], "all/manifest.csv")``
    """
    rows, seen = [], {}
    for path in paths:
        for r in read_manifest(path):
            key = (r.patient_id, r.phase)
            if key in seen:
                raise ManifestError(str(path), f"patient {r.patient_id} phase {r.phase} is also in {seen[key]}")
            seen[key] = str(path)
            rows.append(r)
    return write_manifest(rows, out)
