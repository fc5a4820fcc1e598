"""Logic of the RenalCLIP Slicer module that runs without a GUI (MRML only, no Qt).

Usage: ``from RenalCLIPLib.mrml_volumes import volume_from_node``
"""
