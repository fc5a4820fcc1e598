"""What both modules' logics share: the scene they work on, their parameter node, and one child job.

Usage::

    class CaseLogic(JobLogic):
        PARAMETERS = Parameters
    logic = CaseLogic(scene)           # slicer.mrmlScene when scene is None
    logic.params["Device"]; logic.prefix()   # argv start of the `renalclip` command
"""
from __future__ import annotations

from . import commands
from .child_process import ChildProcess, default_backend


class JobLogic:
    PARAMETERS = None

    def __init__(self, scene=None, backendFactory=None, renalclipPrefix=None):
        self._scene = scene
        self.backendFactory = backendFactory or default_backend
        self.renalclipPrefix = list(renalclipPrefix) if renalclipPrefix else None
        self.job: ChildProcess | None = None

    @property
    def scene(self):
        if self._scene is not None:
            return self._scene
        import slicer

        return slicer.mrmlScene

    @property
    def params(self):
        return self.PARAMETERS(self.scene)

    @property
    def running(self) -> bool:
        return self.job is not None and self.job.running

    def prefix(self) -> list[str]:
        return list(self.renalclipPrefix or commands.renalclip_prefix())
