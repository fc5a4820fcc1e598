"""Kidney / tumour / cyst segmentation with nnU-Net v2, and a tiny model trained on the phantom.

- ``SegmentationModel(model_dir, device, folds)`` / ``segment(volume, model_dir)``: label maps
  (1 kidney, 2 tumour, 3 cyst) on the input grid with nnU-Net's ``nnUNetPredictor`` (``model``);
- ``train_synthetic(out, n_patients, epochs)``: nnU-Net's own planning, preprocessing and training
  on synthetic patients, in a child process (``train``);
- ``add_segmentation_parser(sub)``: ``renalclip segmentation predict|train-synthetic`` (``cli``).
"""
from .cli import add_segmentation_parser
from .model import (CHECKPOINT_NAME, InvalidModelError, SegmentationModel, check_model_folder, dice,
                    output_label_map, segment, to_model_layout)
from .train import TrainingFailedError, train_synthetic

__all__ = ["CHECKPOINT_NAME", "InvalidModelError", "SegmentationModel", "TrainingFailedError",
           "add_segmentation_parser", "check_model_folder", "dice", "output_label_map", "segment",
           "to_model_layout", "train_synthetic"]
