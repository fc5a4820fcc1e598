"""The RenalCLIPTraining parameter node: the run's inputs, saved with the scene.

A ``vtkMRMLScriptedModuleNode`` singleton tagged "RenalCLIPTraining" (the RenalCLIP module's
``StringParameters``) holding string parameters whose names and defaults are listed here once.

Usage::

    params = TrainingParameters(slicer.mrmlScene)
    params["ConfigPath"] = "Resources/configs/demo.yaml"; params.gpus()   # 1
"""
from __future__ import annotations

from RenalCLIPLib.parameters import StringParameters

MODULE_NAME = "RenalCLIPTraining"
STRINGS = {"ConfigPath": "", "ManifestPath": "", "OutputFolder": "", "GPUs": "1", "Stages": "", "Overrides": ""}


class TrainingParameters(StringParameters):
    """Typed access to the RenalCLIPTraining parameter node's strings."""

    MODULE = MODULE_NAME
    DEFAULTS = STRINGS

    def gpus(self) -> int:
        try:
            return max(1, int(self["GPUs"]))
        except ValueError:
            return 1

    def overrides(self) -> list[str]:
        """``Overrides``: KEY=VALUE config overrides, one per line or separated by ';'."""
        text = self["Overrides"].replace(";", "\n")
        return [line.strip() for line in text.splitlines() if line.strip()]
