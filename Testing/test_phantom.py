"""The synthetic cohort against independent expectations: the CT appearance reference's HU ranges,
nephrometry measured on the written masks, misregistration measured from kidney centroids,
report text against the geometry, survival behaviour over many ground-truth draws, determinism.

Masks of kidney sub-structures (cortex, medulla, collecting system) come from the case's analytic
shapes evaluated at the image's voxel centres (index -> LPS by the documented convention, minus
the phase's misregistration shift); intensities come from the rendered image.
"""
from __future__ import annotations

import collections
import re
import time

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import pdist

from renalclip_lib.constants import LABEL_CYST, LABEL_KIDNEY, LABEL_TUMOR, PHASES
from renalclip_lib.phantom import generate_patient, simulate_case, write_cohort
from renalclip_lib.phantom.writer import patient_seed
from renalclip_lib.preprocess import lesion_center
from renalclip_lib.questionnaire import QUESTIONS
from renalclip_lib.tasks import renal_radius_class

# ct-appearance.md, renal rows: (low, high) HU per phase.
CORTEX = {"N": (30, 40), "A": (150, 220), "V": (140, 190), "D": (100, 130)}
MEDULLA = {"N": (30, 40), "A": (60, 100), "V": (140, 190), "D": (110, 140)}
TOL = 8.0  # calibration offset (+-3 HU) and contrast-timing jitter of the internal cohort


def find_seed(histology: str, cohort: str = "pretrain", start: int = 0) -> int:
    for s in range(start, start + 400):
        if simulate_case(s, cohort).labels["histology"] == histology:
            return s
    raise AssertionError(f"no {histology} among 400 seeds")


def voxel_points(vol, shift, lo, hi):
    """(slices, x, y, z) anatomy coordinates of the voxel centres of ``vol`` inside the box [lo, hi]."""
    i0 = np.clip(np.floor(vol.physical_to_index(np.asarray(lo) + shift)).astype(int), 0, None)
    i1 = np.minimum(np.ceil(vol.physical_to_index(np.asarray(hi) + shift)).astype(int) + 1, vol.size_xyz)
    k, j, i = np.meshgrid(*(np.arange(i0[a], i1[a]) for a in (2, 1, 0)), indexing="ij")
    p = vol.index_to_physical(np.stack([i, j, k], -1).reshape(-1, 3).astype(float)) - shift
    sl = (slice(i0[2], i1[2]), slice(i0[1], i1[1]), slice(i0[0], i1[0]))
    shape = k.shape
    return sl, p[:, 0].reshape(shape), p[:, 1].reshape(shape), p[:, 2].reshape(shape)


def deep_inside(shape, x, y, z, spacing, voxels=1.0):
    return shape.distance(x, y, z, spacing) < -voxels


def outside(shape, x, y, z, spacing, voxels=1.0):
    return shape.distance(x, y, z, spacing) > voxels


@pytest.fixture(scope="module")
def four_phase():
    for s in range(100):
        c = simulate_case(s, "internal")
        if c.phases == PHASES and c.labels["histology"] not in ("angiomyolipoma",):
            return generate_patient(s, "internal", matrix=192)
    raise AssertionError("no four-phase case")


def kidney_region_hu(pc, phase, side):
    """Median HU of cortex and medulla, and the median and 90th percentile in the collecting system."""
    case = pc.case
    k = case.anatomy.kidneys[side]
    vol = pc.images[phase]
    sp = vol.spacing
    sl, x, y, z = voxel_points(vol, case.grids[phase].shift, *k.outer.bbox())
    img = vol.array[sl].astype(float)
    in_k = deep_inside(k.outer, x, y, z, sp)
    masses = [case.lesion] + list(case.small_cysts)
    clear = np.ones_like(in_k)
    for les in masses:
        clear &= outside(les.shape, x, y, z, sp, 2.0)
    cs = np.zeros_like(in_k)
    for t in list(k.infundibula) + [k.pelvis]:
        cs |= t.distance(x, y, z, sp) < 0
    not_medulla = np.ones_like(in_k)
    medulla = np.zeros_like(in_k)
    for pyr in k.pyramids:
        not_medulla &= outside(pyr, x, y, z, sp)
        medulla |= deep_inside(pyr, x, y, z, sp, 0.7)
    cortex = in_k & clear & not_medulla & outside(k.sinus, x, y, z, sp) & ~cs
    medulla &= in_k & clear & outside(k.sinus, x, y, z, sp) & ~cs
    return (np.median(img[cortex]), np.median(img[medulla]) if medulla.sum() > 5 else None,
            np.percentile(img[cs & clear], [50, 90]) if (cs & clear).any() else None, int(cortex.sum()), int(medulla.sum()))


def test_kidney_enhancement_per_phase(four_phase):
    pc = four_phase
    side = "right" if pc.labels["lesion_side"] == "left" else "left"
    res = {p: kidney_region_hu(pc, p, side) for p in PHASES}
    for p in PHASES:
        cortex, medulla, cs, n_c, n_m = res[p]
        assert n_c > 50 and n_m > 5, (p, n_c, n_m)
        assert CORTEX[p][0] - TOL <= cortex <= CORTEX[p][1] + TOL, (p, cortex)
        assert MEDULLA[p][0] - TOL - 10 <= medulla <= MEDULLA[p][1] + TOL + 10, (p, medulla)
    assert res["A"][0] - res["A"][1] > 30, "corticomedullary difference in the arterial phase"
    assert abs(res["V"][0] - res["V"][1]) < 15, "nephrographic phase is homogeneous"
    assert abs(res["N"][0] - res["N"][1]) < 12
    assert res["D"][2][1] > 250, "excreted contrast in the collecting system"
    assert res["D"][2][0] > max(res["N"][2][0], res["A"][2][0]) + 100


def test_background_tissues(four_phase):
    pc = four_phase
    case = pc.case
    aorta = next(l for l in case.anatomy.retro if l.name == "aorta").shape
    for p in ("N", "A", "V"):
        vol = pc.images[p]
        c = np.array([aorta.center0[0], aorta.center0[1], case.anatomy.kidneys["left"].center[2]]) + case.grids[p].shift
        ijk = np.round(vol.physical_to_index(c)).astype(int)
        v = np.median(vol.array[ijk[2], ijk[1] - 1:ijk[1] + 2, ijk[0] - 1:ijk[0] + 2])
        lo, hi = {"N": (35, 50), "A": (250, 400), "V": (150, 200)}[p]
        assert lo - 20 <= v <= hi + 20, (p, v)
    air = pc.images["A"].array[:, :3, :3]
    assert np.median(air) < -950
    lab = pc.segmentations["A"].array
    assert set(np.unique(lab)) <= {0, LABEL_KIDNEY, LABEL_TUMOR, LABEL_CYST}
    assert (lab == LABEL_KIDNEY).sum() > 1000


def eroded_lesion_hu(pc, phase, label):
    lab = pc.segmentations[phase].array == label
    comp, n = ndimage.label(lab)
    if n > 1:
        comp = comp == np.argmax(np.bincount(comp.ravel())[1:]) + 1
    else:
        comp = lab
    inner = ndimage.binary_erosion(comp, iterations=1)
    return pc.images[phase].array[inner if inner.sum() > 10 else comp].astype(float)


def test_angiomyolipoma_has_macroscopic_fat_and_ccrcc_does_not():
    aml = generate_patient(find_seed("angiomyolipoma"), "pretrain", matrix=192)
    ph = aml.reference_phase
    hu = eroded_lesion_hu(aml, ph, LABEL_TUMOR)
    # A classic AML is fat-rich: the mass's own fat, not a few specks (0.04 before the fat blobs grew).
    assert np.mean(hu < -20) > 0.12, "macroscopic fat inside the angiomyolipoma"
    cc = generate_patient(find_seed("clear_cell_rcc_indolent"), "pretrain", matrix=192)
    hu_cc = eroded_lesion_hu(cc, cc.reference_phase, LABEL_TUMOR)
    assert np.mean(hu_cc < -20) < 0.01
    if "A" in cc.images and "V" in cc.images:
        assert np.median(eroded_lesion_hu(cc, "A", LABEL_TUMOR)) - np.median(eroded_lesion_hu(cc, "V", LABEL_TUMOR)) > 10, "washout"


def test_simple_cyst_does_not_enhance():
    s = find_seed("simple_cyst")
    pc = generate_patient(s, "pretrain", matrix=192)
    means = {p: np.mean(eroded_lesion_hu(pc, p, LABEL_CYST)) for p in pc.images}
    assert max(means.values()) - min(means.values()) < 10, means
    assert all(-10 < m < 30 for m in means.values()), means


@pytest.fixture(scope="module")
def small_cases():
    return [generate_patient(s, "pretrain", matrix=160) for s in range(6)]


def test_phase_grids_differ_and_misregistration_is_1_to_5_mm(small_cases):
    checked = 0
    for pc in small_cases:
        grids = {(v.array.shape, tuple(v.spacing.round(4)), tuple(v.origin.round(3))) for v in pc.images.values()}
        assert len(grids) == len(pc.images)
        ref = lesion_center(pc.segmentations[pc.reference_phase], mode="kidney")
        for p, seg in pc.segmentations.items():
            if p == pc.reference_phase:
                continue
            cen = lesion_center(seg, mode="kidney")
            for side in ("left", "right"):
                d = np.linalg.norm(cen[side] - ref[side])
                assert 0.5 <= d <= 5.8, (pc.patient_id, p, side, d)
                checked += 1
    assert checked >= 4


def test_renal_R_and_E_agree_with_written_masks():
    for s in range(8):
        pc = generate_patient(s, "pretrain", matrix=256, phases=("A", "V"))
        case = pc.case
        p = min(pc.images, key=lambda q: pc.images[q].spacing[2])
        vol, seg = pc.images[p], pc.segmentations[p]
        lab = seg.array == case.lesion.label
        comp, n = ndimage.label(lab)
        centre_idx = np.round(vol.physical_to_index(pc.lesion_centers[p])).astype(int)
        keep = comp == comp[tuple(centre_idx[::-1])] if comp[tuple(centre_idx[::-1])] else comp == np.argmax(np.bincount(comp.ravel())[1:]) + 1
        pts = vol.index_to_physical(np.argwhere(keep)[:, ::-1].astype(float))
        edge = pts if len(pts) < 4000 else pts[np.unique(np.r_[np.argmin(pts, 0), np.argmax(pts, 0)])]
        if len(pts) >= 4000:
            from scipy.spatial import ConvexHull
            edge = pts[ConvexHull(pts).vertices]
        feret = pdist(edge).max() + np.mean(vol.spacing)
        gt = case.measurement.max_diameter_mm
        tol = 1.2 * vol.spacing.max() + 1.0
        if not case.lesion.thrombus:
            assert abs(feret - gt) <= tol, (s, feret, gt, tol)
            if abs(gt - 40) > tol and abs(gt - 70) > tol:
                assert renal_radius_class(feret / 10) == pc.labels["renal_R"]
        k = case.anatomy.kidneys[case.lesion.side]
        x, y, z = (pts - case.grids[p].shift).T
        exo_mask = np.mean(~k.outer.inside(x, y, z))
        assert abs(exo_mask - case.measurement.exophytic_fraction) < 0.12, (s, exo_mask, case.measurement.exophytic_fraction)


def test_determinism_and_patient_independent_of_n(tmp_path):
    a = generate_patient(11, "internal", matrix=64)
    b = generate_patient(11, "internal", matrix=64)
    assert a.images.keys() == b.images.keys()
    for p in a.images:
        assert np.array_equal(a.images[p].array, b.images[p].array)
        assert np.array_equal(a.segmentations[p].array, b.segmentations[p].array)
    assert a.labels == b.labels and a.reports == b.reports
    m2 = write_cohort(tmp_path / "two", 2, seed=3, matrix=64, phases=("A", "V"))
    m3 = write_cohort(tmp_path / "three", 3, seed=3, matrix=64, phases=("A", "V"))
    rows2 = m2.read_text(encoding="utf-8").splitlines()
    rows3 = m3.read_text(encoding="utf-8").splitlines()
    assert rows3[: len(rows2)] == rows2
    import SimpleITK as sitk
    for f in (tmp_path / "two" / "images").iterdir():
        x = sitk.GetArrayFromImage(sitk.ReadImage(str(f)))
        y = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "three" / "images" / f.name)))
        assert np.array_equal(x, y)
    # Same geometry and labels whatever the matrix size.
    c = generate_patient(11, "internal", matrix=96)
    assert c.labels == a.labels and c.reports == a.reports


def test_held_out_pool_continues_the_cohort_with_its_external_patients_only(tmp_path):
    """``renalclip phantom --first K --test-only``: patients K.. of the same seed, the test-split
    ones only, each identical to that patient in one cohort generated in full."""
    from renalclip_lib.cli import main
    from renalclip_lib.errors import RenalCLIPError
    from renalclip_lib.phantom.cohorts import cohort_index, resolve_cohorts, split_for_patient

    mix = {"internal": 0.5, "external_thick": 0.5}
    whole = write_cohort(tmp_path / "whole", 6, seed=3, cohorts=mix, matrix=64, phases=("A",))
    pool = write_cohort(tmp_path / "pool", 4, seed=3, cohorts=mix, matrix=64, phases=("A",), first=2, splits=("test",))
    specs, shares = resolve_cohorts(mix)
    expected = [f"case_{i:05d}" for i in range(2, 6)
                if split_for_patient(specs[cohort_index(i, 3, shares)], i, 3) == "test"]
    assert expected and len(expected) < 4
    rows = {r.split(",")[0]: r for r in whole.read_text(encoding="utf-8").splitlines()[1:]}
    got = pool.read_text(encoding="utf-8").splitlines()[1:]
    assert [r.split(",")[0] for r in got] == expected
    assert all(r == rows[r.split(",")[0]] for r in got)
    with pytest.raises(RenalCLIPError, match="none of patients 0..0"):
        write_cohort(tmp_path / "none", 1, seed=3, cohorts="internal", matrix=64, splits=("test",))
    assert main(["phantom", "--out", str(tmp_path / "cli"), "--patients", "4", "--seed", "3", "--matrix", "64",
                 "--first", "2", "--test-only", "--quiet"]) == 0
    assert {r.split(",")[0] for r in (tmp_path / "cli" / "manifest.csv").read_text(encoding="utf-8").splitlines()[1:]} \
        <= {f"case_{i:05d}" for i in range(2, 6)}


def test_pretraining_pool_writes_only_the_pretraining_patients_of_the_seed(tmp_path):
    """``renalclip phantom --pretrain-only``: only the pre-training patients of those indices, and
    --test-only with it is one clear error."""
    from renalclip_lib.cli import main
    from renalclip_lib.phantom.cohorts import DEFAULT_MIX, cohort_index, resolve_cohorts, split_for_patient

    specs, shares = resolve_cohorts(None)
    expected = [f"case_{i:05d}" for i in range(0, 8)
                if split_for_patient(specs[cohort_index(i, 5, shares)], i, 5) == "pretrain"]
    assert expected and len(expected) < 8 and DEFAULT_MIX["pretrain"] < 1
    out = tmp_path / "pre"
    assert main(["phantom", "--out", str(out), "--patients", "8", "--seed", "5", "--matrix", "48",
                 "--pretrain-only", "--quiet"]) == 0
    rows = (out / "manifest.csv").read_text(encoding="utf-8").splitlines()[1:]
    assert sorted({r.split(",")[0] for r in rows}) == expected
    assert main(["phantom", "--out", str(tmp_path / "both"), "--patients", "2", "--matrix", "48",
                 "--pretrain-only", "--test-only", "--quiet"]) == 2
    assert not (tmp_path / "both").exists()


@pytest.fixture(scope="module")
def many():
    return [simulate_case(patient_seed(1, i), "pretrain") for i in range(150)]


def test_class_balance_over_simulated_cases(many):
    for key in ("renal_R", "renal_E", "renal_N", "renal_A", "renal_L", "malignancy", "aggressiveness"):
        counts = collections.Counter(c.labels[key] for c in many)
        n_classes = 2 if key in ("malignancy", "aggressiveness") else 3
        for cls in range(n_classes):
            assert counts[cls] >= 0.04 * len(many), (key, counts)
    groups = collections.Counter(c.labels["histology"] for c in many)
    assert len(groups) >= 7
    d = np.array([c.measurement.max_diameter_mm for c in many]) / 10
    assert d.min() >= 1.3 and d.max() <= 14 and 2.8 < np.median(d) < 5.5


SIZE_RE = re.compile(r"(\d+(?:\.\d)?) x (\d+(?:\.\d)?)(?: x \d+(?:\.\d)?)? (cm|mm)")


def test_reports_match_geometry_and_answers_match_reports(many):
    sizes = 0
    for c in many:
        side = c.labels["lesion_side"]
        other = "right" if side == "left" else "left"
        text = c.reports[f"findings_{side}"]
        assert side in text
        m = SIZE_RE.search(text)
        if c.labels[f"q_size_{side}"]:
            assert m, text
            first = float(m.group(1)) / (10 if m.group(3) == "mm" else 1)
            assert abs(first - c.measurement.max_diameter_mm / 10) <= 0.051 + (0.05 if m.group(3) == "mm" else 0), (first, c.measurement.max_diameter_mm)
            sizes += 1
        else:
            assert m is None
        assert ("necro" in text.lower()) == (c.labels[f"q_necrosis_{side}"] != 0)
        if c.labels[f"q_necrosis_{side}"] == 2:
            assert "no necrosis" in text.lower()
        assert ("exophytic" in text or "protrudes" in text) == (c.labels[f"q_exophytic_{side}"] == 1)
        for s in ("left", "right"):
            for q in QUESTIONS:
                v = c.labels[q.column(s)]
                assert 0 <= v < q.n_classes
        if not c.small_cysts or all(sc.side == side for sc in c.small_cysts):
            assert all(c.labels[q.column(other)] == 0 for q in QUESTIONS)
            assert "normal" in c.reports[f"findings_{other}"].lower() or "no focal" in c.reports[f"findings_{other}"].lower() \
                or "unremarkable" in c.reports[f"findings_{other}"].lower()
    assert sizes > 100


def test_impressions_never_contradict_themselves(many):
    """The favoured diagnosis agrees with the benign/malignant call ("probably benign, favour renal
    cell carcinoma" is not a radiologist's sentence); cysts fit either call."""
    bm_q, nature_q = (next(q for q in QUESTIONS if q.key == k) for k in ("benign_malignant", "nature"))
    pairs = collections.Counter()
    for c in many:
        side = c.labels["lesion_side"]
        call = bm_q.options[c.labels[bm_q.column(side)]]
        nature = nature_q.options[c.labels[nature_q.column(side)]]
        pairs[(call, nature)] += 1
        if "benign" in call:
            assert nature != "malignant tumor", c.reports[f"impression_{side}"]
            assert not re.search(r"benign, favour (renal cell|a malignant)", c.reports[f"impression_{side}"])
        if "malignant" in call:
            assert nature not in ("angiomyolipoma", "other benign lesion"), c.reports[f"impression_{side}"]
    assert pairs[("highly likely malignant", "malignant tumor")] > 20 and pairs[("highly likely benign", "angiomyolipoma")] > 0


def test_angiomyolipoma_reports_quote_the_fat_attenuation():
    """A fat-containing mass is reported with the attenuation of its fat (ct-appearance: -100 to
    -20 HU), not that of its soft tissue."""
    quotes = []
    for i in range(400):
        c = simulate_case(patient_seed(2, i), "pretrain")
        side = c.labels["lesion_side"]
        m = re.search(r"fat-containing \((?:areas of )?about (-?\d+) HU\)", c.reports[f"findings_{side}"])
        if m:
            quotes.append(int(m.group(1)))
        if len(quotes) >= 4:
            break
    assert len(quotes) >= 4 and all(-125 <= q <= -20 for q in quotes), quotes


def test_no_report_cohort_has_blank_answers():
    c = simulate_case(2, "tcia_like")
    assert all(v == "" for v in c.reports.values())
    assert all(c.labels[q.column(s)] is None for s in ("left", "right") for q in QUESTIONS)


def test_survival_only_for_malignant_and_aggressive_do_worse():
    cases = [simulate_case(patient_seed(2, i), "tcia_like") for i in range(200)]
    rates = {0: [0, 0.0], 1: [0, 0.0]}
    for c in cases:
        lab = c.labels
        if lab["malignancy"] == 0:
            assert all(lab[f"{e}_{k}"] is None for e in ("rfs", "dss", "os") for k in ("time", "event"))
            continue
        assert lab["rfs_time"] <= lab["os_time"] + 1e-9 and lab["dss_time"] == lab["os_time"]
        assert lab["dss_event"] <= lab["os_event"]
        assert lab["rfs_time"] > 0
        rates[lab["aggressiveness"]][0] += lab["rfs_event"]
        rates[lab["aggressiveness"]][1] += lab["rfs_time"]
    hazard = {g: e / t for g, (e, t) in rates.items()}
    assert hazard[1] > 2.0 * hazard[0], hazard
    assert simulate_case(2, "pretrain").labels["rfs_time"] is None


def test_small_cohort_is_fast(tmp_path):
    t = time.perf_counter()
    for s in range(6):
        generate_patient(s, "internal", matrix=128)
    assert time.perf_counter() - t < 15.0
