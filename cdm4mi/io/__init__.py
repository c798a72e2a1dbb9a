"""Scan files: reading DICOM series / files and NIfTI into a canonical ``Scan`` (``read``), the checks on pixel data
(``pixel_checks``), writing NIfTI and DERIVED DICOM back in the original geometry (``write``), de-identification
(``deidentify``) and the pseudonyms it uses (``pseudonyms``), and the real scans installed packages ship (``shipped``).
Imports nothing of cdm4mi above it."""

NIFTI_SUFFIXES = (".nii", ".nii.gz")  # an output path ending so is a NIfTI file; any other name, a DICOM series folder
