"""Low dose relative to the scan itself: the noise a dose fraction adds, at the scan's own level and texture.

A full-dose scan already carries noise ``sigma_own``, and noise variance goes as 1/dose, so dose fraction
``d`` must add ``sigma_own * sqrt(1/d - 1)`` (quarter dose: ``sqrt(3) * sigma_own``). A fixed nominal
incident flux ignores the scan's own noise and can add less noise than the scan already has.
``calibrate_incident_flux`` finds the flux ``b`` at which the simulated full-dose noise equals
``sigma_own`` (``estimate_ct_noise_hu``); a smoothed scan (< 2 HU of noise) keeps the nominal 1.5e5.

A real low-dose acquisition adds noise in the *texture* of the scanner's reconstruction kernel, the one the
scan's own noise has. The simulator's plain Hann filter makes finer grain than most clinical kernels:
on the real slices shipped in packages the own noise correlates 0.33-0.83 between neighbours and up to
0.48 two pixels apart, the Hann noise 0.57 and 0.0. A model trained or adapted on the simulator can then
tell added from own noise by its grain, which no real low dose allows, and a benchmark built on it
flatters such models. ``fit_kernel_cutoff`` measures the correlation of the scan's own noise at 1 and 2
pixels (``estimate_noise_correlation``) and picks the cutoff of the simulator's Hann window
(``filter_sinogram``) whose noise correlates the same way, from a table of pure FBP noise measured by the
same estimator (``kernel_texture_table``). Scan pixels and detector bins have the same size, so the
table, in pixels, holds for every pixel size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
import torch

from cdm4mi.simulate.ct_dose import (
    NOMINAL_INCIDENT_FLUX,
    ParallelBeamGeometry,
    back_project,
    default_num_angles,
    filter_sinogram,
    simulate_low_dose_ct,
    validate_physics,
    validated_image,
)
from cdm4mi.simulate.noise_estimate import (
    estimate_ct_noise_hu,
    estimate_noise_correlation,
    plane_residuals,
    soft_tissue_noise_hu,
    window_correlation,
)

MIN_OWN_NOISE_HU = 2.0  # below this a scan has been smoothed (or is synthetic): nothing to calibrate to
CALIBRATION_DOSE = 0.5  # adds (1-d)/d = 1 times the full-dose variance: the full-dose noise itself
DEFAULT_CUTOFF = 1.0  # the classic Hann filter: the texture when the scan's own cannot be measured
CUTOFF_RANGE = (0.2, 8.0)  # from a very smooth kernel (noise correlated over ~5 px) to almost the plain ramp
FIT_LAGS = 2  # correlations at 1 and 2 px are fitted; a third is reported
_TABLE_CUTOFFS = 17
_TABLE_SIZE_PX, _TABLE_SLICES = 128, 6


@dataclass(frozen=True)
class KernelFit:
    """The simulator's kernel cutoff matched to a scan's own noise, and how well it matches."""

    cutoff: float
    own_correlation: tuple[float, ...]
    """Correlation of the scan's own noise at 1, 2, 3 px (``estimate_noise_correlation``)."""
    simulated_correlation: tuple[float, ...]
    """The same for the simulator's noise at ``cutoff`` (``kernel_texture_table``)."""

    def describe(self) -> str:
        own = "/".join(f"{c:.2f}" for c in self.own_correlation)
        simulated = "/".join(f"{c:.2f}" for c in self.simulated_correlation)
        return (f"kernel cutoff {self.cutoff:.2f} Nyquist (noise correlation at 1/2/3 px: own {own}, "
                f"simulated {simulated})")


@lru_cache(maxsize=1)
def kernel_texture_table() -> tuple[np.ndarray, np.ndarray]:
    """(cutoffs [K], correlations [K, 3]): the simulator's FBP noise correlation at 1, 2, 3 px for each cutoff.

    Pure noise: white log-sinogram noise of one variance on a 128 px field, reconstructed with each cutoff
    (the same draws), measured in the central half by ``window_correlation``, as ``estimate_noise_correlation``
    measures a scan. Fixed seed: the table is the same in every process (~1 s, computed once).
    """
    size = _TABLE_SIZE_PX
    geometry = ParallelBeamGeometry((size, size), (1.0, 1.0), default_num_angles((size, size)))
    draws = np.random.default_rng(0).standard_normal((_TABLE_SLICES, geometry.num_angles, geometry.num_bins))
    sinogram = torch.from_numpy(draws.astype(np.float32))
    cutoffs = np.geomspace(*CUTOFF_RANGE, _TABLE_CUTOFFS)
    centre = slice(size // 4, size - size // 4)
    correlations = []
    for cutoff in cutoffs:
        images = back_project(filter_sinogram(sinogram, 1.0, "hann", float(cutoff)), geometry).numpy()
        residuals = np.concatenate([plane_residuals(image[centre, centre]) for image in images])
        correlations.append(window_correlation(residuals, 3))
    return cutoffs, np.asarray(correlations)


def simulated_noise_correlation(cutoff: float) -> np.ndarray:
    """Correlation at 1, 2, 3 px of the simulator's noise with Hann cutoff ``cutoff`` (interpolated)."""
    cutoffs, table = kernel_texture_table()
    x = math.log(min(max(cutoff, CUTOFF_RANGE[0]), CUTOFF_RANGE[1]))
    return np.array([np.interp(x, np.log(cutoffs), column) for column in table.T])


def fit_kernel_cutoff(hu: np.ndarray) -> KernelFit | None:
    """The Hann cutoff whose simulated noise correlates at 1 and 2 px as a CT slice's or volume's own noise
    (least squares over a fine grid in ``CUTOFF_RANGE``), or None when the scan has no soft tissue to
    measure in. The fit assumes the flat windows hold noise: on a smoothed scan they hold anatomy, so
    callers fit only scans with at least ``MIN_OWN_NOISE_HU`` of noise."""
    own = estimate_noise_correlation(hu, 3)
    if not np.all(np.isfinite(own)):
        return None
    cutoffs, table = kernel_texture_table()
    fine = np.geomspace(*CUTOFF_RANGE, 400)
    curves = np.stack([np.interp(np.log(fine), np.log(cutoffs), column) for column in table[:, :FIT_LAGS].T], 1)
    best = float(fine[np.argmin(((curves - own[:FIT_LAGS]) ** 2).sum(axis=1))])
    return KernelFit(round(best, 3), tuple(float(c) for c in own),
                     tuple(float(c) for c in simulated_noise_correlation(best)))


def calibrate_incident_flux(
    hu: np.ndarray,
    pixel_spacing_mm: float | tuple[float, float],
    own_noise_hu: float,
    filter_name: Literal["ramp", "hann"] = "hann",
    num_angles: int | None = None,
    scanner_views: int = 1152,
    seed: int = 0,
    kernel_cutoff: float = DEFAULT_CUTOFF,
) -> float | None:
    """Full-dose incident flux ``b`` at which the simulated full-dose noise of a CT slice [H, W] or volume
    [D, H, W] (HU) equals its own noise ``own_noise_hu`` (HU std in soft tissue), or None when
    ``own_noise_hu`` is under ``MIN_OWN_NOISE_HU`` or not finite (a smoothed scan: use a nominal flux) or
    the scan has no soft tissue to measure in.

    One simulation at ``CALIBRATION_DOSE`` (which adds exactly the full-dose variance) at the nominal flux,
    without electronic noise, measured with ``soft_tissue_noise_hu``: the inserted std then scales exactly
    as ``1/sqrt(b)``, so ``b = b_nominal * (measured / own)^2``. Electronic noise, added later, raises the
    noise only where counts starve. A volume is calibrated on up to 8 evenly spaced slices.
    ``filter_name``, ``num_angles``, ``scanner_views``, ``kernel_cutoff``: as the simulation that will use
    ``b`` (a smoother kernel makes less noise from the same photons).
    """
    if not (math.isfinite(own_noise_hu) and own_noise_hu >= MIN_OWN_NOISE_HU):
        return None
    image, spacing = validated_image(hu, pixel_spacing_mm)
    if image.ndim == 3:
        image = image[:: max(1, math.ceil(len(image) / 8))]
    image = image.astype(np.float32)
    noise = simulate_low_dose_ct(image, spacing, CALIBRATION_DOSE, NOMINAL_INCIDENT_FLUX, electronic_noise_var=0.0,
                                 filter_name=filter_name, num_angles=num_angles, scanner_views=scanner_views,
                                 seed=seed, kernel_cutoff=kernel_cutoff) - image
    measured = soft_tissue_noise_hu(noise, image)
    if not (math.isfinite(measured) and measured > 0):
        return None
    return NOMINAL_INCIDENT_FLUX * (measured / own_noise_hu) ** 2


def scan_kernel_cutoff(image: np.ndarray, measured_noise_hu: float | None = None) -> tuple[float, KernelFit | None]:
    """The cutoff to simulate a scan's dose with: fitted to its own noise (``fit_kernel_cutoff``) when the
    scan has at least ``MIN_OWN_NOISE_HU`` of it (``measured_noise_hu``, its ``estimate_ct_noise_hu``;
    None measures it), else ``DEFAULT_CUTOFF``; and the fit (None when not fitted). The texture is read
    from the image, so the image must hold the noise: a level given from elsewhere does not count."""
    own = estimate_ct_noise_hu(image) if measured_noise_hu is None else measured_noise_hu
    fit = fit_kernel_cutoff(image) if math.isfinite(own) and own >= MIN_OWN_NOISE_HU else None
    return (fit.cutoff if fit is not None else DEFAULT_CUTOFF), fit


def texture_noise(image: np.ndarray, pixel_spacing_mm, sigma_hu: float, seed: int | None = None,
                  kernel_cutoff: float | None = None) -> np.ndarray:
    """A fresh noise realization in the scan's texture, ``image``'s shape: the projection-domain simulator's noise
    (half dose of the nominal flux) with the Hann cutoff fitted to the image's own noise (``scan_kernel_cutoff``,
    or ``kernel_cutoff`` when given: fit it once for many draws), rescaled to ``sigma_hu`` in soft tissue (left as
    simulated where the image has no soft tissue). The simulator's noise is proportional to 1/sqrt(flux), so the
    nominal flux gives the same texture as a calibrated one: the calibration is not repeated per draw."""
    cutoff = scan_kernel_cutoff(image)[0] if kernel_cutoff is None else kernel_cutoff
    noise = simulate_low_dose_ct(image, pixel_spacing_mm, 0.5, seed=seed, kernel_cutoff=cutoff) - image
    measured = soft_tissue_noise_hu(noise, image)
    if math.isfinite(measured) and measured > 0:
        noise *= sigma_hu / measured
    return noise


def simulate_relative_dose(
    hu: np.ndarray,
    pixel_spacing_mm: float | tuple[float, float],
    dose_fraction: float = 0.25,
    own_noise_hu: float | None = None,
    seed: int | None = None,
    electronic_noise_var: float = 10.0,
    filter_name: Literal["ramp", "hann"] = "hann",
    num_angles: int | None = None,
    scanner_views: int = 1152,
    kernel_cutoff: float | Literal["match"] = "match",
) -> tuple[np.ndarray, dict]:
    """``simulate_low_dose_ct`` at ``dose_fraction`` of the scan's *own* dose (Gaussian model), in its texture.

    ``own_noise_hu``: the full-dose scan's noise (HU std in soft tissue); None estimates it
    (``estimate_ct_noise_hu``). The flux is calibrated to it (``calibrate_incident_flux``), so the dose
    adds about ``own * sqrt(1/dose - 1)``; a scan with under ``MIN_OWN_NOISE_HU`` (smoothed) gets the
    nominal flux 1.5e5. ``kernel_cutoff``: "match" fits the Hann cutoff to the own noise's texture
    (``scan_kernel_cutoff``; ``DEFAULT_CUTOFF`` for a smoothed scan), a number sets it (with the ``hann``
    filter). ``electronic_noise_var`` (counts^2) is the one at the nominal flux and is scaled by
    ``b / 1.5e5``: a calibrated ``b`` far from the nominal one says that the simulated geometry (a cropped
    field of view, say) is not the scanner's, so ``b`` is an effective number, and the electronic noise
    keeps the share of the noise it has in a nominal simulation. Returns the noisy HU (float32, the input's
    shape) and ``info``: ``own_noise_hu``, ``own_noise_source`` ("given" or "estimated"),
    ``incident_flux`` and ``electronic_noise_var`` (those used), ``calibrated`` (False: nominal flux),
    ``kernel_cutoff`` (used), ``texture`` (a ``KernelFit`` when fitted, else None), ``dose_fraction`` and
    ``added_noise_hu`` (std of noisy - input in soft tissue, measured; NaN without soft tissue).
    """
    image, spacing = validated_image(hu, pixel_spacing_mm)
    validate_physics(dose_fraction, NOMINAL_INCIDENT_FLUX, electronic_noise_var, "gaussian", filter_name, num_angles,
                     scanner_views)
    if own_noise_hu is not None and not (math.isfinite(own_noise_hu) and own_noise_hu >= 0):
        raise ValueError(f"own_noise_hu: a noise std in HU >= 0 (or None to estimate it), got {own_noise_hu}")
    if kernel_cutoff != "match" and (isinstance(kernel_cutoff, bool) or not isinstance(kernel_cutoff, (int, float))
                                     or not (math.isfinite(kernel_cutoff) and kernel_cutoff > 0)):
        raise ValueError(f"kernel_cutoff: 'match' or a Hann cutoff in Nyquists > 0, got {kernel_cutoff!r}")
    source = "estimated" if own_noise_hu is None else "given"
    own = estimate_ct_noise_hu(image) if own_noise_hu is None else float(own_noise_hu)
    fit = None
    if kernel_cutoff == "match":
        measured = own if own_noise_hu is None else None
        kernel_cutoff, fit = scan_kernel_cutoff(image, measured) if filter_name == "hann" else (DEFAULT_CUTOFF, None)
    flux = calibrate_incident_flux(image, spacing, own, filter_name, num_angles, scanner_views,
                                   kernel_cutoff=kernel_cutoff)
    calibrated = flux is not None
    flux = flux if calibrated else NOMINAL_INCIDENT_FLUX
    # Scaled with the flux, the electronic noise keeps its nominal share and the noise scales as 1/sqrt(b).
    electronic = electronic_noise_var * flux / NOMINAL_INCIDENT_FLUX
    noisy = simulate_low_dose_ct(image, spacing, dose_fraction, flux, electronic, filter_name=filter_name,
                                 num_angles=num_angles, scanner_views=scanner_views, seed=seed,
                                 kernel_cutoff=kernel_cutoff)
    added = soft_tissue_noise_hu(noisy - image, image)
    return noisy, {"own_noise_hu": own, "own_noise_source": source, "incident_flux": flux, "calibrated": calibrated,
                   "electronic_noise_var": electronic, "kernel_cutoff": float(kernel_cutoff), "texture": fit,
                   "dose_fraction": dose_fraction, "added_noise_hu": added}
