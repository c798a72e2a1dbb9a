"""Checks that a checkpoint fits what it is asked to denoise, shared by ``cdm4mi denoise`` and ``cdm4mi evaluate``:
a denoiser (not a generative model) of the data's modality, 3D only for volumes, metadata it was trained with."""

from __future__ import annotations

from cdm4mi.inference.denoise import (
    model_metadata_fields,
    model_normalization,
)
from cdm4mi.io.read import Scan


def check_metadata(given: dict[str, float | str], module, checkpoint: str) -> None:
    """Every ``--metadata`` key is one the model was trained with."""
    fields = model_metadata_fields(module)
    unused = [key for key in given if key not in fields]
    if unused:
        trained = f"data.metadata {list(fields)}" if fields else "no metadata (data.metadata is not set)"
        raise ValueError(f"--metadata: {checkpoint} was trained with {trained}, so {unused[0]} cannot be used")


def check_compatible(scan: Scan, module, checkpoint: str) -> None:
    """The checkpoint is a denoiser for this kind of scan: trained on paired scans, of the input's modality
    (NIfTI carries none: the model's is used), and 2D or the input has the depth a 3D model needs."""
    check_denoiser(module, checkpoint, scan.modality, "the input")
    if module.card["data_mode"] == "3d" and scan.array.shape[0] < 2:
        raise ValueError(f"--input: {scan.array.shape[0]} slice, but {checkpoint} is a 3D model that needs a volume; "
                         "use a 2D model for single slices")


def check_denoiser(module, checkpoint: str, modality: str, what: str) -> None:
    """The checkpoint was trained to denoise scans of ``modality`` ('OT': unknown, accepted); ``what`` names
    the data in the message ("the input", "the manifest ...")."""
    card = module.card
    if card["task"] != "denoise":
        raise ValueError(f"--checkpoint: {checkpoint} was trained to generate samples of data '{card['data']}', "
                         "not to denoise scans (train on paired_scans data)")
    trained_on = card["modality"] or ("CT" if model_normalization(module).name == "hu_window" else "MR")
    if modality not in (trained_on, "OT"):
        raise ValueError(f"--checkpoint: {checkpoint} was trained on {trained_on} "
                         f"({model_normalization(module).name} normalization) but {what} is {modality}")
