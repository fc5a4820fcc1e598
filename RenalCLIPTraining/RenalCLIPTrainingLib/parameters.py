"""The RenalCLIPTraining parameter node: the run's inputs, saved with the scene.

A ``vtkMRMLScriptedModuleNode`` singleton tagged "RenalCLIPTraining" (made by the RenalCLIP
module's ``parameter_node``) holding string parameters whose names and defaults are listed here once.

Usage::

    params = TrainingParameters(slicer.mrmlScene)
    params["ConfigPath"] = "Resources/configs/demo.yaml"; params.gpus()   # 1
"""
from __future__ import annotations

from RenalCLIPLib.parameters import parameter_node

MODULE_NAME = "RenalCLIPTraining"
STRINGS = {"ConfigPath": "", "ManifestPath": "", "OutputFolder": "", "GPUs": "1", "Stages": "", "Overrides": ""}


class TrainingParameters:
    """Typed access to the parameter node's strings (unknown names raise KeyError)."""

    def __init__(self, scene, node=None):
        self.scene = scene
        self.node = node or parameter_node(scene, MODULE_NAME)

    def __getitem__(self, key: str) -> str:
        if key not in STRINGS:
            raise KeyError(key)
        value = self.node.GetParameter(key)
        return value if value else STRINGS[key]

    def __setitem__(self, key: str, value) -> None:
        if key not in STRINGS:
            raise KeyError(key)
        self.node.SetParameter(key, "" if value is None else str(value))

    def gpus(self) -> int:
        try:
            return max(1, int(self["GPUs"]))
        except ValueError:
            return 1

    def overrides(self) -> list[str]:
        """``Overrides``: KEY=VALUE config overrides, one per line or separated by ';'."""
        text = self["Overrides"].replace(";", "\n")
        return [line.strip() for line in text.splitlines() if line.strip()]
