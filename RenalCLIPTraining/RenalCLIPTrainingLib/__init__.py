"""Logic of the RenalCLIPTraining Slicer module that runs without a GUI (no Qt).

- ``commands``: the ``renalclip train all ... --progress-json`` command line, a pure function
- ``stage_progress``: per-stage status, time and last message followed from the child's JSON lines
- ``parameters``: the module's parameter node (config, manifest, output folder, GPUs, stages)
- ``process_tree``: the processes a run started (torchrun workers), ended with it on Stop
- ``logic``: ``TrainingLogic``, which starts, follows and stops the pipeline in a child process
  (through the RenalCLIP module's ``RenalCLIPLib.child_process`` runner)

Usage: ``from RenalCLIPTrainingLib.logic import TrainingLogic``
"""
import os as _os
import sys as _sys


def _add_renalclip_module_to_path() -> None:
    """Make ``RenalCLIPLib`` (the RenalCLIP module's logic, whose child-process runner we reuse)
    importable from a source checkout, where it lives in the sibling folder ``RenalCLIP``; an
    installed extension puts both modules' packages in one folder already on ``sys.path``."""
    sibling = _os.path.join(_os.path.dirname(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))),
                            "RenalCLIP")
    if _os.path.isdir(_os.path.join(sibling, "RenalCLIPLib")) and sibling not in _sys.path:
        _sys.path.append(sibling)


_add_renalclip_module_to_path()
