"""Log box, status line and error box of a module panel (both modules' widgets use it).

The widget's ``.ui`` provides ``logTextEdit`` and ``statusLabel``; ``ERROR_TITLE`` names the
message box.

Usage: ``class RenalCLIPWidget(ScriptedLoadableModuleWidget, VTKObservationMixin, PanelMessages)``
"""
from __future__ import annotations

STATUS_MESSAGE_MS = 5000


class PanelMessages:
    ERROR_TITLE = "RenalCLIP"

    def appendLog(self, message):
        self.ui.logTextEdit.appendPlainText(str(message))

    def showStatus(self, message):
        import slicer

        self.ui.statusLabel.text = message
        slicer.util.showStatusMessage(message, STATUS_MESSAGE_MS)

    def showError(self, message):
        import slicer

        self.ui.statusLabel.text = f"Error: {message}"
        self.appendLog(f"ERROR: {message}")
        slicer.util.errorDisplay(message, windowTitle=self.ERROR_TITLE)
