"""RenalCLIP: AI assessment of renal masses on multi-phase CT (3D Slicer scripted module).

A thin GUI over renalclip_lib. This first version extracts the model's region of interest around
a point the radiologist clicks; registration, nnU-Net review, analysis and the report panel
follow (see README). The MRML <-> library conversion lives in RenalCLIPLib and is tested headless.

Batch use from Slicer's Python console::

    logic = slicer.util.getModuleLogic("RenalCLIP")
    roi_node = logic.extractRoi(volume_node, markups_node)
"""
import os
import sys

import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)

_HERE = os.path.dirname(os.path.abspath(__file__))
_REPO = os.path.dirname(_HERE)
for _p in (_HERE, _REPO):
    if _p not in sys.path:
        sys.path.insert(0, _p)


class RenalCLIP(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "RenalCLIP"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["RenalCLIP for 3D Slicer developers"]
        self.parent.helpText = ("Assessment of renal masses on multi-phase CT with the RenalCLIP foundation "
                                "model. Research use only; not a medical device.")
        self.parent.acknowledgementText = "Implements the RenalCLIP paper (kidney-cancer vision-language model)."


class RenalCLIPWidget(ScriptedLoadableModuleWidget):
    def setup(self):
        import ctk
        import qt

        ScriptedLoadableModuleWidget.setup(self)
        self.logic = RenalCLIPLogic()
        box = ctk.ctkCollapsibleButton()
        box.text = "Region of interest"
        self.layout.addWidget(box)
        form = qt.QFormLayout(box)
        self.volumeSelector = slicer.qMRMLNodeComboBox()
        self.volumeSelector.nodeTypes = ["vtkMRMLScalarVolumeNode"]
        self.volumeSelector.setMRMLScene(slicer.mrmlScene)
        form.addRow("CT volume:", self.volumeSelector)
        self.pointSelector = slicer.qMRMLNodeComboBox()
        self.pointSelector.nodeTypes = ["vtkMRMLMarkupsFiducialNode"]
        self.pointSelector.setMRMLScene(slicer.mrmlScene)
        form.addRow("Lesion centre:", self.pointSelector)
        self.applyButton = qt.QPushButton("Extract ROI")
        form.addRow(self.applyButton)
        self.applyButton.connect("clicked(bool)", self.onApply)
        self.layout.addStretch(1)

    def onApply(self):
        from renalclip_lib.errors import RenalCLIPError

        try:
            node = self.logic.extractRoi(self.volumeSelector.currentNode(), self.pointSelector.currentNode())
            slicer.util.setSliceViewerLayers(background=node, fit=True)
        except (RenalCLIPError, ValueError) as exc:
            slicer.util.errorDisplay(str(exc))


class RenalCLIPLogic(ScriptedLoadableModuleLogic):
    def extractRoi(self, volumeNode, pointNode, name=None):
        """The 140x140x160 mm ROI around the first control point, as a new volume node."""
        from RenalCLIPLib.roi_logic import extract_roi_node

        return extract_roi_node(volumeNode, pointNode, slicer.mrmlScene, name)


class RenalCLIPTest(ScriptedLoadableModuleTest):
    def runTest(self):
        import pytest

        slicer.mrmlScene.Clear()
        code = pytest.main([os.path.join(_REPO, "Testing", "test_slicer_logic.py"), "-q"])
        self.assertEqual(code, 0)
