"""The Python API of cdm4mi's denoisers (``cdm4mi.load_denoiser``, ``cdm4mi.load_scan``, ``cdm4mi.save_scan``)::

    import cdm4mi
    model = cdm4mi.load_denoiser("runs/site/checkpoints/last.ckpt", device="auto")
    scan = cdm4mi.load_scan("new_scan/")  # a DICOM series folder, a DICOM file or a NIfTI; scan.array in HU
    cdm4mi.save_scan(model.denoise(scan), scan, "denoised/")  # a folder: a DERIVED DICOM series; or .nii.gz

``model.denoise`` also takes a path, or a numpy ``[D, H, W]`` (or ``[H, W]``) array in HU / scanner units; it runs
the checks and the sampling of ``cdm4mi denoise`` (``cdm4mi.inference.checks``, ``denoise_scan``), so the same
seed gives the same output. ``model.card`` is what the model file records about the model.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cdm4mi.inference.checks import check_compatible, check_denoiser, check_metadata, check_sampling_options
from cdm4mi.inference.denoise import DenoiseResult, denoise_scan, model_normalization
from cdm4mi.inference.runtime import load_for_inference, resolve_device
from cdm4mi.io.read import Scan
from cdm4mi.io.write import write_volume


class ScanDenoiser:
    """A trained denoiser, ready to run on ``device`` (``load_denoiser`` makes one)."""

    def __init__(self, module, source: str | Path, precision: str = "fp32"):
        self.module, self.source, self.precision = module, str(source), precision

    @property
    def card(self) -> dict[str, Any]:
        """What the model file records about the model: task, modality, normalization, data mode, ... (a copy)."""
        return copy.deepcopy(self.module.card)

    @property
    def modality(self) -> str:
        """The modality the model was trained on: 'CT' or 'MR' (from its normalization for older files)."""
        return self.module.card.get("modality") or (
            "CT" if model_normalization(self.module).name == "hu_window" else "MR")

    @property
    def device(self) -> torch.device:
        return self.module.device

    def denoise(self, scan: Scan | np.ndarray | torch.Tensor | str | os.PathLike, *, steps: int | None = None,
                eta: float | None = None, t_start: int | None = None, samples: int = 1, batch_size: int = 8,
                seed: int = 0, metadata: Mapping[str, float | str] | None = None, series_uid: str | None = None,
                spacing_mm: Sequence[float] | None = None, progress: bool = False,
                adapt_steps: int | None = None, nlm_blend: float | None = None) -> np.ndarray | DenoiseResult:
        """Denoise ``scan``: a ``Scan`` (``cdm4mi.load_scan``), a path to a DICOM series folder, a DICOM file or a
        NIfTI file (``series_uid`` picks a series in a folder), or an array ``[D, H, W]`` / ``[H, W]`` in HU (CT) or
        scanner units (MR), whose voxel size ``spacing_mm`` (d, h, w) is needed only by a model trained at a fixed
        voxel size (``data.spacing_mm``).

        Options as ``cdm4mi denoise``: ``steps``, ``eta`` (default: the model's config), ``t_start`` (None: matched
        to the input's estimated noise), ``samples`` draws, ``batch_size`` slices per forward pass, ``seed``,
        ``metadata`` for models trained with ``data.metadata``, ``adapt_steps`` (None: the model's
        ``sampling.adapt_steps``; 0: none) of self-supervised fine-tuning on the scan first, ``nlm_blend`` (None:
        the model's ``sampling.nlm_blend``; 0: none) the share of non-local means of the input in the output.

        Returns the denoised array, float32 in the input's units and layout; with ``samples > 1`` a
        ``DenoiseResult`` whose ``mean`` is that array and ``std`` the per-voxel uncertainty.
        """
        for name, value, low in (("steps", steps, 1), ("t_start", t_start, 0), ("adapt_steps", adapt_steps, 0)):
            if value is not None and (not isinstance(value, int) or value < low):
                raise ValueError(f"{name}: expected a whole number >= {low} or None, got {value!r}")
        for name, value, low in (("samples", samples, 1), ("batch_size", batch_size, 1), ("seed", seed, 0)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name}: expected a whole number >= {low}, got {value!r}")
        if nlm_blend is not None and (isinstance(nlm_blend, bool) or not isinstance(nlm_blend, (int, float))
                                      or not 0 <= nlm_blend <= 1):
            raise ValueError(f"nlm_blend: expected a share in [0, 1] or None, got {nlm_blend!r}")
        loaded, planar = self._as_scan(scan, series_uid, spacing_mm)
        check_metadata(dict(metadata or {}), self.module, self.source)
        check_sampling_options(self.module, self.source, {} if steps is None else {"steps": steps}, t_start=t_start,
                               warm_start=True)
        check_compatible(loaded, self.module, self.source)
        result = denoise_scan(self.module, loaded, steps=steps, eta=eta, t_start=t_start, samples=samples,
                              batch_size=batch_size, seed=seed, metadata=dict(metadata or {}),
                              precision=self.precision, progress=progress, adapt_steps=adapt_steps,
                              nlm_blend=nlm_blend)
        if planar:
            result = dataclasses.replace(result, **{name: getattr(result, name)[0] for name in
                                                    ("mean", "std", "posterior_mean") if getattr(result, name) is not None})
        return result.mean if samples == 1 else result

    def _as_scan(self, scan, series_uid: str | None, spacing_mm: Sequence[float] | None) -> tuple[Scan, bool]:
        """``scan`` as a ``Scan``, and whether it was given as one 2D image."""
        from cdm4mi.io.read import load_scan

        if isinstance(scan, Scan):
            return scan, False
        if isinstance(scan, (str, os.PathLike)):
            return load_scan(scan, series_uid=series_uid), False
        if isinstance(scan, torch.Tensor):
            scan = scan.detach().cpu().numpy()
        if not isinstance(scan, np.ndarray):
            raise ValueError(f"denoise: expected a Scan, a path or a numpy array, got {type(scan).__name__}")
        return array_scan(scan, spacing_mm, self.module.preprocessing.spacing_mm), scan.ndim == 2


def array_scan(array: np.ndarray, spacing_mm: Sequence[float] | None, model_spacing: Sequence[float] | None) -> Scan:
    """An in-memory ``[D, H, W]`` (or ``[H, W]``) array as a ``Scan`` in the canonical orientation, voxels of
    ``spacing_mm`` (default 1 mm, unless the model works at a fixed voxel size, which needs the array's)."""
    if array.ndim not in (2, 3) or 0 in array.shape:
        raise ValueError(f"denoise: expected a [D, H, W] or [H, W] array, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise ValueError(f"denoise: expected a real-valued array, got dtype {array.dtype}")
    volume = np.asarray(array, dtype=np.float32).reshape((-1, *array.shape[-2:]))
    if not np.isfinite(volume).all():
        raise ValueError(f"denoise: {int((~np.isfinite(volume)).sum())} voxels of the array are NaN or Inf")
    if spacing_mm is None and model_spacing is not None:
        raise ValueError(f"spacing_mm: the model works at {tuple(model_spacing)} mm voxels, so it needs the voxel "
                         "size (d, h, w) of the array in mm; or give a DICOM or NIfTI file")
    spacing = tuple(float(value) for value in (spacing_mm if spacing_mm is not None else (1.0, 1.0, 1.0)))
    if len(spacing) != 3 or not all(np.isfinite(value) and value > 0 for value in spacing):
        raise ValueError(f"spacing_mm: expected three positive voxel sizes (d, h, w) in mm, got {spacing_mm!r}")
    depth, height, width = spacing
    # canonical SPL: d towards the head (+S), h towards the back (-A), w towards the patient's left (-R)
    affine = np.array([[0.0, 0.0, -width, 0.0], [0.0, -height, 0.0, 0.0], [depth, 0.0, 0.0, 0.0],
                       [0.0, 0.0, 0.0, 1.0]])
    return Scan(volume, affine, spacing, "OT", "array")


def load_denoiser(path: str | Path, device: str | torch.device = "auto", precision: str = "fp32",
                  channels_last: bool | None = None, compile: bool = False) -> ScanDenoiser:
    """The denoiser in ``path`` (a checkpoint ``cdm4mi train`` wrote, a safetensors file or MONAI bundle folder
    ``cdm4mi export`` wrote) on ``device`` (cpu, cuda, cuda:N, mps or auto: CUDA if present, else the CPU),
    running its network at ``precision`` (fp32, bf16, fp16). A model trained to generate, not to denoise, is
    refused (``ValueError``)."""
    resolved = device if isinstance(device, torch.device) else resolve_device(str(device), option="device")
    module = load_for_inference(path, resolved, precision, channels_last, compile)
    check_denoiser(module, str(path), "OT", "the input")
    return ScanDenoiser(module, path, precision)


def save_scan(volume: np.ndarray | torch.Tensor | DenoiseResult, reference: Scan, path: str | Path,
              description: str = "cdm4mi denoised", overwrite: bool = False, deidentifier=None) -> Path:
    """Write ``volume`` (laid out like ``reference.array``; a ``DenoiseResult``: its mean) on ``reference``'s grid:
    ``.nii``/``.nii.gz`` as NIfTI, any other path as a folder holding a DERIVED DICOM series that files next to
    ``reference`` (``cdm4mi.io.write.write_volume``; ``deidentifier``: ``cdm4mi.io.deidentify.Deidentifier``).
    An existing output is replaced only with ``overwrite``. Returns ``path``."""
    if isinstance(volume, DenoiseResult):
        volume = volume.mean
    if tuple(volume.shape) == tuple(reference.array.shape[1:]) and reference.array.shape[0] == 1:
        volume = volume[None]  # one slice given as [H, W]
    return write_volume(volume, reference, path, description, overwrite, deidentifier=deidentifier)
