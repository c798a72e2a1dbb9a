"""Denoise a whole scan with a trained conditional model, warm-started at the input's noise level
(``cdm4mi.training.warm_start``: the scaled low-dose input is the forward-process state of the clean image at
the timestep matching its noise). A later ``t_start`` is topped up with fresh noise; that is also how
``samples > 1`` draws differ (the per-voxel std over draws is the uncertainty map).

A model trained with ``data.metadata`` gets the metadata vector of the input scan with every batch,
``cond = {"image": ..., "vector": ...}``: values given to ``denoise_volume`` (``--metadata``) first, then
the scan's DICOM tags, then the estimated noise level (``cdm4mi.data.metadata``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import SlidingWindowInferer
from pydicom.dataset import Dataset
from tqdm.auto import tqdm

from cdm4mi.data.metadata import encode_metadata, parse_value, resolve_metadata
from cdm4mi.data.preprocessing import slab_indices
from cdm4mi.inference.classical import nlm_filter
from cdm4mi.inference.runtime import autocast
from cdm4mi.io.read import Scan, resample_like, resample_to
from cdm4mi.simulate.ct_dose import outside_field_of_view
from cdm4mi.simulate.noise_estimate import estimate_input_noise
from cdm4mi.training.module import DiffusionModule
from cdm4mi.training.warm_start import WarmStartSampler, warm_start_timestep


@dataclass
class DenoiseResult:
    mean: np.ndarray  # [D, H, W] in the scan's units (HU for CT)
    # [D, H, W] uncertainty (same units), when samples > 1: the std over the draws, scaled to a calibrated
    # coverage (mean ± 2 std) when the checkpoint carries a calibration (cdm4mi.evaluation.calibration)
    std: np.ndarray | None
    t_start: int
    input_noise_std: float  # model units, estimated from the scan unless given
    metadata: dict[str, Any] = field(default_factory=dict)  # field -> value fed to the model (data.metadata)
    metadata_sources: dict[str, str] = field(default_factory=dict)  # field -> 'given', 'tag', 'estimated', 'missing'
    input_noise_scan: float = float("nan")  # input_noise_std in the scan's units (HU for CT)
    calibration: dict[str, Any] | None = None  # the calibration applied to ``std``, None: the raw spread
    adaptation: Any = None  # what the self-supervised adaptation to the scan did (``cdm4mi.inference.adaptation``)
    nlm_blend: float = 0.0  # the share of non-local means of the input in ``mean`` (``sampling.nlm_blend``)
    posterior_mean: np.ndarray | None = None  # the mean of the draws alone, when ``nlm_blend`` > 0


def model_normalization(module: DiffusionModule):
    """The normalization the model was trained with (unfitted; its contract, ``module.preprocessing``)."""
    return module.preprocessing.normalizer()


def neighbour_stack(volume: torch.Tensor, context_slices: int) -> torch.Tensor:
    """[D, H, W] -> [D, 2k+1, H, W]: each slice with its k neighbours on each side (edges replicated)."""
    return volume[torch.from_numpy(slab_indices(volume.shape[0], context_slices))]


def pad_to_multiple(images: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    height, width = images.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    return F.pad(images, (0, pad_w, 0, pad_h), mode="replicate"), (height, width)


@torch.no_grad()
def denoise_volume(
    module: DiffusionModule,
    volume: np.ndarray,
    steps: int | None = None,
    eta: float | None = None,
    t_start: int | None = None,
    input_noise_std: float | None = None,
    samples: int = 1,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = True,
    metadata: Mapping[str, Any] | None = None,
    dicom_header: Dataset | None = None,
    calibrated: bool = True,
    precision: str = "fp32",
    nlm_blend: float | None = None,
) -> DenoiseResult:
    """Denoise a [D, H, W] volume (HU for CT) with a 2D (slice-batched) or 3D (sliding-window) model.

    ``t_start=None`` picks the timestep whose noise std is ``sampling.warm_start_factor`` times the estimated
    input noise (at least sqrt(2) times when ``samples > 1``, so draws differ). Returns the mean over ``samples`` draws and their std.

    For a model trained with ``data.metadata``: ``metadata`` (field -> value, ``cdm4mi.data.metadata``;
    fields the model does not take are ignored) and the tags of ``dicom_header`` give the vector, and the
    noise level missing from both is the estimate. A given ``noise_level`` is also the warm start's input
    noise std unless ``input_noise_std`` is set.

    With ``sampling.dihedral_draws``, draw k sees the slices turned by the k-th of the 8 in-plane flips and
    90-degree rotations (undone on its output): the mean of the draws is also a geometric self-ensemble.
    ``calibrated=False`` returns the raw spread even for a checkpoint that carries a calibration.

    ``nlm_blend`` w (None: the model's ``sampling.nlm_blend``) returns (1 - w) x the mean of the draws + w x
    non-local means of the input (``cdm4mi.inference.classical.nlm_filter``, tuned to the input's noise std),
    and the mean of the draws alone as ``posterior_mean``. The std stays the spread of the draws (calibrated on
    the blend, when the checkpoint's calibration was made with it).

    A CT scan's padding outside the field of view (``cdm4mi.simulate.ct_dose.outside_field_of_view``, below the
    window's floor by more than 5 x the input noise) keeps its input value in the mean (and the posterior mean),
    with a std of 0 there: the network only ever sees it clipped to the floor.

    Runs on the module's device (``cdm4mi.inference.runtime.place``); ``precision`` (fp32, bf16, fp16) is the
    autocast precision of the network there. Slices go to the device one batch at a time and come back to the CPU.
    """
    if volume.ndim != 3:
        raise ValueError(f"denoise: expected a [D, H, W] volume, got shape {volume.shape}")
    if samples < 1:
        raise ValueError(f"--samples: must be >= 1, got {samples}")
    blend = module.config.sampling.nlm_blend if nlm_blend is None else float(nlm_blend)
    if not 0 <= blend <= 1:
        raise ValueError(f"--nlm-blend: expected a share in [0, 1], got {nlm_blend}")
    device = module.device
    normalization = model_normalization(module).fit(volume)
    units = torch.as_tensor(np.asarray(normalization.forward(volume.astype(np.float32))), dtype=torch.float32)
    sigma, values, sources = input_noise_and_metadata(module, units, normalization, metadata, dicom_header,
                                                      input_noise_std)
    fields = model_metadata_fields(module)
    vector = torch.from_numpy(encode_metadata(fields, values)).to(device) if fields else None
    limit = module.objective.max_train_timestep
    if t_start is None:
        t_start = warm_start_timestep(module, sigma, floor=2**0.5 if samples > 1 else 1.0)
    elif limit is not None and t_start > limit:
        raise ValueError(f"--t-start: {t_start} lies beyond the timesteps this model was trained on (<= {limit})")
    generator = torch.Generator(device=device).manual_seed(seed)
    sampler = WarmStartSampler(module, steps, eta, t_start, sigma, generator, vector)
    dihedral = bool(module.config.sampling.dihedral_draws)
    draws = RunningMoments()  # the mean and spread over draws without keeping them: memory of two volumes
    for k in range(samples):
        with autocast(device, precision):
            draws.add(_run_model(module, sampler, units, batch_size, progress, f"sample {k + 1}/{samples}",
                                 turn=k % 8 if dihedral else 0))
    mean = np.asarray(normalization.inverse(draws.mean.numpy()), dtype=np.float32)
    unit_in_scan = abs(float(normalization.inverse(np.float32(1.0)) - normalization.inverse(np.float32(0.0))))
    posterior_mean = None
    if blend > 0:  # slice by slice: the memory of one slice in float64
        posterior_mean, mean = mean, mean.copy()
        for k in tqdm(range(volume.shape[0]), desc="non-local means", unit="slice", disable=not progress):
            classical = nlm_filter(volume[k], sigma_hu=sigma * unit_in_scan)
            mean[k] = (1 - blend) * posterior_mean[k] + blend * classical
    calibration = getattr(module, "card", {}).get("uncertainty") if calibrated else None
    std = None
    if samples > 1:
        std = draws.std().numpy() * unit_in_scan
        if calibration:
            std = calibration["scale"] * (std + calibration["offset"] * sigma * unit_in_scan)
        std = std.astype(np.float32)
    floor = getattr(normalization, "hu_min", None)  # CT only: MRI has no padding convention
    if floor is not None:
        outside = outside_field_of_view(volume, sigma * unit_in_scan, floor)
        for denoised in (mean, posterior_mean):
            if denoised is not None:
                denoised[outside] = volume[outside]
        if std is not None:
            std[outside] = 0.0
    return DenoiseResult(mean, std, t_start, sigma, values, sources, sigma * unit_in_scan,
                         calibration if samples > 1 else None, nlm_blend=blend, posterior_mean=posterior_mean)


def dihedral_turn(volume: torch.Tensor, turn: int, inverse: bool = False) -> torch.Tensor:
    """The ``turn``-th (0-7) of the 8 in-plane symmetries of a [..., H, W] tensor: ``turn % 4`` quarter turns,
    then a left-right flip for ``turn >= 4``; ``inverse`` undoes it."""
    quarter, flip = turn % 4, turn >= 4
    if not inverse:
        volume = torch.rot90(volume, quarter, dims=(-2, -1))
        return volume.flip(-1) if flip else volume
    volume = volume.flip(-1) if flip else volume
    return torch.rot90(volume, -quarter, dims=(-2, -1))


def input_noise_and_metadata(module: DiffusionModule, units: torch.Tensor, normalization, metadata: Mapping | None,
                             dicom_header: Dataset | None, input_noise_std: float | None = None
                             ) -> tuple[float, dict[str, Any], dict[str, str]]:
    """The input's noise std (model units) and the metadata values the model takes, with their sources.

    The noise std is ``input_noise_std``, else a given ``noise_level``, else the estimate of the model's
    ``data.noise_estimator``; it also fills a ``noise_level`` field that neither metadata nor tags gave."""
    fields = model_metadata_fields(module)
    values, sources = resolve_metadata(fields, metadata, dicom_header, None, "--metadata") if fields else ({}, {})
    if input_noise_std is None:
        input_noise_std = values.get("noise_level")
    estimator = module.preprocessing.noise_estimator
    sigma = estimate_input_noise(units.numpy(), normalization, estimator) if input_noise_std is None else input_noise_std
    if sources.get("noise_level") == "missing":  # a noise std passed as input_noise_std counts as given
        values["noise_level"] = sigma
        sources["noise_level"] = "estimated" if input_noise_std is None else "given"
    return float(sigma), values, sources


def scan_vector(module: DiffusionModule, scan: Scan, metadata: Mapping | None = None) -> torch.Tensor | None:
    """The encoded metadata vector ``cdm4mi denoise`` feeds the model for ``scan`` (None: the model takes none)."""
    fields = model_metadata_fields(module)
    if not fields:
        return None
    normalization = model_normalization(module).fit(scan.array)
    units = torch.as_tensor(np.asarray(normalization.forward(scan.array.astype(np.float32))), dtype=torch.float32)
    header = None if scan.dicom_reference is None else scan.dicom_reference.header
    _, values, _ = input_noise_and_metadata(module, units, normalization, metadata, header)
    return torch.from_numpy(encode_metadata(fields, values))


def model_metadata_fields(module: DiffusionModule) -> tuple[str, ...]:
    """The metadata fields the model was trained with (``data.metadata``), empty for none."""
    return module.preprocessing.metadata


class RunningMoments:
    """The mean and the sample standard deviation (``torch.std``'s, n - 1) of tensors added one at a time
    (Welford's update), in the memory of two of them."""

    def __init__(self):
        self.count, self.mean, self.squares = 0, None, None

    def add(self, value: torch.Tensor) -> None:
        self.count += 1
        if self.mean is None:
            self.mean, self.squares = value.clone(), torch.zeros_like(value)
            return
        delta = value - self.mean
        self.mean += delta / self.count
        self.squares += delta * (value - self.mean)

    def std(self) -> torch.Tensor:
        return (self.squares / max(self.count - 1, 1)).sqrt()


def _run_model(module: DiffusionModule, sampler: WarmStartSampler, units: torch.Tensor, batch_size: int,
               progress: bool, description: str, turn: int = 0) -> torch.Tensor:
    """One draw over the [D, H, W] volume ``units`` (CPU), seen turned by the ``turn``-th in-plane symmetry and
    turned back. 2D: slabs are cut and moved to the device one batch at a time (through pinned memory on CUDA, so
    the copy overlaps the work queued before it); only the [D, H, W] result is kept on the CPU."""
    preprocessing, device = module.preprocessing, module.device
    if preprocessing.mode == "3d":
        inferer = SlidingWindowInferer(roi_size=list(preprocessing.window), sw_batch_size=batch_size, overlap=0.25,
                                       mode="gaussian", progress=progress)
        output = inferer(dihedral_turn(units, turn)[None, None].to(device), sampler)[0, 0].float().cpu()
        return dihedral_turn(output, turn, inverse=True)
    slabs = torch.from_numpy(slab_indices(units.shape[0], preprocessing.context))  # [D, 2k+1] slice indices
    multiple = module.backbone.size_multiple  # U-Net: 2^(levels - 1); DiT: its patch size
    output = torch.empty_like(units)
    for start in tqdm(range(0, len(slabs), batch_size), desc=description, unit="batch", disable=not progress):
        batch = dihedral_turn(units[slabs[start : start + batch_size]], turn)
        if device.type == "cuda":
            batch = batch.pin_memory().to(device, non_blocking=True)
        batch, (height, width) = pad_to_multiple(batch.to(device), multiple)
        denoised = sampler(batch)[:, 0, :height, :width].float().cpu()
        output[start : start + len(denoised)] = dihedral_turn(denoised, turn, inverse=True)
    return output


def denoise_scan(module: DiffusionModule, scan: Scan, adapt_steps: int | None = None, **options: Any) -> DenoiseResult:
    """``denoise_volume`` on a loaded scan, at the voxel size the model was trained at
    (``data.spacing_mm``, if set: resampled there and the result resampled back onto the scan's grid).
    A DICOM scan's tags feed the model's metadata vector (``options["metadata"]`` takes precedence).

    ``adapt_steps`` (None: the checkpoint's ``sampling.adapt_steps``; 0: none) first fine-tunes a copy of the
    model on the scan itself, self-supervised (``cdm4mi.inference.adaptation``), and denoises with that copy."""
    if scan.dicom_reference is not None:
        options.setdefault("dicom_header", scan.dicom_reference.header)
    spacing = module.preprocessing.spacing_mm
    working = scan if spacing is None else resample_to(scan, spacing)
    adaptation = None
    steps = module.config.sampling.adapt_steps if adapt_steps is None else adapt_steps
    if steps:
        module, adaptation = adapted_module(module, working, steps, options)
    result = denoise_volume(module, working.array, **options)
    result.adaptation = adaptation
    if spacing is None:
        return result
    back = {name: resample_like(getattr(result, name), working.affine, scan)
            for name in ("mean", "std", "posterior_mean") if getattr(result, name) is not None}
    return dataclasses.replace(result, **back)


def adapted_module(module: DiffusionModule, scan: Scan, steps: int, options: Mapping[str, Any]):
    """``adapt_to_scan`` with the noise level and metadata ``denoise_volume`` will use for this scan; a given
    ``dose_fraction`` (``options["metadata"]``, used by the model or not) sets the adaptation's removal budget."""
    from cdm4mi.inference.adaptation import adapt_to_scan  # imports this module (dihedral_turn)

    normalization = model_normalization(module).fit(scan.array)
    units = torch.as_tensor(np.asarray(normalization.forward(scan.array.astype(np.float32))), dtype=torch.float32)
    sigma, values, _ = input_noise_and_metadata(module, units, normalization, options.get("metadata"),
                                                options.get("dicom_header"), options.get("input_noise_std"))
    dose = (options.get("metadata") or {}).get("dose_fraction")
    dose = None if dose is None else parse_value("dose_fraction", dose, "--metadata")
    return adapt_to_scan(module, scan.array, tuple(scan.spacing_mm[1:]), normalization, sigma, values, steps,
                         module.config.sampling.adapt_learning_rate, seed=options.get("seed", 0),
                         progress=options.get("progress", True), dose_fraction=dose)
