"""Cohorts of patients: finding low-/full-dose pairs in a folder (``discover``), the manifest of pseudonymous
patients (``manifest``), and splits and folds by patient (``splits``). Builds on ``cdm4mi.io``."""
