"""Put every phase volume node on the reference grid (arterial, else venous), as new volume nodes.

Inside Slicer the BRAINSResample CLI module does it (linear, identity transform, -1000 HU outside);
where Slicer has no CLI modules (slicer-core, headless tests) renalclip_lib's resampler does the
same computation (``renalclip_lib.preprocess.resample_to_reference``). The reference phase node is
used as it is; each other phase gets a node named ``"<name> on <reference> grid"`` (reused when the
registration is run again).

Usage::

    registered = register_phase_nodes({"A": art, "V": ven}, slicer.mrmlScene)  # {"A": art, "V": new}
"""
from __future__ import annotations

from renalclip_lib.constants import AIR_HU, PHASE_NAMES
from renalclip_lib.errors import PhaseOverlapError
from renalclip_lib.preprocess import overlap_fraction, reference_phase, resample_to_reference

from .mrml_volumes import node_from_volume, volume_from_node

BRAINSRESAMPLE_PARAMETERS = {"pixelType": "float", "interpolationMode": "Linear", "defaultValue": AIR_HU}


def brainsresample_module():
    """Slicer's BRAINSResample CLI module, or None where Slicer has no CLI modules."""
    import slicer

    modules = getattr(slicer, "modules", None)
    if modules is None or not hasattr(slicer, "cli"):
        return None
    return getattr(modules, "brainsresample", None)


def registered_name(node, reference_phase_code: str) -> str:
    return f"{node.GetName()} on {PHASE_NAMES[reference_phase_code]} grid"


def _output_node(scene, name: str):
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
        n = scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
        if n.GetName() == name and n.GetAttribute("RenalCLIP.Registered") == "1":
            return n
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.CreateDefaultDisplayNodes()
    node.SetAttribute("RenalCLIP.Registered", "1")
    return node


def _resample_with_cli(module, moving, reference, output) -> None:
    import slicer

    params = {"inputVolume": moving.GetID(), "referenceVolume": reference.GetID(), "outputVolume": output.GetID(),
              **BRAINSRESAMPLE_PARAMETERS}
    cli = slicer.cli.runSync(module, None, params)
    ok = cli.GetStatus() & cli.Completed and not cli.GetStatus() & cli.ErrorsMask
    slicer.mrmlScene.RemoveNode(cli)
    if not ok:
        raise RuntimeError(f"BRAINSResample failed on '{moving.GetName()}': {cli.GetErrorText().strip()}")


def register_phase_nodes(phase_nodes: dict, scene, use_cli: bool | None = None, log=None) -> dict:
    """Phase -> node on the reference grid for every non-empty phase of ``phase_nodes``.

    ``use_cli`` None uses BRAINSResample when Slicer has it; False forces renalclip_lib's resampler.
    Raises ``PhaseOverlapError`` for a phase that shares no volume with the reference.
    """
    phases = {p: n for p, n in phase_nodes.items() if n is not None}
    ref_code = reference_phase(phases)
    ref_node = phases[ref_code]
    module = brainsresample_module() if use_cli in (None, True) else None
    if use_cli and module is None:
        raise RuntimeError("BRAINSResample is not available in this Slicer")
    ref_geometry = volume_from_node(ref_node, with_voxels=False)
    out = {ref_code: ref_node}
    for code, node in phases.items():
        if code == ref_code:
            continue
        moving_geometry = volume_from_node(node, with_voxels=False)
        if overlap_fraction(moving_geometry, ref_geometry) <= 0.0:
            raise PhaseOverlapError(node.GetName(), f"does not overlap the reference scan '{ref_node.GetName()}'")
        target = _output_node(scene, registered_name(node, ref_code))
        if log:
            log(f"resampling {PHASE_NAMES[code]} '{node.GetName()}' onto the {PHASE_NAMES[ref_code]} grid"
                + (" (BRAINSResample)" if module is not None else ""))
        if module is not None:
            _resample_with_cli(module, node, ref_node, target)
        else:
            moved = resample_to_reference(volume_from_node(node), ref_geometry)
            node_from_volume(moved, target.GetName(), scene, node=target)
        out[code] = target
    return {p: out[p] for p in phase_nodes if p in out}
