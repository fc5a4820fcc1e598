"""One synthetic patient: everything drawn (``simulate_case``), then optionally rendered (``generate_patient``).

``simulate_case`` draws anatomy, tissue attenuation, the primary mass and any small cysts,
measures the ground truth on the geometry, draws stage, grade and survival, the phases acquired
and their grids, and writes the report. It touches no voxels, so thousands of cases cost seconds
(label statistics, survival checks). ``generate_patient`` renders every phase of the same case.

Random draws happen in a fixed order whatever the matrix size or phase filter, so a seed gives
the same patient at 128 or 512 pixels and with or without the delayed phase.

Usage::

    case = simulate_case(7, "internal")                 # geometry + labels + report, no voxels
    pc = generate_patient(7, "internal", matrix=128)     # + images and label maps per phase
    pc.images["A"].array.shape, pc.labels["renal_R"], pc.reports["findings_left"]
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..constants import PHASES, REFERENCE_PHASE_ORDER, SIDES
from ..errors import EmptySegmentationError
from ..io import Volume
from ..questionnaire import QUESTIONS
from .anatomy import Anatomy, draw_anatomy
from .cohorts import CohortSpec, get_cohort
from .ground_truth import LesionMeasurement, draw_outcomes, lesion_points, measure_lesion, renal_labels, stage_and_grade
from .lesions import Lesion, choose_histology, draw_lesion, draw_small_cyst
from .reports import lesion_mentions, normal_report, questionnaire_answers, render_kidney_report
from .shapes import Grid, cosine_texture
from .tissues import ORGAN_TEXTURE_HU, draw_tissue_hu

FULL_MATRIX = 512


@dataclass
class SimulatedCase:
    """A patient without voxels: geometry, acquisition, ground truth and report."""

    patient_id: str
    cohort: str
    split: str
    anatomy: Anatomy
    lesion: Lesion
    small_cysts: list
    measurement: LesionMeasurement
    stage_info: dict
    phases: tuple
    reference_phase: str
    grids: dict
    tissue_hu: dict
    hu_offset: float
    noise_sd: dict
    kernel_sigma_px: float
    noise_seed: int
    reports: dict
    labels: dict
    mentions: dict = field(default_factory=dict)

    def layers(self) -> list:
        out = self.anatomy.layers() + list(self.lesion.layers) + list(self.lesion.extra_layers)
        for c in self.small_cysts:
            out += c.layers
        return out

    def kidney_center(self, side: str) -> np.ndarray:
        """Centroid of the kidney with its masses (anatomy frame), like the segmentation's foreground."""
        pts = [lesion_points(self.anatomy.kidneys[side].outer, 2.0)[0]]
        for les in [self.lesion] + list(self.small_cysts):
            if les.side == side:
                pts.append(lesion_points(les.shape, 2.0)[0])
        return np.unique(np.vstack(pts).round(3), axis=0).mean(axis=0)


@dataclass
class PatientCase:
    """A rendered patient: images and label maps per phase (each on its own grid) and the truth."""

    patient_id: str
    cohort: str
    split: str
    images: dict                 # phase -> Volume (int16 HU)
    segmentations: dict          # phase -> Volume (uint8: 1 kidney, 2 tumour, 3 cyst)
    reference_phase: str
    lesion_center: np.ndarray    # LPS mm on the reference phase
    lesion_centers: dict         # phase -> LPS mm (where the mass is in that phase's image)
    kidney_centers: dict         # phase -> {"left": (3,), "right": (3,)}
    reports: dict                # findings_left, impression_left, findings_right, impression_right
    labels: dict                 # histology, renal_*, malignancy, ..., q_<key>_<side>
    case: SimulatedCase


def _rng(seed_or_rng) -> np.random.Generator:
    if isinstance(seed_or_rng, np.random.Generator):
        return seed_or_rng
    if isinstance(seed_or_rng, np.random.SeedSequence):
        return np.random.default_rng(seed_or_rng)
    return np.random.default_rng(int(seed_or_rng))


def _draw_grids(rng, spec: CohortSpec, anatomy: Anatomy, lesion: Lesion, phases, ref: str, matrix: int) -> dict:
    A, B = anatomy.body_axes
    base = max(rng.uniform(*spec.inplane_mm), (2 * A + 40) / FULL_MATRIX, (2 * B + 90) / FULL_MATRIX)
    z_lo, z_hi = anatomy.coverage()
    lo_l, hi_l = lesion.shape.bbox()
    z_lo, z_hi = min(z_lo, lo_l[2]), max(z_hi, hi_l[2])
    if lesion.thrombus:
        for s in lesion.thrombus:
            z_hi = max(z_hi, s.bbox()[1][2])
    scale = FULL_MATRIX / matrix
    grids = {}
    for p in PHASES:
        s = base * rng.uniform(0.985, 1.015) * scale
        thk = float(rng.choice(spec.thickness_mm, p=np.asarray(spec.thickness_p) / np.sum(spec.thickness_p)))
        centre = anatomy.body_center[:2] + rng.uniform(-8, 8, 2) + (0, 15)
        lo, hi = z_lo - rng.uniform(25, 70), z_hi + rng.uniform(25, 60)
        target = rng.uniform(*spec.coverage_mm)
        lo = min(lo, hi - target)
        d = np.array([rng.normal(0, 0.25), rng.normal(0, 0.25), rng.choice([-1.0, 1.0])])
        shift = d / np.linalg.norm(d) * rng.uniform(*spec.misregistration_mm)
        if p not in phases:
            continue
        if p == ref:
            shift = np.zeros(3)
        if matrix < FULL_MATRIX:
            thk = max(thk, 0.6 * s)
        nz = int(round((hi - lo) / thk)) + 1
        origin = np.array([centre[0] - (matrix - 1) / 2 * s, centre[1] - (matrix - 1) / 2 * s, lo + shift[2]])
        grids[p] = Grid(origin, np.array([s, s, thk]), (nz, matrix, matrix), shift)
    return grids


def _choose_phases(rng, spec: CohortSpec, restrict) -> tuple:
    u = rng.random(4)
    avail = [p for p, x in zip(PHASES, u) if x < spec.phase_prob.get(p, 0.0)]
    if "A" not in avail and "V" not in avail:
        avail.append("A" if spec.phase_prob.get("A", 0) >= spec.phase_prob.get("V", 0) else "V")
    if restrict is not None:
        restrict = [p for p in PHASES if p in restrict]
        kept = [p for p in avail if p in restrict]
        if not kept:
            kept = [next((p for p in REFERENCE_PHASE_ORDER if p in restrict), restrict[0])]
        avail = kept
    return tuple(p for p in PHASES if p in avail)


def simulate_case(seed_or_rng, cohort="internal", matrix: int = FULL_MATRIX, phases=None,
                  patient_id: str | None = None, split: str | None = None) -> SimulatedCase:
    """Draw one patient of ``cohort`` (name or ``CohortSpec``): geometry, truth, report; no voxels."""
    spec = get_cohort(cohort)
    rng = _rng(seed_or_rng)
    anatomy = draw_anatomy(rng)
    delay = float(rng.uniform(*spec.arterial_delay))
    tissue_hu = draw_tissue_hu(rng, delay)
    for layer in anatomy.organs:
        if layer.tissue in ORGAN_TEXTURE_HU:
            layer.texture = cosine_texture(rng, 4, (15, 45))
            layer.texture_hu = ORGAN_TEXTURE_HU[layer.tissue]
    hist = choose_histology(rng, spec.group_weight_dict)
    lesion = draw_lesion(rng, anatomy, hist, delay)
    other = "right" if lesion.side == "left" else "left"
    small = []
    primary_cm = lesion.features["diameter_nominal_cm"]
    n_extra = int(rng.random() < spec.extra_cyst_p)
    contra = rng.random() < spec.contralateral_cyst_p
    for side, wanted in ((lesion.side, n_extra), (other, int(contra))):
        for _ in range(wanted):
            for _try in range(10):
                c = draw_small_cyst(rng, anatomy, side, 0.7 * primary_cm)
                gap = np.linalg.norm(c.shape.center - lesion.shape.center) - c.shape.axes.max() * 1.1 - lesion.shape.axes.max() * lesion.shape.max_rho()
                if gap > 5:
                    small.append(c)
                    break
    n_extra = sum(c.side == lesion.side for c in small)
    m = measure_lesion(anatomy.kidneys[lesion.side], lesion)
    renal = renal_labels(m)
    sg = stage_and_grade(rng, lesion, m)
    outcomes = draw_outcomes(rng, lesion, m, sg, spec.endpoints, spec.followup_months)
    avail = _choose_phases(rng, spec, phases)
    ref = next((p for p in REFERENCE_PHASE_ORDER if p in avail), avail[0])
    grids = _draw_grids(rng, spec, anatomy, lesion, avail, ref, matrix)
    sd0 = rng.uniform(*spec.noise_sd)
    noise_sd = {p: float(np.clip(sd0 * (2.5 / max(g.spacing[2], 0.5)) ** 0.15, *spec.noise_sd)) for p, g in grids.items()}
    kernel = float(rng.uniform(*spec.kernel_sigma_px))
    offset = float(rng.uniform(*spec.hu_offset))
    noise_seed = int(rng.integers(0, 2 ** 31 - 1))

    reports = {f"{k}_{s}": "" for s in SIDES for k in ("findings", "impression")}
    mentions = {s: None for s in SIDES}
    if spec.has_reports:
        mentions[lesion.side] = lesion_mentions(rng, lesion, m, sg, avail, offset, spec.mention_rate, extra_cysts=n_extra)
        f, i = render_kidney_report(rng, lesion.side, mentions[lesion.side])
        reports[f"findings_{lesion.side}"], reports[f"impression_{lesion.side}"] = f, i
        contra_cysts = [c for c in small if c.side == other]
        if contra_cysts and rng.random() < 0.85:
            c = contra_cysts[0]
            mc = measure_lesion(anatomy.kidneys[other], c)
            mentions[other] = lesion_mentions(rng, c, mc, {}, avail, offset, spec.mention_rate, small=True)
            f, i = render_kidney_report(rng, other, mentions[other], small=True)
        else:
            f, i = normal_report(rng, other)
        reports[f"findings_{other}"], reports[f"impression_{other}"] = f, i

    labels = {"histology": hist.key, "histology_group": hist.group, "lesion_side": lesion.side,
              "malignancy": int(hist.group != "benign"), "aggressiveness": int(hist.group == "malignant_aggressive"),
              "stage": sg["stage"], "grade": sg["grade"], **renal, **outcomes}
    for s in SIDES:
        answers = questionnaire_answers(mentions[s]) if spec.has_reports else None
        for q in QUESTIONS:
            labels[q.column(s)] = None if answers is None else answers[q.key]
    pid = patient_id or "case"
    return SimulatedCase(pid, spec.name, split or "", anatomy, lesion, small, m, sg, avail, ref, grids, tissue_hu,
                         offset, noise_sd, kernel, noise_seed, reports, labels, mentions)


def _lesion_center_on(seg: Volume, grid: Grid, case: SimulatedCase) -> np.ndarray:
    """The pipeline's rule (largest axial cross-section of the primary mass) on a crop around it."""
    from ..preprocess.center import lesion_center

    win = grid.window(*case.lesion.shape.bbox())
    if win is not None:
        sl, _ = win
        sub = seg.array[sl]
        origin = grid.origin + grid.spacing * np.array([sl[2].start, sl[1].start, sl[0].start])
        try:
            return lesion_center(Volume(sub, grid.spacing, origin))
        except EmptySegmentationError:
            pass
    return case.measurement.centroid + grid.shift


def generate_patient(seed_or_rng, cohort="internal", matrix: int = FULL_MATRIX, phases=None,
                     patient_id: str | None = None, split: str | None = None) -> PatientCase:
    """Simulate and render one patient: int16 HU images and uint8 label maps for each acquired phase."""
    from .render import noise_bank, render_phase

    case = simulate_case(seed_or_rng, cohort, matrix, phases, patient_id, split)
    images, segs, lcent, kcent = {}, {}, {}, {}
    k_anat = {s: case.kidney_center(s) for s in SIDES}
    nrng = np.random.default_rng(case.noise_seed)
    bank = noise_bank(nrng, matrix, matrix, case.kernel_sigma_px)
    for p in case.phases:
        g = case.grids[p]
        hu, lab = render_phase(case, p, bank=bank, rng=np.random.default_rng([case.noise_seed, PHASES.index(p)]))
        images[p] = Volume(hu, g.spacing, g.origin, np.eye(3), f"{case.patient_id}_{p}")
        segs[p] = Volume(lab, g.spacing, g.origin, np.eye(3), f"{case.patient_id}_{p}_label")
        lcent[p] = _lesion_center_on(segs[p], g, case)
        kcent[p] = {s: k_anat[s] + g.shift for s in SIDES}
    return PatientCase(case.patient_id, case.cohort, case.split, images, segs, case.reference_phase,
                       lcent[case.reference_phase], lcent, kcent, dict(case.reports), dict(case.labels), case)
