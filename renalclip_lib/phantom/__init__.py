"""Synthetic multi-phase renal CT cohort with ground truth, for tests, benchmarks and the demo.

No real kidney CT ships with the project, so every test and demo runs on these patients. They are
built to make a model learn what a radiologist sees: anatomy in physical space (``anatomy``),
masses whose appearance follows their histology (``lesions``), phase-dependent enhancement
(``tissues``), labels measured on the geometry (``ground_truth``), report text (``reports``),
per-site acquisition differences (``cohorts``), rendering (``render``) and files (``writer``).

Usage::

    from renalclip_lib.phantom import generate_patient, simulate_case, write_cohort
    pc = generate_patient(3, "internal", matrix=128)
    manifest = write_cohort("cohort", n_patients=12, seed=0, matrix=128)
"""
from .case import PatientCase, SimulatedCase, generate_patient, simulate_case
from .cohorts import COHORTS, DEFAULT_MIX, CohortSpec
from .lesions import HISTOLOGIES, HISTOLOGY_BY_KEY
from .writer import patient_seed, write_cohort

__all__ = ["COHORTS", "DEFAULT_MIX", "CohortSpec", "HISTOLOGIES", "HISTOLOGY_BY_KEY", "PatientCase", "SimulatedCase",
           "generate_patient", "patient_seed", "simulate_case", "write_cohort"]
