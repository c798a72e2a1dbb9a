"""The entry point of the MONAI bundles ``cdm4mi export --format monai-bundle`` writes: their
``configs/inference.json`` has MONAI's runner call ``denoise_file`` with the bundle's weights and the paths given
on its command line (``--input_path scan.nii.gz --output_path denoised.nii.gz``).

It runs what ``cdm4mi denoise --checkpoint W --input I --output O --seed S`` runs (``ScanDenoiser.denoise``):
the same seed gives the same output.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cdm4mi.atomic import check_writable, refuse_input_overlap
from cdm4mi.inference.scan_denoiser import load_denoiser, save_scan


def denoise_file(checkpoint: str | Path, input_path: str | Path | None, output_path: str | Path | None,
                 device: str = "auto", precision: str = "fp32", seed: int = 0, steps: int | None = None,
                 batch_size: int = 8, overwrite: bool = False) -> str:
    """Denoise the scan at ``input_path`` (NIfTI, a DICOM file or series folder) with the model ``checkpoint`` and
    write it to ``output_path`` (``.nii``/``.nii.gz``, or a folder for a DERIVED DICOM series). Returns the output."""
    if not input_path:
        raise ValueError("input_path: give the scan to denoise (--input_path scan.nii.gz)")
    if not output_path:
        raise ValueError("output_path: give the file to write (--output_path denoised.nii.gz)")
    for path in (input_path, checkpoint):
        refuse_input_overlap(path, output_path, option="output_path")
    check_writable(output_path, overwrite, option="output_path")
    from cdm4mi.io.read import load_scan

    denoiser = load_denoiser(checkpoint, device=device, precision=precision)
    scan = load_scan(input_path)
    if scan.modality == "OT":  # NIfTI says nothing of modality: it is the model's (needed to write DICOM)
        scan = dataclasses.replace(scan, modality=denoiser.modality)
    denoised = denoiser.denoise(scan, steps=steps, seed=int(seed), batch_size=int(batch_size))
    return str(save_scan(denoised, scan, output_path, overwrite=bool(overwrite)))
