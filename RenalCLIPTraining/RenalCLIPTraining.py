"""RenalCLIPTraining: the whole pre-training and fine-tuning pipeline from a panel (3D Slicer scripted module).

The panel takes a config, a cohort manifest, an output folder, the GPUs and an optional subset of
stages, and runs ``renalclip train all ... --progress-json`` in a child process: the table follows
each stage (cache, attributes, text, text-features, clip, finetune, survival, report, evaluate,
bundle), Start turns into Stop (which kills the run; a new start resumes it), and the evaluation
report opens when the run is done. The Qt-free logic lives in RenalCLIPTrainingLib (tested headless);
this file holds the thin widget. Headless training without the panel: ``train.py`` beside this file.

From Slicer's Python console::

    logic = slicer.util.getModuleLogic("RenalCLIPTraining")
    logic.train("Resources/configs/demo.yaml", "run", manifest="cohort/manifest.csv")   # waits
    logic.reportPath()
"""
import os
import sys

import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

_HERE = os.path.dirname(os.path.abspath(__file__))
_REPO = os.path.dirname(_HERE)
for _p in (_HERE, _REPO):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from RenalCLIPTrainingLib.logic import TrainingLogic  # noqa: E402  (puts RenalCLIPLib on the path)
from RenalCLIPLib.panel_messages import PanelMessages  # noqa: E402

COLUMNS = ("Stage", "Status", "Time", "Message")
PATH_EDITS = {"ConfigPath": "configPathLineEdit", "ManifestPath": "manifestPathLineEdit",
              "OutputFolder": "outputPathLineEdit"}
START_TEXT = "Start training"


class RenalCLIPTraining(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "RenalCLIP Training"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["RenalCLIP for 3D Slicer developers"]
        self.parent.helpText = (
            "Pre-training and fine-tuning of RenalCLIP on a cohort manifest: ROI cache, attribute pre-training, "
            "text encoder, alignment, fine-tuning, survival, report generation, evaluation and the model bundle. "
            "Stages resume where they stopped; several GPUs train through torchrun.")
        self.parent.acknowledgementText = "Implements the RenalCLIP paper (kidney-cancer vision-language model)."


class RenalCLIPTrainingWidget(ScriptedLoadableModuleWidget, VTKObservationMixin, PanelMessages):
    ERROR_TITLE = "RenalCLIP Training"

    """The panel: widgets from Resources/UI/RenalCLIPTraining.ui, inputs in the parameter node, work in the logic."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._updating = False
        self._timer = None

    def setup(self):
        import qt

        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/RenalCLIPTraining.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = RenalCLIPTrainingLogic()

        self.ui.stagesTableWidget.setColumnCount(len(COLUMNS))
        self.ui.stagesTableWidget.setHorizontalHeaderLabels(list(COLUMNS))
        self.ui.stagesTableWidget.horizontalHeader().setStretchLastSection(True)
        self.ui.stagesTableWidget.verticalHeader().setVisible(False)
        self.ui.stagesTableWidget.setMinimumHeight(300)
        self.ui.progressBar.setValue(0)
        self._timer = qt.QTimer()
        self._timer.setInterval(1000)
        self._timer.connect("timeout()", self.onTick)

        for name in PATH_EDITS.values():
            getattr(self.ui, name).connect("currentPathChanged(QString)", self.updateParameterNodeFromGUI)
        self.ui.gpusSpinBox.connect("valueChanged(int)", self.updateParameterNodeFromGUI)
        self.ui.stagesLineEdit.connect("editingFinished()", self.updateParameterNodeFromGUI)
        self.ui.overridesLineEdit.connect("editingFinished()", self.updateParameterNodeFromGUI)
        self.ui.startButton.connect("clicked(bool)", self.onStartStop)
        self.ui.openReportButton.connect("clicked(bool)", self.onOpenReport)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()
        self.showStages(self.logic.stageProgress)

    def cleanup(self):
        if self.logic is not None and self.logic.running:
            self.logic.stop()
        if self._timer is not None:
            self._timer.stop()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    # Parameter node <-> GUI --------------------------------------------------------------------------
    def initializeParameterNode(self):
        params = self.logic.params
        if not params["ConfigPath"]:
            demo = os.path.join(_REPO, "Resources", "configs", "demo.yaml")
            if os.path.isfile(demo):
                params["ConfigPath"] = demo
        self.updateGUIFromParameterNode()

    def updateGUIFromParameterNode(self):
        params = self.logic.params
        self._updating = True
        try:
            for key, name in PATH_EDITS.items():
                getattr(self.ui, name).currentPath = params[key]
            self.ui.gpusSpinBox.value = params.gpus()
            self.ui.stagesLineEdit.text = params["Stages"]
            self.ui.overridesLineEdit.text = params["Overrides"]
        finally:
            self._updating = False
        if not self.logic.running:
            self.logic.outputFolder = params["OutputFolder"] or None
        self.updateButtons()

    def updateParameterNodeFromGUI(self, *unused):
        if self._updating:
            return
        params = self.logic.params
        for key, name in PATH_EDITS.items():
            params[key] = getattr(self.ui, name).currentPath
        params["GPUs"] = self.ui.gpusSpinBox.value
        params["Stages"] = self.ui.stagesLineEdit.text.strip()
        params["Overrides"] = self.ui.overridesLineEdit.text.strip()
        if not self.logic.running:
            self.logic.outputFolder = params["OutputFolder"] or None
        self.updateButtons()

    def updateButtons(self):
        running = self.logic.running
        self.ui.startButton.text = "Stop" if running else START_TEXT
        for name in list(PATH_EDITS.values()) + ["gpusSpinBox", "stagesLineEdit", "overridesLineEdit"]:
            getattr(self.ui, name).enabled = not running
        self.ui.openReportButton.enabled = self.logic.reportPath() is not None

    # Run ----------------------------------------------------------------------------------------------
    def onStartStop(self):
        if self.logic.running:
            self.logic.stop()
            self.showStatus("Stopping...")
            return
        self.updateParameterNodeFromGUI()
        for name in PATH_EDITS.values():
            getattr(self.ui, name).addCurrentPathToHistory()
        self.ui.logTextEdit.clear()
        self.ui.progressBar.setValue(0)
        try:
            job = self.logic.startTraining(on_stages=self.showStages, on_progress=self.onProgress,
                                           on_log=self.appendLog, on_finished=self.onFinished)
        except (ValueError, RuntimeError, OSError) as exc:
            self.showError(str(exc))
            return
        self.showStages(self.logic.stageProgress)
        if job.running:
            self._timer.start()
            self.showStatus(f"Training into {self.logic.outputFolder} ...")
        self.updateButtons()

    def onProgress(self, step, fraction, message):
        self.ui.progressBar.setValue(int(round(100 * fraction)))
        self.ui.statusLabel.text = f"{step}: {message}" if message else step

    def onTick(self):
        if self.logic.running:
            self.showStages(self.logic.stageProgress)
        else:
            self._timer.stop()

    def showStages(self, progress):
        import qt

        table = self.ui.stagesTableWidget
        states = list(progress)
        table.setRowCount(len(states))
        for row, state in enumerate(states):
            seconds = state.elapsed()
            cells = (state.name, state.status, "" if seconds is None else f"{seconds:.0f} s", state.message)
            for col, text in enumerate(cells):
                item = table.item(row, col)
                if item is None:
                    item = qt.QTableWidgetItem()
                    table.setItem(row, col, item)
                item.setText(text)
                if col == 3:
                    item.setToolTip(text)
        table.resizeColumnsToContents()

    def onFinished(self, job):
        self._timer.stop()
        self.showStages(self.logic.stageProgress)
        self.updateButtons()
        if job.status == "cancelled":
            self.showStatus("Stopped. Start again to resume from the last checkpoint.")
        elif job.status != "succeeded":
            self.showError(f"training failed: {job.error}")
        else:
            self.ui.progressBar.setValue(100)
            report = self.logic.reportPath()
            self.showStatus("Training finished." + (f" Evaluation report: {report}" if report else ""))

    def onOpenReport(self):
        import qt

        report = self.logic.reportPath()
        if report is None:
            self.showError("no evaluation report yet (the evaluate stage writes RUN/evaluation/index.html)")
            return
        qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(report)))


class RenalCLIPTrainingLogic(ScriptedLoadableModuleLogic, TrainingLogic):
    """The module logic: ``RenalCLIPTrainingLib.logic.TrainingLogic`` on Slicer's scene."""

    def __init__(self, scene=None, **kwargs):
        ScriptedLoadableModuleLogic.__init__(self)
        TrainingLogic.__init__(self, scene, **kwargs)

    def run(self, argv):
        """Run the ``renalclip`` command line in this process with ``argv``; returns its exit code."""
        from renalclip_lib.cli import main

        return main(argv)


class RenalCLIPTrainingTest(ScriptedLoadableModuleTest):
    """The cache stage of the pipeline on a small synthetic cohort, run through the logic in a child.

    Run from the repository root::

        Slicer --no-main-window --testing --additional-module-paths RenalCLIP RenalCLIPTraining --python-code \\
          "slicer.util.selectModule('RenalCLIPTraining'); import slicer.testing; slicer.testing.runUnitTest(['RenalCLIPTraining'], 'RenalCLIPTraining')"
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_cache_stage_runs_in_a_child()

    def test_cache_stage_runs_in_a_child(self):
        import tempfile

        from renalclip_lib.phantom import write_cohort

        work = tempfile.mkdtemp(prefix="renalclip_training_test_")
        self.delayDisplay("Synthetic cohort")
        manifest = write_cohort(os.path.join(work, "cohort"), n_patients=6, seed=3, matrix=64)
        self.delayDisplay("renalclip train all --stages cache")
        logic = RenalCLIPTrainingLogic()
        statuses = logic.train(os.path.join(_REPO, "Resources", "configs", "demo.yaml"), os.path.join(work, "run"),
                               manifest=str(manifest), stages="cache", timeout=900)
        self.assertEqual(statuses, {"cache": "done"})
        self.assertTrue(os.path.isfile(os.path.join(work, "run", "pipeline", "cache.json")))
        self.delayDisplay("Training module test passed")
