"""Cohort data: the manifest (one CSV row per image), datasets, augmentations, feature caches.

Usage: ``from renalclip_lib.data.manifest import read_manifest``
"""
