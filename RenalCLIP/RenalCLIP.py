"""RenalCLIP: AI assessment of renal masses on multi-phase CT (3D Slicer scripted module).

The radiologist's tool: choose the phases, register them onto the arterial grid, segment kidneys,
tumour and cyst with nnU-Net and review the result, place (or accept) the lesion centre, run the
analysis and read the results table, then generate, edit and save a draft report. Long work runs in
child processes (``renalclip analyze`` / ``renalclip segmentation predict``) that print JSON lines;
the panel follows their progress and Cancel kills them. The Qt-free logic lives in RenalCLIPLib and
is tested headless on slicer-core's MRML; this file holds the thin widget.

Batch use from Slicer's Python console::

    logic = slicer.util.getModuleLogic("RenalCLIP")
    assessment = logic.analyzeLoadedVolumes("/models/renalclip-bundle", report=True)
    result = logic.analyzeManifest("cohort/manifest.csv", "/models/renalclip-bundle", "batch_out")
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

from RenalCLIPLib.logic import CaseLogic  # noqa: E402
from RenalCLIPLib.panel_messages import PanelMessages  # noqa: E402

PHASE_SELECTORS = {"N": "nonContrastSelector", "A": "arterialSelector", "V": "venousSelector", "D": "delayedSelector"}


class RenalCLIP(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "RenalCLIP"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Markups", "Segmentations"]
        self.parent.contributors = ["RenalCLIP for 3D Slicer developers"]
        self.parent.helpText = (
            "Assessment of renal masses on multi-phase CT with the RenalCLIP foundation model: R.E.N.A.L. "
            "components, malignancy, aggressiveness, survival risk group, zero-shot answers and a draft report. "
            "Research use only; not a medical device.")
        self.parent.acknowledgementText = "Implements the RenalCLIP paper (kidney-cancer vision-language model)."
        slicer.app.connect("startupCompleted()", self._registerSampleData)

    def _registerSampleData(self):
        from RenalCLIPLib.sample_data import register_sample_data

        register_sample_data(os.path.join(_HERE, "Resources", "Icons", "RenalCLIP.png"))


class RenalCLIPWidget(ScriptedLoadableModuleWidget, VTKObservationMixin, PanelMessages):
    """The panel: widgets from Resources/UI/RenalCLIP.ui, state in the parameter node, work in the logic."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._updating = False
        self._jobButton = None
        self._jobKind = None
        self._buttonTexts = {}
        self._checkedFeatures = set()

    # Setup --------------------------------------------------------------------------------------------
    def setup(self):
        import qt

        from RenalCLIPLib.commands import DEVICES
        from RenalCLIPLib.parameters import SETTINGS_BUNDLE_FOLDER, SETTINGS_NNUNET_FOLDER

        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/RenalCLIP.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = RenalCLIPLogic()

        self.ui.deviceComboBox.clear()
        self.ui.deviceComboBox.addItems(list(DEVICES))
        settings = qt.QSettings()
        self.ui.nnunetModelPathLineEdit.currentPath = settings.value(SETTINGS_NNUNET_FOLDER, "")
        self.ui.bundlePathLineEdit.currentPath = settings.value(SETTINGS_BUNDLE_FOLDER, "")
        self.ui.lesionPlaceWidget.buttonsVisible = False
        self.ui.lesionPlaceWidget.placeButton().show()
        self.ui.lesionPlaceWidget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceSingleMarkup
        self.ui.resultsTableView.setMinimumHeight(220)
        self.ui.progressBar.setValue(0)

        for code, name in PHASE_SELECTORS.items():
            getattr(self.ui, name).connect("currentNodeChanged(vtkMRMLNode*)", self.onPhaseSelected)
        self.ui.segmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onSegmentationSelected)
        self.ui.lesionPointSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onLesionPointSelected)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceSelected)
        self.ui.guessPhasesButton.connect("clicked(bool)", self.onGuessPhases)
        self.ui.loadSampleButton.connect("clicked(bool)", self.onLoadSample)
        self.ui.registerButton.connect("clicked(bool)", self.onRegister)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegment)
        self.ui.editSegmentationButton.connect("clicked(bool)", self.onEditSegmentation)
        self.ui.proposeCentreButton.connect("clicked(bool)", self.onProposeCentre)
        self.ui.showRoiCheckBox.connect("toggled(bool)", self.onShowRoi)
        self.ui.analyzeButton.connect("clicked(bool)", self.onAnalyze)
        self.ui.reportButton.connect("clicked(bool)", self.onReport)
        self.ui.copyReportButton.connect("clicked(bool)", self.onCopyReport)
        self.ui.saveReportButton.connect("clicked(bool)", self.onSaveReport)
        for name in ("segmentButton", "analyzeButton", "reportButton"):
            self._buttonTexts[name] = getattr(self.ui, name).text

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def cleanup(self):
        if self.logic is not None:
            self.logic.cancel()
            if self.logic.roiFollower is not None:
                self.logic.roiFollower.stop()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def onSceneStartClose(self, caller, event):
        if self.logic is not None:
            self.logic.cancel()
            if self.logic.roiFollower is not None:
                self.logic.roiFollower.stop()
                self.logic.roiFollower = None

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    # Parameter node <-> GUI ----------------------------------------------------------------------------
    def initializeParameterNode(self):
        params = self.logic.params
        if not params.phase_nodes():
            self.logic.guessPhaseNodes()
        self.updateGUIFromParameterNode()

    def updateGUIFromParameterNode(self):
        params = self.logic.params
        self._updating = True
        try:
            phases = params.phase_nodes()
            for code, name in PHASE_SELECTORS.items():
                getattr(self.ui, name).setCurrentNode(phases.get(code))
            self.ui.segmentationSelector.setCurrentNode(params.node_for("Segmentation"))
            point = params.node_for("LesionPoint")
            self.ui.lesionPointSelector.setCurrentNode(point)
            self.ui.lesionPlaceWidget.setCurrentNode(point)
            table = params.node_for("ResultsTable")
            if table is not None:
                self.ui.resultsTableView.setMRMLTableNode(table)
            index = self.ui.deviceComboBox.findText(params["Device"])
            self.ui.deviceComboBox.setCurrentIndex(max(index, 0))
        finally:
            self._updating = False
        self.updateButtons()

    def onPhaseSelected(self, node=None):
        """A changed phase invalidates the registered phases (registration must run again)."""
        if self._updating:
            return
        params = self.logic.params
        for code, name in PHASE_SELECTORS.items():
            params.set_phase_node(code, getattr(self.ui, name).currentNode())
            params.set_phase_node(code, None, registered=True)
        self.updateButtons()

    def onSegmentationSelected(self, node):
        if not self._updating:
            self.logic.params.set_node("Segmentation", node)

    def onDeviceSelected(self, index):
        if not self._updating:
            self.logic.params["Device"] = self.ui.deviceComboBox.currentText

    def onLesionPointSelected(self, node):
        if self._updating:
            return
        self.logic.params.set_node("LesionPoint", node)
        self.ui.lesionPlaceWidget.setCurrentNode(node)
        if self.ui.showRoiCheckBox.checked and node is not None:
            self.logic.showRoiBox(True)

    def updateButtons(self):
        running = self.logic.job is not None and self.logic.job.running
        hasPhase = bool(self.logic.phaseNodes())
        for name in ("guessPhasesButton", "loadSampleButton", "registerButton", "proposeCentreButton",
                     "editSegmentationButton"):
            getattr(self.ui, name).enabled = not running
        self.ui.registerButton.enabled = hasPhase and not running
        for name in ("segmentButton", "analyzeButton", "reportButton"):
            getattr(self.ui, name).enabled = (not running and hasPhase) or self._jobButton == name
        self.ui.saveReportButton.enabled = bool(self.ui.reportTextEdit.toPlainText())
        self.ui.copyReportButton.enabled = self.ui.saveReportButton.enabled

    def runSafely(self, what, function, *args):
        """Run a short step on the GUI thread; a problem goes to the panel and a message box."""
        from renalclip_lib.errors import RenalCLIPError

        try:
            with slicer.util.WaitCursor():
                return function(*args)
        except (RenalCLIPError, ValueError, RuntimeError, OSError) as exc:
            self.showError(f"{what}: {exc}")
        return None

    def ensureDependencies(self, features):
        from RenalCLIPLib.dependencies import DependencyInstaller

        todo = [f for f in features if f not in self._checkedFeatures]
        if not todo:
            return True
        try:
            with slicer.util.WaitCursor():
                ok = DependencyInstaller().ensure(todo)
        except Exception as exc:  # noqa: BLE001 - any installer failure is shown to the user
            self.showError(f"installing Python packages failed: {exc}")
            return False
        if ok:
            self._checkedFeatures.update(todo)
        else:
            self.showStatus("Cancelled: the required Python packages are not installed.")
        return ok

    # 1. Inputs ---------------------------------------------------------------------------------------------
    def onGuessPhases(self):
        guessed = self.runSafely("guessing phases", self.logic.guessPhaseNodes)
        if guessed is not None:
            self.updateGUIFromParameterNode()
            self.showStatus("Guessed: " + (", ".join(f"{p} = {n.GetName()}" for p, n in guessed.items()) or "nothing"))

    def onLoadSample(self):
        if not self.ensureDependencies(["core"]):
            return
        from RenalCLIPLib.sample_data import load_sample_case

        nodes = self.runSafely("loading the sample case", load_sample_case, slicer.mrmlScene)
        if nodes:
            self.logic.setPhaseNodes(nodes)
            slicer.util.setSliceViewerLayers(background=nodes.get("A") or next(iter(nodes.values())), fit=True)
            self.updateGUIFromParameterNode()
            self.showStatus("Sample case loaded (synthetic; not a patient).")

    def onRegister(self):
        if not self.ensureDependencies(["core"]):
            return
        registered = self.runSafely("registration", self.logic.registerPhases, None, None, self.appendLog)
        if registered:
            from renalclip_lib.preprocess import reference_phase

            ref = registered[reference_phase(registered)]
            slicer.util.setSliceViewerLayers(background=ref, fit=True)
            self.showStatus(f"Registered {len(registered)} phase(s) onto '{ref.GetName()}'.")

    # Child-process jobs -------------------------------------------------------------------------------------
    def startJob(self, buttonName, kind, start):
        """Start a job from a button that turns into Cancel; a second click cancels."""
        if self.logic.job is not None and self.logic.job.running:
            if self._jobButton == buttonName:
                self.logic.cancel()
            return
        self.ui.logTextEdit.clear()
        self.ui.progressBar.setValue(0)
        job = self.runSafely(f"starting {kind}", start, dict(on_progress=self.onJobProgress, on_log=self.appendLog,
                                                             on_finished=self.onJobFinished))
        if job is None:
            return
        if not job.running:
            return
        self._jobButton, self._jobKind = buttonName, kind
        getattr(self.ui, buttonName).text = "Cancel"
        self.showStatus(f"Running {kind}...")
        self.updateButtons()

    def onJobProgress(self, step, fraction, message):
        self.ui.progressBar.setValue(int(round(100 * fraction)))
        self.ui.statusLabel.text = f"{step}: {message}" if message else step

    def onJobFinished(self, job):
        buttonName, kind = self._jobButton, self._jobKind
        self._jobButton = self._jobKind = None
        if buttonName:
            getattr(self.ui, buttonName).text = self._buttonTexts[buttonName]
        self.updateButtons()
        if job.status == "cancelled":
            self.showStatus(f"{kind.capitalize() if kind else 'Job'} cancelled.")
            self.ui.progressBar.setValue(0)
            return
        if job.status != "succeeded":
            self.showError(f"{kind or 'job'} failed: {job.error}")
            return
        self.ui.progressBar.setValue(100)
        if kind == "segmentation":
            self.onSegmentationDone()
        elif kind in ("analysis", "report"):
            self.onAnalysisDone(kind == "report")

    # 2-3. Segmentation and lesion centre --------------------------------------------------------------------
    def onSegment(self):
        import qt

        from RenalCLIPLib.parameters import SETTINGS_NNUNET_FOLDER

        if not (self.logic.job is not None and self.logic.job.running):
            model = self.ui.nnunetModelPathLineEdit.currentPath
            if not model:
                self.showError("choose the nnU-Net model folder")
                return
            qt.QSettings().setValue(SETTINGS_NNUNET_FOLDER, model)
            self.ui.nnunetModelPathLineEdit.addCurrentPathToHistory()
            if not self.ensureDependencies(["core", "analysis", "segmentation"]):
                return
        device = self.ui.deviceComboBox.currentText
        self.startJob("segmentButton", "segmentation",
                      lambda cb: self.logic.startSegmentation(self.ui.nnunetModelPathLineEdit.currentPath, device, **cb))

    def onSegmentationDone(self):
        segmentation = self.logic.params.node_for("Segmentation")
        self.ui.segmentationSelector.setCurrentNode(segmentation)
        self.showStatus("Segmentation loaded: review it, then propose the lesion centre.")
        self.onProposeCentre()

    def onEditSegmentation(self):
        segmentation = self.ui.segmentationSelector.currentNode()
        if segmentation is None:
            self.showError("no segmentation to review")
            return
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(segmentation)
        editor.setSourceVolumeNode(self.logic.referenceNode())

    def onProposeCentre(self):
        if not self.ensureDependencies(["core"]):
            return
        center = self.runSafely("proposing the lesion centre", self.logic.proposeLesionCentre,
                                self.ui.segmentationSelector.currentNode())
        if center is None:
            return
        point = self.logic.lesionPointNode()
        self.ui.lesionPointSelector.setCurrentNode(point)
        self.ui.lesionPlaceWidget.setCurrentNode(point)
        if self.ui.showRoiCheckBox.checked:
            self.logic.showRoiBox(True)
        from RenalCLIPLib.lesion_point import lesion_point_ras

        ras = [float(v) for v in lesion_point_ras(point)]
        slicer.modules.markups.logic().JumpSlicesToLocation(*ras, True)
        self.showStatus("Lesion centre proposed (RAS %.1f, %.1f, %.1f): drag it if needed." % tuple(ras))

    def onShowRoi(self, show):
        self.runSafely("showing the ROI box", self.logic.showRoiBox, bool(show))

    # 4-5. Analysis and report -------------------------------------------------------------------------------
    def _startAnalysis(self, buttonName, report):
        import qt

        from RenalCLIPLib.parameters import SETTINGS_BUNDLE_FOLDER

        running = self.logic.job is not None and self.logic.job.running
        bundle = self.ui.bundlePathLineEdit.currentPath
        if not running:
            if not bundle:
                self.showError("choose the RenalCLIP model bundle folder")
                return
            qt.QSettings().setValue(SETTINGS_BUNDLE_FOLDER, bundle)
            self.ui.bundlePathLineEdit.addCurrentPathToHistory()
            if not self.ensureDependencies(["core", "analysis"] + (["report"] if report else [])):
                return
        device = self.ui.deviceComboBox.currentText
        self.startJob(buttonName, "report" if report else "analysis",
                      lambda cb: self.logic.startAnalysis(bundle, report=report, device=device, **cb))

    def onAnalyze(self):
        self._startAnalysis("analyzeButton", False)

    def onReport(self):
        self._startAnalysis("reportButton", True)

    def onAnalysisDone(self, withReport):
        from RenalCLIPLib.results import report_text

        self.ui.resultsTableView.setMRMLTableNode(self.logic.resultsTableNode())
        self.ui.summaryLabel.text = self.logic.summaryLine()
        warnings = self.logic.assessment.get("warnings") or []
        for w in warnings:
            self.appendLog(f"warning: {w}")
        if withReport:
            text = report_text(self.logic.assessment)
            self.ui.reportTextEdit.setPlainText(text or "(the bundle has no report generator)")
        self.showStatus("Analysis finished" + (f" with {len(warnings)} warning(s) (see Log)." if warnings else "."))
        self.updateButtons()

    def onCopyReport(self):
        import qt

        qt.QApplication.clipboard().setText(self.ui.reportTextEdit.toPlainText())
        self.showStatus("Report copied to the clipboard.")

    def onSaveReport(self):
        import qt

        from RenalCLIPLib.results import save_report

        path = qt.QFileDialog.getSaveFileName(self.parent, "Save report", "report.txt", "Text (*.txt)")
        if not path:
            return
        base = path[:-4] if path.lower().endswith(".txt") else path
        written = self.runSafely("saving the report", save_report, base + ".txt", base + ".json",
                                 self.ui.reportTextEdit.toPlainText(), self.logic.assessment)
        if written:
            self.showStatus("Saved " + ", ".join(str(p) for p in written))


class RenalCLIPLogic(ScriptedLoadableModuleLogic, CaseLogic):
    """The module logic: ``RenalCLIPLib.logic.CaseLogic`` on Slicer's scene (see that class for the methods)."""

    def __init__(self, scene=None, **kwargs):
        ScriptedLoadableModuleLogic.__init__(self)
        CaseLogic.__init__(self, scene, **kwargs)

    def extractRoi(self, volumeNode, pointNode, name=None):
        """The 140x140x160 mm ROI around the first control point, as a new volume node."""
        from RenalCLIPLib.roi_logic import extract_roi_node

        return extract_roi_node(volumeNode, pointNode, self.scene, name)


class RenalCLIPTest(ScriptedLoadableModuleTest):
    """The whole workflow on the synthetic sample case inside a real Slicer.

    nnU-Net runs when RENALCLIP_TEST_NNUNET names a model folder (else the case's ground-truth label
    map stands in for it); the analysis runs when RENALCLIP_TEST_BUNDLE names a model bundle (else
    that step is reported as not run). Testing mode installs missing packages without asking.
    Run from the repository root (README, "Using the Slicer module")::

        Slicer --no-main-window --testing --additional-module-paths RenalCLIP --python-code \\
          "slicer.util.selectModule('RenalCLIP'); import slicer.testing; slicer.testing.runUnitTest(['RenalCLIP'], 'RenalCLIP')"
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_workflow_on_sample_case()

    def test_workflow_on_sample_case(self):
        import numpy as np

        from RenalCLIPLib.dependencies import DependencyInstaller

        self.assertTrue(DependencyInstaller().ensure(["core"]))
        from renalclip_lib.coordinates import ras_to_lps
        from RenalCLIPLib.lesion_point import lesion_point_ras, roi_box_center_ras
        from RenalCLIPLib.sample_data import load_sample_case, write_sample_case

        self.delayDisplay("Sample case")
        logic = RenalCLIPLogic()
        info = write_sample_case()
        nodes = load_sample_case(slicer.mrmlScene)
        self.assertEqual(set(nodes), set(info["images"]))
        guessed = logic.guessPhaseNodes()
        self.assertEqual({p: n.GetID() for p, n in guessed.items()}, {p: n.GetID() for p, n in nodes.items()})

        self.delayDisplay("Registration")
        registered = logic.registerPhases()
        ref = registered[info["reference"]]
        for p, node in registered.items():
            self.assertEqual(node.GetImageData().GetDimensions(), ref.GetImageData().GetDimensions(), p)

        self.delayDisplay("Segmentation")
        model = os.environ.get("RENALCLIP_TEST_NNUNET")
        if model:
            self.assertTrue(DependencyInstaller().ensure(["core", "analysis", "segmentation"]))
            job = logic.startSegmentation(model, "cpu")
            job.wait(1800)
            self.assertEqual(job.status, "succeeded", job.error)
        else:
            logic.loadSegmentationFile(info["labels"][info["reference"]], ref)

        self.delayDisplay("Lesion centre and ROI box")
        center = logic.proposeLesionCentre()
        roi = logic.showRoiBox(True)
        ras = lesion_point_ras(logic.lesionPointNode())
        if not model:
            np.testing.assert_allclose(ras_to_lps(ras), info["lesion_center_lps"], atol=1e-3)
        np.testing.assert_allclose(ras_to_lps(ras), center, atol=1e-6)
        np.testing.assert_allclose(roi_box_center_ras(roi), ras, atol=1e-6)

        bundle = os.environ.get("RENALCLIP_TEST_BUNDLE")
        if not bundle:
            self.delayDisplay("Analysis not run: set RENALCLIP_TEST_BUNDLE to a model bundle folder")
            return
        self.delayDisplay("Analysis")
        self.assertTrue(DependencyInstaller().ensure(["core", "analysis"]))
        assessment = logic.analyzeLoadedVolumes(bundle, report=False, timeout=1800)
        self.assertEqual(assessment["schema_version"], 1)
        self.assertGreater(logic.resultsTableNode().GetNumberOfRows(), 0)
        self.delayDisplay("Workflow passed")
