"""The module's parameter node: which nodes and folders the current case uses (saved with the scene).

A ``vtkMRMLScriptedModuleNode`` singleton tagged "RenalCLIP" (the node Slicer's
``ScriptedLoadableModuleLogic.getParameterNode()`` returns), read and written through node
references and string parameters whose names are listed here once.

Usage::

    params = Parameters(slicer.mrmlScene)
    params.set_phase_node("A", arterial_node); params.phase_nodes()   # {"A": node}
    params["BundleFolder"] = "/models/renalclip"
"""
from __future__ import annotations

from renalclip_lib.constants import PHASES

MODULE_NAME = "RenalCLIP"
PHASE_ROLES = {p: f"Phase{p}" for p in PHASES}
REGISTERED_ROLES = {p: f"Registered{p}" for p in PHASES}
NODE_ROLES = ("Segmentation", "LesionPoint", "RoiBox", "ResultsTable")
STRINGS = {"BundleFolder": "", "Device": "cpu", "AssessmentPath": "", "WorkFolder": ""}
# Application settings (remembered across sessions, not per scene).
SETTINGS_NNUNET_FOLDER = "RenalCLIP/nnUNetModelFolder"
SETTINGS_BUNDLE_FOLDER = "RenalCLIP/BundleFolder"


def parameter_node(scene, module_name: str = MODULE_NAME):
    """The module's singleton parameter node in ``scene`` (created on first use)."""
    node = scene.GetSingletonNode(module_name, "vtkMRMLScriptedModuleNode")
    if node is None:
        node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
        node.UnRegister(None)
        node.SetSingletonTag(module_name)
        node.SetAttribute("ModuleName", module_name)
        node.SetName(f"{module_name} parameters")
        node = scene.AddNode(node)
    return node


class StringParameters:
    """String parameters of a module's parameter node, with defaults (unknown names raise KeyError).

    Subclasses name their module (``MODULE``) and their parameters with defaults (``DEFAULTS``).
    """

    MODULE = MODULE_NAME
    DEFAULTS: dict = {}

    def __init__(self, scene, node=None):
        self.scene = scene
        self.node = node or parameter_node(scene, self.MODULE)

    def __getitem__(self, key: str) -> str:
        if key not in self.DEFAULTS:
            raise KeyError(key)
        value = self.node.GetParameter(key)
        return value if value else self.DEFAULTS[key]

    def __setitem__(self, key: str, value) -> None:
        if key not in self.DEFAULTS:
            raise KeyError(key)
        self.node.SetParameter(key, "" if value is None else str(value))


class Parameters(StringParameters):
    """Typed access to the RenalCLIP parameter node's references and strings."""

    DEFAULTS = STRINGS

    def node_for(self, role: str):
        return self.node.GetNodeReference(role)

    def set_node(self, role: str, node) -> None:
        self.node.SetNodeReferenceID(role, node.GetID() if node is not None else None)

    def phase_nodes(self, registered: bool = False) -> dict:
        roles = REGISTERED_ROLES if registered else PHASE_ROLES
        return {p: n for p in PHASES if (n := self.node.GetNodeReference(roles[p])) is not None}

    def set_phase_node(self, phase: str, node, registered: bool = False) -> None:
        self.set_node((REGISTERED_ROLES if registered else PHASE_ROLES)[phase], node)
