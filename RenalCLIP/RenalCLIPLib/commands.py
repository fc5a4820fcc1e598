"""The command lines the module runs in child processes: pure functions of their inputs.

``renalclip analyze`` and ``renalclip segmentation predict`` run as ``<python> -m renalclip_lib.cli``
with the folder that holds ``renalclip_lib`` on PYTHONPATH, so the same code runs inside Slicer
(PythonSlicer) and from a plain virtual environment.

Usage::

    argv = analyze_command(renalclip_prefix(), {"A": "a.nii.gz"}, bundle="bundle", out="assessment.json",
                           center_ras=(12.0, -30.5, 80.0), report=True)
    job.start(argv, env=child_environment())
"""
from __future__ import annotations

import os
import re
import shutil
import sys
from typing import Mapping, Sequence

from renalclip_lib.constants import PHASES

DEVICES = ("cpu", "cuda")
_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


def python_executable() -> str:
    """Slicer's own Python (PythonSlicer) inside Slicer, else this interpreter."""
    try:
        import slicer

        if getattr(slicer, "app", None) is not None:
            found = shutil.which("PythonSlicer")
            if found:
                return found
    except ImportError:
        pass
    return sys.executable


def renalclip_prefix(python: str | None = None) -> list[str]:
    """The argv prefix that runs the ``renalclip`` command line."""
    return [python or python_executable(), "-m", "renalclip_lib.cli"]


def library_root() -> str:
    """The folder holding the ``renalclip_lib`` package (added to the child's PYTHONPATH)."""
    import renalclip_lib

    return os.path.dirname(os.path.dirname(os.path.abspath(renalclip_lib.__file__)))


def child_environment(base: Mapping[str, str] | None = None, extra_path: str | None = None) -> dict:
    """Environment for a child: unbuffered output and ``renalclip_lib`` importable."""
    env = dict(os.environ if base is None else base)
    root = extra_path or library_root()
    old = env.get("PYTHONPATH", "")
    parts = [root] + [p for p in old.split(os.pathsep) if p and p != root]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("PYTHONIOENCODING", "utf-8")
    return env


def analyze_command(prefix: Sequence[str], phases: Mapping[str, str], bundle: str, out: str,
                    center_ras: Sequence[float] | None = None, center_lps: Sequence[float] | None = None,
                    segmentation: str | None = None, segment_with: str | None = None, report: bool = False,
                    panel: str | None = None, device: str = "cpu") -> list[str]:
    """argv of ``renalclip analyze`` (with ``--progress-json``): a centre (RAS or LPS), a segmentation
    (file or nnU-Net model), or a centre with a segmentation (the point places the ROI, the
    segmentation is measured and grounds the report)."""
    given = [p for p in PHASES if phases.get(p)]
    unknown = sorted(set(k for k, v in phases.items() if v) - set(PHASES))
    if unknown:
        raise ValueError(f"unknown phase(s) {', '.join(unknown)} (expected some of {', '.join(PHASES)})")
    if not given:
        raise ValueError("select at least one phase volume")
    if center_ras is not None and center_lps is not None:
        raise ValueError("give the lesion centre once, in RAS or in LPS")
    if segmentation is not None and segment_with is not None:
        raise ValueError("give a segmentation or a segmentation model, not both")
    if all(s is None for s in (center_ras, center_lps, segmentation, segment_with)):
        raise ValueError("give a lesion centre (RAS or LPS), a segmentation or a segmentation model")
    if not bundle:
        raise ValueError("choose the RenalCLIP model bundle folder")
    _check_device(device)
    argv = list(prefix) + ["analyze"]
    for p in given:
        argv += ["--phase", f"{p}={phases[p]}"]
    if center_ras is not None:
        argv += ["--center-ras", *(_num(v) for v in _triple(center_ras))]
    elif center_lps is not None:
        argv += ["--center-lps", *(_num(v) for v in _triple(center_lps))]
    if segmentation is not None:
        argv += ["--segmentation", str(segmentation)]
    elif segment_with is not None:
        argv += ["--segment-with", str(segment_with)]
    argv += ["--bundle", str(bundle), "--out", str(out)]
    if report:
        argv.append("--report")
    if panel:
        argv += ["--panel", str(panel)]
    argv += ["--device", device, "--progress-json"]
    return argv


def batch_command(prefix: Sequence[str], manifest: str, bundle: str, out: str, segment_with: str | None = None,
                  report: bool = False, device: str = "cpu") -> list[str]:
    """argv of ``renalclip batch`` over a cohort manifest (with ``--progress-json``)."""
    if not bundle:
        raise ValueError("choose the RenalCLIP model bundle folder")
    _check_device(device)
    argv = list(prefix) + ["batch", "--manifest", str(manifest), "--bundle", str(bundle), "--out", str(out)]
    if segment_with:
        argv += ["--segment-with", str(segment_with)]
    if report:
        argv.append("--report")
    return argv + ["--device", device, "--progress-json"]


def segmentation_command(prefix: Sequence[str], image: str, model: str, out: str, device: str = "cpu") -> list[str]:
    """argv of ``renalclip segmentation predict``."""
    if not model:
        raise ValueError("choose the nnU-Net model folder")
    _check_device(device)
    return list(prefix) + ["segmentation", "predict", str(image), "--model", str(model), "--out", str(out),
                           "--device", device]


def _check_device(device: str) -> None:
    if not _DEVICE.match(str(device)):
        raise ValueError(f"device must be cpu, cuda or cuda:N, not {device!r}")


def _triple(values) -> list[float]:
    vals = [float(v) for v in values]
    if len(vals) != 3:
        raise ValueError(f"a point has 3 coordinates, not {len(vals)}")
    return vals


def _num(v: float) -> str:
    return repr(float(v))
