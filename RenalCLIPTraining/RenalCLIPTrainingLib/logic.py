"""``TrainingLogic``: runs ``renalclip train all`` in a child process and follows it stage by stage.

Qt-free: the child runs through the RenalCLIP module's ``ChildProcess`` (QProcess inside the Slicer
application, Popen elsewhere), so the same logic drives the panel, Slicer's Python console and the
tests. Inputs default to the module's parameter node; a new start writes them back there.

Usage::

    logic = TrainingLogic()
    logic.startTraining("Resources/configs/demo.yaml", "run", manifest="cohort/manifest.csv",
                        on_stages=lambda progress: print(progress.statuses()))
    logic.job.wait()                       # headless; the panel is called back by QProcess instead
    logic.reportPath()                     # run/evaluation/index.html once the evaluation exists
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from renalclip_lib.training.pipeline import PIPELINE_STAGES
from RenalCLIPLib import commands as renalclip_commands
from RenalCLIPLib.child_process import SUCCEEDED, ChildProcess
from RenalCLIPLib.job_logic import JobLogic

from .commands import parse_stages, train_all_command
from .parameters import TrainingParameters
from .process_tree import descendant_pids, job_pid, kill_pids
from .stage_progress import StageProgress

REPORT = ("evaluation", "index.html")
SUMMARY = ("pipeline", "summary.json")


class TrainingLogic(JobLogic):
    """Start, follow and stop one pipeline run (see the module docstring)."""

    PARAMETERS = TrainingParameters

    def __init__(self, scene=None, backendFactory=None, renalclipPrefix=None):
        super().__init__(scene, backendFactory, renalclipPrefix)
        self.stageProgress = StageProgress(PIPELINE_STAGES)
        self.outputFolder: str | None = None

    def trainCommand(self, config=None, out=None, manifest=None, gpus=None, stages=None, nnodes: int = 1,
                     rdzvEndpoint: str | None = None, overrides=None) -> list[str]:
        """argv of the run; every input left None comes from the parameter node."""
        p = self.params
        return train_all_command(
            self.prefix(), config if config is not None else p["ConfigPath"],
            out if out is not None else p["OutputFolder"], manifest if manifest is not None else p["ManifestPath"],
            gpus if gpus is not None else p.gpus(), stages if stages is not None else p["Stages"], nnodes,
            rdzvEndpoint, overrides if overrides is not None else p.overrides())

    def startTraining(self, config=None, out=None, manifest=None, gpus=None, stages=None, nnodes: int = 1,
                      rdzvEndpoint: str | None = None, overrides=None, on_stages: Callable | None = None,
                      on_progress: Callable | None = None, on_log: Callable | None = None,
                      on_finished: Callable | None = None) -> ChildProcess:
        """Start the run; ``on_stages(StageProgress)`` follows every change. Raises ValueError on bad input."""
        if self.running:
            raise RuntimeError("a training run is already going: stop it first")
        argv = self.trainCommand(config, out, manifest, gpus, stages, nnodes, rdzvEndpoint, overrides)
        p = self.params
        chosen = parse_stages(stages if stages is not None else p["Stages"])
        for key, value in (("ConfigPath", config), ("OutputFolder", out), ("ManifestPath", manifest), ("GPUs", gpus),
                           ("Stages", None if stages is None else ",".join(chosen))):
            if value is not None:
                p[key] = value
        if overrides is not None:
            p["Overrides"] = "; ".join(overrides)
        self.outputFolder = argv[argv.index("--out") + 1]
        progress = self.stageProgress = StageProgress(chosen or PIPELINE_STAGES)

        def changed():
            if on_stages is not None:
                on_stages(progress)

        def got_progress(step, fraction, message):
            progress.on_progress(step, fraction, message)
            if on_progress is not None:
                on_progress(step, fraction, message)
            changed()

        def got_log(message):
            progress.on_log(message)
            if on_log is not None:
                on_log(message)
            changed()

        def got_result(result):
            progress.on_result(result)
            changed()

        def finished(job):
            progress.on_finished(job.status, job.error)
            changed()
            if on_finished is not None:
                on_finished(job)

        self.job = ChildProcess(self.backendFactory(), on_progress=got_progress, on_log=got_log,
                                on_result=got_result, on_finished=finished)
        return self.job.start(argv, env=renalclip_commands.child_environment())

    def stop(self) -> None:
        """Kill the run and every process it started (torchrun and its workers); finished stages stay finished."""
        if not self.running:
            return
        workers = descendant_pids(job_pid(self.job))
        self.job.cancel()
        kill_pids(workers)

    def reportPath(self) -> Path | None:
        """The evaluation report ``RUN/evaluation/index.html`` when it exists, else None."""
        if not self.outputFolder:
            return None
        path = Path(self.outputFolder).joinpath(*REPORT)
        return path if path.is_file() else None

    def train(self, config, out, manifest=None, gpus: int = 1, stages=None, overrides=None, timeout=None,
              log: Callable | None = print) -> dict:
        """Blocking run for Slicer's Python console; returns stage -> status, raises RuntimeError on failure."""
        job = self.startTraining(config, out, manifest, gpus, stages, overrides=overrides, on_log=log)
        job.wait(timeout)
        if job.status != SUCCEEDED:
            raise RuntimeError(f"training {job.status}: {job.error}")
        return self.stageProgress.statuses()
