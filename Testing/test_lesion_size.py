"""The mass measured on a label map, against analytic shapes and the synthetic cohort's own
measurement of the shapes it drew (``phantom.ground_truth``: the Feret diameter on a fine grid of
the analytic surface), and the report grounded in that measurement, read back by the extractor."""
import numpy as np
import pytest

from renalclip_lib.errors import EmptySegmentationError
from renalclip_lib.extraction import extract_answers
from renalclip_lib.extraction.grounding import ground_report
from renalclip_lib.io import Volume
from renalclip_lib.phantom.case import generate_patient
from renalclip_lib.preprocess.lesion_size import LesionSize, NoMassAtCentreError, measure_lesion
from renalclip_lib.questionnaire import size_class


def _labels(geo, shape_xyz, spacing, direction, masses, kidneys):
    """Label map: ``kidneys`` as (centre, radii) ellipsoids (label 1) with ``masses`` as
    (centre, radii, rotation) ellipsoids (label 2) drawn on top, in LPS mm."""
    def fn(p):
        out = np.zeros(p.shape[:-1], np.int16)
        for c, r in kidneys:
            out[(((p - np.asarray(c, float)) / np.asarray(r, float)) ** 2).sum(-1) <= 1] = 1
        for c, r, rot in masses:
            q = (p - np.asarray(c, float)) @ np.asarray(rot, float)
            out[((q / np.asarray(r, float)) ** 2).sum(-1) <= 1] = 2
        return out
    origin = -np.asarray(direction, float) @ (np.asarray(shape_xyz, float) * np.asarray(spacing, float) / 2.0)
    return geo.volume(shape_xyz, spacing, origin=origin, direction=direction, fn=fn, dtype=np.int16)


KIDNEYS = (((55.0, 0.0, 0.0), (28, 30, 50)), ((-55.0, 0.0, 0.0), (28, 30, 50)))


@pytest.mark.parametrize("spacing,direction", [((0.8, 0.8, 2.5), "eye"), ((1.5, 1.5, 5.0), "rotated")])
def test_diameters_and_volume_of_a_rotated_ellipsoid(geo, spacing, direction):
    d = np.eye(3) if direction == "eye" else geo.rot("z", 25) @ geo.rot("x", 10)
    radii = np.array([26.0, 19.0, 14.0])
    rot = geo.rot("y", 30) @ geo.rot("z", 40)
    labels = _labels(geo, (140, 90, 40) if spacing[0] > 1 else (260, 160, 60), spacing, d,
                     [((60.0, 5.0, 10.0), radii, rot)], KIDNEYS)
    m = measure_lesion(labels)
    tol = max(spacing)
    np.testing.assert_allclose(m.diameters_mm, 2 * radii, atol=tol)
    assert m.volume_ml == pytest.approx(4 / 3 * np.pi * radii.prod() / 1000.0, rel=0.05)
    assert m.side == "left" and m.label == 2                    # +x in LPS is the patient's left
    assert m.size_class == size_class(m.diameters_cm[0]) == 2   # 5.2 cm


def test_side_follows_physical_space_not_the_index_order(geo):
    flip = np.diag([-1.0, 1.0, 1.0])              # index i runs towards the patient's right
    mass = [((-60.0, 0.0, 5.0), (12.0, 12.0, 12.0), np.eye(3))]
    labels = _labels(geo, (130, 80, 30), (1.6, 1.6, 5.0), flip, mass, KIDNEYS)
    assert measure_lesion(labels).side == "right"
    assert labels.index_to_physical(np.array([0.0, 0, 0]))[0] == pytest.approx(104.0)


def test_the_mass_at_the_centre_is_measured_not_the_largest(geo):
    masses = [((60.0, 0.0, 0.0), (20.0, 20.0, 20.0), np.eye(3)), ((-55.0, 0.0, 20.0), (8.0, 8.0, 8.0), np.eye(3))]
    labels = _labels(geo, (130, 80, 30), (1.6, 1.6, 5.0), np.eye(3), masses, KIDNEYS)
    big, small = measure_lesion(labels), measure_lesion(labels, center_lps=(-55.0, 0.0, 20.0))
    assert big.side == "left" and big.diameters_mm[0] == pytest.approx(40.0, abs=5.0)
    assert small.side == "right" and small.diameters_mm[0] == pytest.approx(16.0, abs=5.0)
    near = measure_lesion(labels, center_lps=(-40.0, 0.0, 20.0))     # outside both: the nearest one
    assert near.diameters_mm == small.diameters_mm
    # 15 mm from the small mass's centre, 7 mm from its surface: within a 10 mm tolerance
    assert measure_lesion(labels, (-40.0, 0.0, 20.0), max_distance_mm=10.0).diameters_mm == small.diameters_mm
    with pytest.raises(NoMassAtCentreError, match="tumor lies (3[5-9]|4[0-2]) mm from the centre"):
        measure_lesion(labels, center_lps=(-55.0, 0.0, -25.0), max_distance_mm=15.0)   # 37 mm below it (40 on 5 mm slices)
    with pytest.raises(EmptySegmentationError):
        measure_lesion(labels.with_array(np.minimum(labels.array, 1)))
    # The clicked mass is a cyst (label 3) and the only tumour lies far away: the cyst is measured.
    arr = labels.array.copy()
    small_mask = np.zeros_like(arr, bool)
    zyx = np.argwhere(arr == 2)
    pts = labels.index_to_physical(zyx[:, ::-1].astype(float))
    near_small = np.linalg.norm(pts - np.array([-55.0, 0.0, 20.0]), axis=1) < 12.0
    small_mask[tuple(zyx[near_small].T)] = True
    arr[small_mask] = 3
    with_cyst = labels.with_array(arr)
    m = measure_lesion(with_cyst, center_lps=(-55.0, 0.0, 20.0), max_distance_mm=15.0)
    assert m.label == 3 and m.side == "right" and m.diameters_mm == small.diameters_mm
    with pytest.raises(NoMassAtCentreError, match="tumor lies"):
        measure_lesion(with_cyst, center_lps=(-55.0, 0.0, -25.0), max_distance_mm=15.0)


def test_the_phantoms_masses_measure_as_the_cohort_drew_them():
    for seed in range(6):
        p = generate_patient(seed, matrix=128)
        seg = p.segmentations[p.reference_phase]
        m = measure_lesion(seg, p.lesion_center)
        truth = p.case.measurement
        assert m.side == p.case.lesion.side
        np.testing.assert_allclose(m.diameters_mm, truth.dims_mm, atol=float(seg.spacing.max()))


MEASURED = LesionSize(side="left", diameters_mm=(52.4, 41.2, 38.0), volume_ml=40.0, label=2)


def test_a_report_with_the_wrong_side_and_size_is_grounded():
    text = ("Findings: A 2.6 x 2.0 cm solid mass is seen in the upper pole of the right kidney. "
            "The left kidney is unremarkable.\n"
            "Impression: Right upper pole renal mass (2.6 cm), highly suspicious for renal cell carcinoma.")
    before = extract_answers(text)
    assert before["side"] == "right" and before["q_size_right"] == 1
    grounded, changes = ground_report(text, MEASURED)
    after = extract_answers(grounded)
    assert after["side"] == "left" and after["q_size_left"] == 2
    assert "5.2 x 4.1 cm solid mass" in grounded and "(5.2 cm)" in grounded
    assert "The right kidney is unremarkable." in grounded and "Left upper pole renal mass" in grounded
    assert changes == ["side: right -> left", "findings size: 2.6 x 2.0 cm -> 5.2 x 4.1 cm",
                       "impression size: 2.6 cm -> 5.2 cm"]
    for key in ("density", "nature", "benign_malignant", "location"):    # only side and size change
        assert after[f"q_{key}_left"] == before[f"q_{key}_right"]


def test_grounding_keeps_units_and_dimension_count_and_leaves_a_right_report_alone():
    text = "Findings: A 30 x 22 x 20 mm cyst in the left kidney.\nImpression: Left renal cyst (3.0 cm)."
    grounded, changes = ground_report(text, MEASURED)
    assert "52 x 41 x 38 mm cyst" in grounded and "(5.2 cm)" in grounded and len(changes) == 2
    right = "Findings: A 5.2 x 4.1 cm mass in the left kidney.\nImpression: Left renal mass (5.2 cm)."
    assert ground_report(right, MEASURED) == (right, [])


def test_a_report_without_a_size_gets_the_measurement_and_a_bilateral_one_keeps_its_sides():
    text = "Findings: A solid mass in the left kidney.\nImpression: Left renal mass, likely malignant."
    grounded, changes = ground_report(text, MEASURED)
    assert extract_answers(grounded)["q_size_left"] == 2 and len(changes) == 1
    both = "Findings: Masses in both kidneys, 2.0 cm on the right.\nImpression: Bilateral renal masses."
    grounded, changes = ground_report(both, MEASURED)
    assert not any(c.startswith("side") for c in changes) and "right" in grounded


def test_findings_and_impression_in_different_kidneys_take_the_measured_side():
    text = ("Findings: In the upper pole of the right kidney, a solid mass measuring 2.0 x 2.1 cm is noted. "
            "The remaining renal parenchyma enhances normally.\n"
            "Impression: Left upper pole renal mass (2.4 cm), highly suspicious for renal cell carcinoma.")
    assert extract_answers(text)["side"] == "bilateral"
    grounded, changes = ground_report(text, MEASURED)
    assert extract_answers(grounded)["side"] == "left"
    assert "upper pole of the left kidney" in grounded and "Left upper pole renal mass (5.2 cm)" in grounded
    assert changes[0] == "findings side: right -> left"
    impression_wrong = text.replace("right kidney", "left kidney").replace("Left upper", "Right upper")
    grounded, changes = ground_report(impression_wrong, MEASURED)
    assert extract_answers(grounded)["side"] == "left" and changes[0] == "impression side: right -> left"


def test_analysis_does_not_measure_a_mass_far_from_the_centre(geo):
    from renalclip_lib.inference.analyze import _measure

    masses = [((-55.0, 0.0, 20.0), (8.0, 8.0, 8.0), np.eye(3))]
    labels = _labels(geo, (130, 80, 30), (1.6, 1.6, 5.0), np.eye(3), masses, KIDNEYS)
    warnings = []
    assert _measure(labels, np.array([55.0, 0.0, 0.0]), warnings) is None     # clicked in the other kidney
    assert len(warnings) == 1 and "no segmented mass at the centre" in warnings[0]
    assert _measure(labels, np.array([-55.0, 0.0, 20.0]), warnings).side == "right"
