"""The ``renalclip train all`` command line the panel runs: a pure function of its inputs.

The manifest is passed as the config override ``data.manifest`` (the pipeline reads it from the
config); ``--progress-json`` makes stdout carry only protocol lines (``renalclip_lib.progress``).

Usage::

    argv = train_all_command(["python", "-m", "renalclip_lib.cli"], "demo.yaml", "run",
                             manifest="cohort/manifest.csv", gpus=2, stages="cache,attributes")
"""
from __future__ import annotations

import re
from typing import Iterable, Sequence

from renalclip_lib.training.pipeline import PIPELINE_STAGES

_ENDPOINT = re.compile(r"^[A-Za-z0-9_.\-]+:\d{1,5}$|^\[[0-9A-Fa-f:.]+\]:\d{1,5}$")


def parse_stages(stages) -> list[str]:
    """``"cache, attributes"`` or a list -> stage names in pipeline order; empty means all stages."""
    if stages is None:
        return []
    names = [s.strip() for s in (stages.split(",") if isinstance(stages, str) else stages) if str(s).strip()]
    unknown = [s for s in names if s not in PIPELINE_STAGES]
    if unknown:
        raise ValueError(f"unknown stage '{unknown[0]}' (stages: {', '.join(PIPELINE_STAGES)})")
    return [s for s in PIPELINE_STAGES if s in names]


def train_all_command(prefix: Sequence[str], config: str, out: str, manifest: str | None = None, gpus: int = 1,
                      stages=None, nnodes: int = 1, rdzv_endpoint: str | None = None,
                      overrides: Iterable[str] = ()) -> list[str]:
    """argv of ``renalclip train all`` with ``--progress-json``; raises ValueError on a bad choice."""
    if not config:
        raise ValueError("choose the training config file (YAML), e.g. Resources/configs/demo.yaml")
    if not out:
        raise ValueError("choose the output folder of the run")
    gpus, nnodes = _positive(gpus, "GPUs per node"), _positive(nnodes, "nodes")
    if nnodes > 1 and not (rdzv_endpoint and _ENDPOINT.match(rdzv_endpoint)):
        raise ValueError(f"{nnodes} nodes need a rendezvous endpoint HOST:PORT, not {rdzv_endpoint!r}")
    argv = list(prefix) + ["train", "all", "--config", str(config), "--out", str(out)]
    chosen = parse_stages(stages)
    if chosen and chosen != list(PIPELINE_STAGES):
        argv += ["--stages", ",".join(chosen)]
    argv += ["--gpus", str(gpus)]
    if nnodes > 1:
        argv += ["--nnodes", str(nnodes), "--rdzv-endpoint", rdzv_endpoint]
    if manifest:
        argv += ["--set", f"data.manifest={manifest}"]
    for item in overrides:
        if "=" not in str(item):
            raise ValueError(f"a config override is KEY=VALUE, not {item!r}")
        argv += ["--set", str(item)]
    return argv + ["--progress-json"]


def _positive(value, what: str) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a whole number, not {value!r}") from None
    if n < 1 or n != float(value):
        raise ValueError(f"{what} must be a whole number >= 1, not {value!r}")
    return n
