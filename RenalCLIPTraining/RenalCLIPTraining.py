"""RenalCLIPTraining: the pre-training and fine-tuning pipeline as a headless Slicer module.

This first version generates the synthetic cohort; the training stages follow (see README).
Headless use::

    Slicer --no-main-window --python-script RenalCLIPTraining/train.py -- --help
"""
import os
import sys

from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleLogic

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)


class RenalCLIPTraining(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "RenalCLIP Training"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["RenalCLIP for 3D Slicer developers"]
        self.parent.helpText = "Pre-training and fine-tuning of RenalCLIP on a cohort manifest (headless)."
        self.parent.hidden = False


class RenalCLIPTrainingLogic(ScriptedLoadableModuleLogic):
    def run(self, argv):
        """Run the ``renalclip`` command line with ``argv``; returns its exit code."""
        from renalclip_lib.cli import main

        return main(argv)
