"""Write an evaluation run atomically: metrics.json, run.json, tables/, figures/, index.html.

Everything is written into a hidden temporary folder beside the output folder and renamed into place
at the end, so a failed or interrupted run leaves no half-written output. An existing output folder is
replaced only if it holds an earlier evaluation (a metrics.json); any other non-empty folder is refused.

Usage: ``summary = write_run(results, "eval_out", figures=True)``
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from pathlib import Path

from ..errors import RenalCLIPError


class OutputFolderError(RenalCLIPError):
    """The output folder exists and is not an earlier evaluation output."""


def check_output_folder(out: str | os.PathLike) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputFolderError(out, "exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "metrics.json").is_file():
        raise OutputFolderError(out, "exists, is not empty and holds no earlier evaluation (no metrics.json): "
                                     "choose another --out")
    return out


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("numpy", "scikit-learn", "scikit-survival", "lifelines", "nltk", "rouge-score", "matplotlib"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n", encoding="utf-8")


def write_run(res, out: str | os.PathLike, figures: bool = True, progress=None) -> dict:
    from .report_html import render_index
    from .tables import build_tables

    out = check_output_folder(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)
        _write_json(tmp / "metrics.json", res.to_json())
        s = res.settings
        _write_json(tmp / "run.json", {
            "models": {m: str(p.path) for m, p in res.predictions.items()},
            "embeddings": sorted(res.embeddings), "cohorts": res.cohorts,
            "groups": {g: m for g, m in res.members.items() if m != [g]},
            "bootstrap": s.n_boot, "seed": s.seed, "times_months": list(s.times),
            "meteor": s.wordnet is not None, "notes": res.notes, "versions": _versions()})
        tables = build_tables(res)
        for t in tables:
            t.write(tmp / "tables")
        if progress:
            progress(1, 3, f"{len(tables)} tables")
        figs = []
        if figures:
            from .figures import write_figures

            figs = write_figures(res, tmp / "figures")
        if progress:
            progress(2, 3, f"{len(figs)} figures")
        (tmp / "index.html").write_text(render_index(res, tables, figs, tmp), encoding="utf-8")
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if progress:
        progress(3, 3, "index.html")
    return {"out": str(out), "metrics": str(out / "metrics.json"), "index": str(out / "index.html"),
            "tables": len(tables), "figures": len(figs), "notes": len(res.notes)}
