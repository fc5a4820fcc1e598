"""The one place for preprocessing constants, phases and segmentation labels.

These values follow the published RenalCLIP release (see README, "Conventions of the published
weights"); the image encoder only computes what the authors' encoder computes if every input is
made with exactly these numbers.

Usage: ``from renalclip_lib.constants import ROI_SIZE_MM, PHASES``
"""
from __future__ import annotations

# Contrast phases in acquisition order: non-contrast, corticomedullary ("arterial"),
# nephrographic ("venous"), excretory ("delayed").
PHASES = ("N", "A", "V", "D")
PHASE_NAMES = {"N": "non-contrast", "A": "arterial", "V": "venous", "D": "delayed"}
# Reference grid for registration and the phase used for single-phase inference: first present.
REFERENCE_PHASE_ORDER = ("A", "V")

# ROI box around the lesion centre, in millimetres along patient x (L), y (P), z (S), and the grid
# it is resampled to. 140 x 140 x 160 mm at 1 x 1 x 5 mm = 140 x 140 x 32 voxels.
ROI_SIZE_MM = (140.0, 140.0, 160.0)
ROI_SPACING_MM = (1.0, 1.0, 5.0)
ROI_SHAPE_XYZ = (140, 140, 32)
# Network input: a 128 x 128 x 32 crop (centre at inference, random in training).
CROP_SHAPE_XYZ = (128, 128, 32)
# Where training augmentation runs: "auto" (batched on the training device), loader workers, the device.
AUGMENT_ON = ("auto", "cpu", "device")
# Whether a stage copies the whole ROI cache onto the training device: "auto" (on a GPU, when it
# takes at most DEVICE_CACHE_MAX_SHARE of the free GPU memory), "always", "never" (optim.device_cache).
DEVICE_CACHE = ("auto", "always", "never")
DEVICE_CACHE_MAX_SHARE = 0.4
# Axes Table 40's rotation (+-pi/10) turns about: all three as the paper, or the axial plane only.
AUGMENT_ROTATE = ("xyz", "z")

# Intensity window: level 50 HU, width 500 HU, mapped to [0, 1].
WINDOW_LEVEL_HU = 50.0
WINDOW_WIDTH_HU = 500.0
AIR_HU = -1000.0

# Segmentation labels (KiTS convention, as written by our nnU-Net models).
LABEL_BACKGROUND = 0
LABEL_KIDNEY = 1
LABEL_TUMOR = 2
LABEL_CYST = 3
LABEL_NAMES = {LABEL_BACKGROUND: "background", LABEL_KIDNEY: "kidney", LABEL_TUMOR: "tumor", LABEL_CYST: "cyst"}
# The primary lesion is looked for in this order: a tumour before a cyst.
LESION_LABEL_PRIORITY = (LABEL_TUMOR, LABEL_CYST)

SIDES = ("left", "right")
