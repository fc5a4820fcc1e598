"""Logic of the RenalCLIP Slicer module that runs without a GUI (MRML only, no Qt).

- ``logic``: ``CaseLogic``, the workflow of one case (and batch runs) over a MRML scene
- ``mrml_volumes``: volume nodes (RAS) <-> renalclip_lib ``Volume`` (LPS)
- ``phase_inputs``: phase guessed from a volume name; ``registration``: phases onto the reference grid
- ``segmentation_nodes``: label maps <-> named, coloured kidney / tumor / cyst segments
- ``lesion_point``: the "Lesion centre" point and the ROI box that follows it; ``roi_logic``: the ROI volume
- ``commands``, ``child_process``: child-process command lines and the JSON-lines protocol reader
- ``results``: assessment.json -> table rows, summary line, saved report
- ``parameters``, ``dependencies``, ``sample_data``: parameter node, Python packages, the sample case

Usage: ``from RenalCLIPLib.logic import CaseLogic``
"""
