"""The RenalCLIP module's logic over MRML, without Qt: usable from the panel, the console and tests.

``CaseLogic`` holds the workflow of one case: phase inputs, registration, segmentation (nnU-Net in
a child process, reviewed as a segmentation node), the lesion centre point and its ROI box, the
analysis (``renalclip analyze`` in a child process) and its results; plus batch runs for the
Python console. ``RenalCLIPLogic`` in RenalCLIP.py is this class with Slicer's logic base class.
Child processes are started, never waited for, by the ``start...`` methods (the GUI stays live);
the batch methods wait.

Usage (Slicer's Python console)::

    logic = slicer.util.getModuleLogic("RenalCLIP")
    logic.guessPhaseNodes(); logic.registerPhases()
    assessment = logic.analyzeLoadedVolumes("/models/renalclip-bundle", report=True)
    results = logic.analyzeManifest("cohort/manifest.csv", "/models/renalclip-bundle", "batch_out")
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from renalclip_lib.constants import PHASES

from . import commands
from .child_process import SUCCEEDED, ChildProcess
from .job_logic import JobLogic
from .lesion_point import RoiFollower, ensure_lesion_point, ensure_roi_box, lesion_point_ras, propose_lesion_point
from .mrml_volumes import volume_from_node
from .parameters import Parameters
from .phase_inputs import guess_phases
from .registration import register_phase_nodes
from .results import fill_table_node, load_assessment, summary_line, table_rows
from .segmentation_nodes import label_volume_from_segmentation, segmentation_from_label_volume

RESULTS_TABLE_NAME = "RenalCLIP results"
SEGMENTATION_NAME = "RenalCLIP segmentation"


class CaseLogic(JobLogic):
    """Workflow of one case on a MRML scene (``slicer.mrmlScene`` unless one is given)."""

    PARAMETERS = Parameters

    def __init__(self, scene=None, backendFactory=None, renalclipPrefix=None, workFolder=None):
        super().__init__(scene, backendFactory, renalclipPrefix)
        self._workFolder = workFolder
        self.roiFollower = None
        self.assessment: dict | None = None

    def workFolder(self) -> Path:
        """Folder for the files handed to child processes (one per scene, kept for inspection)."""
        folder = self._workFolder or self.params["WorkFolder"]
        if not folder:
            folder = tempfile.mkdtemp(prefix="RenalCLIP-")
            self.params["WorkFolder"] = folder
        Path(folder).mkdir(parents=True, exist_ok=True)
        return Path(folder)

    # 1. Inputs ------------------------------------------------------------------------------------
    def candidateVolumes(self) -> list:
        """Scalar volumes a phase may come from (not label maps, not our registered outputs)."""
        sc = self.scene
        nodes = [sc.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode") for i in range(sc.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))]
        return [n for n in nodes if not n.IsA("vtkMRMLLabelMapVolumeNode") and n.GetAttribute("RenalCLIP.Registered") != "1"]

    def guessPhaseNodes(self, nodes=None, store: bool = True) -> dict:
        """Phase -> volume node guessed from the volumes' names; stored in the parameter node."""
        nodes = self.candidateVolumes() if nodes is None else list(nodes)
        by_name = {}
        for n in nodes:
            by_name.setdefault(n.GetName(), n)
        guessed = {p: by_name[name] for p, name in guess_phases(by_name).items()}
        if store and guessed:
            self.setPhaseNodes(guessed)
        return guessed

    def phaseNodes(self) -> dict:
        return self.params.phase_nodes()

    def setPhaseNodes(self, phaseNodes: dict) -> None:
        """Choose the phase volumes (phase -> node); earlier registered phases are forgotten."""
        params = self.params
        for p in PHASES:
            params.set_phase_node(p, phaseNodes.get(p))
            params.set_phase_node(p, None, registered=True)

    # 2. Registration --------------------------------------------------------------------------------
    def registerPhases(self, phaseNodes=None, useCli=None, log=None) -> dict:
        """Every phase on the reference grid (A, else V) as volume nodes; stored as the registered phases."""
        phaseNodes = self.phaseNodes() if phaseNodes is None else phaseNodes
        registered = register_phase_nodes(phaseNodes, self.scene, use_cli=useCli, log=log)
        params = self.params
        for p in PHASES:
            params.set_phase_node(p, registered.get(p), registered=True)
        return registered

    def analysisPhaseNodes(self) -> dict:
        """The registered phases if registration ran, else the selected phases."""
        return self.params.phase_nodes(registered=True) or self.phaseNodes()

    def referenceNode(self):
        from renalclip_lib.preprocess import reference_phase

        nodes = self.analysisPhaseNodes()
        if not nodes:
            raise ValueError("select at least one phase volume")
        return nodes[reference_phase(nodes)]

    # 3. Segmentation --------------------------------------------------------------------------------
    def writeVolumeFile(self, node, path) -> Path:
        from renalclip_lib.io import write_volume

        return write_volume(volume_from_node(node), path, compress=False)

    def segmentationCommand(self, referenceNode, modelFolder: str, device: str = "cpu") -> tuple[list, Path]:
        """(argv, output path) of the nnU-Net prediction on the reference phase (writes its input file)."""
        if not modelFolder:
            raise ValueError("choose the nnU-Net model folder")
        folder = self.workFolder()
        image = self.writeVolumeFile(referenceNode, folder / "segmentation_input.nii")
        out = folder / "segmentation_labels.nii.gz"
        if out.exists():
            out.unlink()
        return commands.segmentation_command(self.prefix(), str(image), modelFolder, str(out), device), out

    def startSegmentation(self, modelFolder: str, device: str = "cpu", referenceNode=None, **callbacks) -> ChildProcess:
        """Run nnU-Net in a child process; on success the labels become the case's segmentation node."""
        referenceNode = referenceNode or self.referenceNode()
        argv, out = self.segmentationCommand(referenceNode, modelFolder, device)
        finished = callbacks.pop("on_finished", None)

        def done(job):
            if job.status == SUCCEEDED:
                try:
                    self.loadSegmentationFile(out, referenceNode)
                except Exception as exc:  # noqa: BLE001 - reported to the panel as the job's error
                    job.status, job.error = "failed", str(exc)
            if finished:
                finished(job)

        return self._start(argv, on_finished=done, **callbacks)

    def loadSegmentationFile(self, path, referenceNode=None):
        """Label map file (1 kidney, 2 tumour, 3 cyst) -> the case's segmentation node (named, coloured)."""
        from renalclip_lib.io import read_volume

        labels = read_volume(path)
        node = self.params.node_for("Segmentation")
        node = segmentation_from_label_volume(labels, self.scene, node, referenceNode or self.referenceNode(),
                                              SEGMENTATION_NAME)
        self.params.set_node("Segmentation", node)
        return node

    # 4. Lesion centre ------------------------------------------------------------------------------
    def lesionPointNode(self):
        node = ensure_lesion_point(self.scene, self.params.node_for("LesionPoint"))
        self.params.set_node("LesionPoint", node)
        return node

    def proposeLesionCentre(self, segmentationNode=None, referenceNode=None):
        """Move the lesion point to the primary lesion's centre in the segmentation; returns LPS."""
        segmentationNode = segmentationNode or self.params.node_for("Segmentation")
        if segmentationNode is None:
            raise ValueError("segment the case (or load a segmentation) first")
        return propose_lesion_point(segmentationNode, referenceNode or self.referenceNode(), self.lesionPointNode())

    def showRoiBox(self, show: bool = True):
        """Show the 140 x 140 x 160 mm ROI box following the lesion point (or hide it)."""
        if self.roiFollower is not None:
            self.roiFollower.stop()
            self.roiFollower = None
        roi = ensure_roi_box(self.scene, self.params.node_for("RoiBox"))
        self.params.set_node("RoiBox", roi)
        if show:
            self.roiFollower = RoiFollower(self.lesionPointNode(), roi)
        elif roi.GetDisplayNode() is not None:
            roi.GetDisplayNode().SetVisibility(False)
        return roi

    # 5. Analysis --------------------------------------------------------------------------------------
    def analysisCommand(self, bundle: str, out, report: bool = False, device: str = "cpu", phaseNodes=None,
                        pointNode=None) -> list:
        """argv of ``renalclip analyze`` for the case (writes the phase files into the work folder)."""
        phaseNodes = phaseNodes or self.analysisPhaseNodes()
        if not phaseNodes:
            raise ValueError("select at least one phase volume")
        pointNode = pointNode or self.params.node_for("LesionPoint")
        center = lesion_point_ras(pointNode)
        if center is None:
            raise ValueError("place the lesion centre point (or propose it from the segmentation)")
        if not bundle:
            raise ValueError("choose the RenalCLIP model bundle folder")
        folder = self.workFolder()
        files = {p: str(self.writeVolumeFile(n, folder / f"phase_{p}.nii")) for p, n in phaseNodes.items()}
        labels = self.writeSegmentationFile(folder / "segmentation_reviewed.nii.gz")
        return commands.analyze_command(self.prefix(), files, bundle=bundle, out=str(out), center_ras=center,
                                        segmentation=labels, report=report, device=device)

    def writeSegmentationFile(self, path, segmentationNode=None, referenceNode=None) -> str | None:
        """The case's (reviewed) segmentation as a label map file for the analysis to measure the mass
        and check the report's side and size against; None when the case has no segmentation."""
        from renalclip_lib.io import write_volume

        segmentationNode = segmentationNode or self.params.node_for("Segmentation")
        if segmentationNode is None:
            return None
        labels = label_volume_from_segmentation(segmentationNode, referenceNode or self.referenceNode())
        return str(write_volume(labels, path))

    def startAnalysis(self, bundle: str, report: bool = False, device: str = "cpu", out=None, **callbacks) -> ChildProcess:
        """Run the analysis in a child process; on success the results fill the table node."""
        out = Path(out or self.workFolder() / ("assessment_report.json" if report else "assessment.json"))
        argv = self.analysisCommand(bundle, out, report, device)
        finished = callbacks.pop("on_finished", None)

        def done(job):
            if job.status == SUCCEEDED:
                try:
                    path = (job.result or {}).get("assessment") or out
                    self.loadResults(path)
                except Exception as exc:  # noqa: BLE001 - reported to the panel as the job's error
                    job.status, job.error = "failed", str(exc)
            if finished:
                finished(job)

        self.params["BundleFolder"] = bundle
        self.params["Device"] = device
        return self._start(argv, on_finished=done, **callbacks)

    def resultsTableNode(self):
        node = self.params.node_for("ResultsTable")
        if node is None:
            node = self.scene.AddNewNodeByClass("vtkMRMLTableNode", RESULTS_TABLE_NAME)
            self.params.set_node("ResultsTable", node)
        return node

    def loadResults(self, assessmentPath) -> dict:
        """Read assessment.json into the results table node; returns the assessment."""
        assessment = load_assessment(assessmentPath)
        fill_table_node(self.resultsTableNode(), table_rows(assessment))
        self.assessment = assessment
        self.params["AssessmentPath"] = str(assessmentPath)
        return assessment

    def summaryLine(self) -> str:
        return summary_line(self.assessment) if self.assessment else ""

    # Child processes ---------------------------------------------------------------------------------
    def _start(self, argv, **callbacks) -> ChildProcess:
        if self.running:
            raise RuntimeError("another RenalCLIP job is running: wait for it or cancel it")
        self.job = ChildProcess(self.backendFactory(), **callbacks)
        return self.job.start(argv, env=commands.child_environment())

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()

    # Batch (Python console) ------------------------------------------------------------------------
    def analyzeLoadedVolumes(self, bundle: str, report: bool = False, device: str = "cpu", out=None,
                             timeout: float | None = None, log=print) -> dict:
        """Analyse the case in the scene and wait: phases guessed if none chosen, registered, point proposed
        from the segmentation if none placed. Returns the assessment."""
        if not self.phaseNodes():
            self.guessPhaseNodes()
        if not self.params.phase_nodes(registered=True):
            self.registerPhases(log=log)
        if lesion_point_ras(self.params.node_for("LesionPoint")) is None:
            self.proposeLesionCentre()
        job = self.startAnalysis(bundle, report, device, out, on_log=log)
        job.wait(timeout)
        if job.status != SUCCEEDED:
            raise RuntimeError(f"analysis {job.status}: {job.error}")
        return self.assessment

    def analyzeManifest(self, manifest, bundle: str, outFolder, segmentWith: str | None = None,
                        report: bool = False, device: str = "cpu", timeout: float | None = None, log=print) -> dict:
        """Analyse every patient of a cohort manifest with ``renalclip batch`` (one child process) and wait.

        The centre comes from the manifest's centre columns, else its label map, else nnU-Net
        (``segmentWith``). Returns the batch's result (``outFolder/summary.csv`` lists every patient).
        """
        argv = commands.batch_command(self.prefix(), str(manifest), bundle, str(outFolder), segment_with=segmentWith,
                                      report=report, device=device)
        job = ChildProcess(self.backendFactory(), on_log=log,
                           on_progress=(lambda step, f, msg: log(f"[{100 * f:5.1f}%] {step}: {msg}")) if log else None)
        job.start(argv, env=commands.child_environment())
        job.wait(timeout)
        if job.status != SUCCEEDED:
            raise RuntimeError(f"batch {job.status}: {job.error}")
        return job.result or {}
