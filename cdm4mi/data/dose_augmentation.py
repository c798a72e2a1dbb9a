"""Dose augmentation: projection-domain low-dose noise drawn at a random dose for every training crop.

A full-dose CT scan becomes training pairs at every dose: the simulator (``cdm4mi.simulate.ct_dose``) inserts
the noise a dose fraction ``d`` adds, *relative to the scan's own noise*. Noise variance goes as 1/dose,
so ``d`` adds ``sigma_own * sqrt(1/d - 1)``: the incident flux is calibrated per scan so that the
simulated full-dose noise equals the one measured in the scan (``calibrate_incident_flux``), and the
reconstruction kernel's cutoff so that its texture (neighbour correlations) matches the scan's own noise
(``scan_kernel_cutoff``); a smoothed scan with almost no measurable noise falls back to the nominal flux and
the plain Hann kernel.

Simulating every crop from scratch would cost a projection and an FBP per item (0.3 s per 512² slice),
so each scan gets a small *bank* of noise realizations at a reference dose ``d_ref`` once, when it is
loaded. The inserted log-sinogram noise of Yu et al. (2012) has variance ``(1-d)/d * exp(p)/b``
(photon noise; the electronic-noise term is left out of the bank, it matters only where counts starve),
so the noise image of dose ``d`` is the bank's noise scaled by ``sqrt(((1-d)/d) / ((1-d_ref)/d_ref))``:
the same distribution as ``cdm4mi simulate`` at that dose, exactly, for zero electronic noise. Random
crops, flips, rotations and the choice among realizations make each training item's noise different.

Doses are drawn log-uniformly in ``dose_range``, so 10 % and 50 % dose get the same share of items.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cdm4mi.simulate.ct_dose import simulate_low_dose_ct
from cdm4mi.simulate.noise_estimate import estimate_ct_noise_hu, soft_tissue_noise_hu
from cdm4mi.simulate.relative_dose import calibrate_incident_flux, scan_kernel_cutoff

NOMINAL_FLUX = 1.5e5
REFERENCE_DOSE = 0.5  # the bank's dose: with a calibrated flux it adds as much noise as the scan already has


@dataclass(frozen=True)
class DoseAugmentation:
    """Settings of ``data.dose_augmentation`` (``paired_scans``).

    ``dose_range``: [low, high] dose fractions of the full-dose scan, in (0, 1); ``realizations``: noise
    images simulated per scan when it is loaded (memory: 4 bytes per voxel each); ``probability``: share of
    training items of patients *with* a real low-dose input that get simulated noise instead (full-dose-only
    patients always do); ``val_dose``: the dose of the fixed simulated input of full-dose-only validation
    patients (default: the geometric mean of the range).
    """

    dose_range: tuple[float, float] = (0.1, 0.5)
    realizations: int = 4
    probability: float = 1.0
    val_dose: float | None = None

    @classmethod
    def from_options(cls, options: dict | None) -> DoseAugmentation | None:
        if options is None:
            return None
        where = "data.dose_augmentation"
        if not isinstance(options, dict):
            raise ValueError(f"{where}: expected a mapping such as {{dose_range: [0.1, 0.5]}}, got {options!r}")
        unknown = sorted(set(options) - {"dose_range", "realizations", "probability", "val_dose"})
        if unknown:
            raise ValueError(f"{where}: unknown key '{unknown[0]}'; allowed: dose_range, realizations, probability, "
                             "val_dose")
        low, high = _pair(options.get("dose_range", cls.dose_range), f"{where}.dose_range")
        realizations = options.get("realizations", cls.realizations)
        if isinstance(realizations, bool) or not isinstance(realizations, int) or not 1 <= realizations <= 64:
            raise ValueError(f"{where}.realizations: an integer in [1, 64], got {realizations!r}")
        probability = options.get("probability", cls.probability)
        if isinstance(probability, bool) or not isinstance(probability, (int, float)) or not 0 <= probability <= 1:
            raise ValueError(f"{where}.probability: a number in [0, 1], got {probability!r}")
        val_dose = options.get("val_dose")
        if val_dose is not None and (isinstance(val_dose, bool) or not isinstance(val_dose, (int, float))
                                     or not 0 < val_dose < 1):
            raise ValueError(f"{where}.val_dose: a dose fraction in (0, 1), got {val_dose!r}")
        return cls((low, high), realizations, float(probability), None if val_dose is None else float(val_dose))

    @property
    def validation_dose(self) -> float:
        return self.val_dose if self.val_dose is not None else math.sqrt(self.dose_range[0] * self.dose_range[1])

    def draw_dose(self, generator: torch.Generator | None = None) -> float:
        """A dose fraction, log-uniform in ``dose_range`` (torch's RNG: seeded per DataLoader worker)."""
        low, high = (math.log(d) for d in self.dose_range)
        return math.exp(low + (high - low) * float(torch.rand((), generator=generator)))


@dataclass
class NoiseBank:
    """Noise realizations of one scan at ``REFERENCE_DOSE``: ``noise`` float32 ``[R, D, H, W]`` HU."""

    noise: np.ndarray
    own_noise_hu: float
    """The full-dose scan's own noise (HU std in flat soft tissue), as estimated."""
    bank_noise_hu: float
    """Std of the bank's noise in the scan's soft tissue (HU), measured."""
    flux: float
    calibrated: bool
    """False: the scan looked smoothed (own noise too small to measure) and the nominal flux was used."""
    kernel_cutoff: float = 1.0
    """The simulator's Hann cutoff, matched to the texture of the scan's own noise (1: not matched)."""

    def added_noise_hu(self, dose: float) -> float:
        """HU std that ``dose`` adds to the full-dose scan (soft tissue)."""
        return self.bank_noise_hu * noise_scale(dose)

    def input_noise_hu(self, dose: float) -> float:
        """HU std of the whole noise of the simulated low-dose input: own and added, independent."""
        return math.hypot(self.own_noise_hu, self.added_noise_hu(dose))


def noise_scale(dose: float, reference: float = REFERENCE_DOSE) -> float:
    """Factor from the bank's noise (dose ``reference``) to the noise of ``dose`` (photon noise: (1-d)/d)."""
    return math.sqrt((1 / dose - 1) / (1 / reference - 1))


def build_noise_bank(target_hu: np.ndarray, spacing_mm: Sequence[float], realizations: int, seed: int) -> NoiseBank:
    """Simulate ``realizations`` noise images of a full-dose volume ``[D, H, W]`` (HU, in-plane pixel
    ``spacing_mm`` (row, col) mm) at ``REFERENCE_DOSE``, with the flux calibrated to the scan's own noise
    and the kernel to its texture, as ``cdm4mi simulate`` does."""
    volume = np.asarray(target_hu, dtype=np.float32)
    own = estimate_ct_noise_hu(volume)
    cutoff, _ = scan_kernel_cutoff(volume, own)
    flux = calibrate_incident_flux(volume, tuple(spacing_mm), own, kernel_cutoff=cutoff)
    calibrated = flux is not None
    flux = flux if calibrated else NOMINAL_FLUX
    rng = np.random.default_rng(seed)
    noise = np.empty((realizations, *volume.shape), dtype=np.float32)
    for r in range(realizations):
        noise[r] = simulate_low_dose_ct(volume, tuple(spacing_mm), dose_fraction=REFERENCE_DOSE, incident_flux=flux,
                                        electronic_noise_var=0.0, rng=rng, kernel_cutoff=cutoff) - volume
    bank_std = float(np.mean([soft_tissue_noise_hu(n, volume) for n in noise]))
    return NoiseBank(noise, own if calibrated else 0.0, bank_std, flux, calibrated, cutoff)


def _pair(value: object, where: str) -> tuple[float, float]:
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise ValueError(f"{where}: two dose fractions [low, high], got {value!r}")
    low, high = float(value[0]), float(value[1])
    if not 0 < low <= high < 1:
        raise ValueError(f"{where}: need 0 < low <= high < 1 (fractions of the full dose), got {list(value)}")
    return low, high
