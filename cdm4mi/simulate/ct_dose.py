"""Low-dose CT simulation by noise insertion in the projection (sinogram) domain.

A full-dose slice in HU is turned into attenuation, ``mu = mu_water * (1 + HU/1000)`` with
``mu_water = 0.0192 /mm`` (water at ~70 keV), clipped at 0. Its parallel-beam line integrals ``p`` set
the photon statistics of every ray; only *noise* is made in the sinogram, reconstructed by filtered
back projection (FBP) and added to the untouched full-dose image in HU (``1000 * dmu / mu_water``).
The reference therefore stays the real full-dose image, and FBP blur never enters it.

Noise models (``model``):

``gaussian`` (default)
    Yu et al. 2012 (J. Comput. Assist. Tomogr. 36:477, "Development and validation of a practical
    lower-dose-simulation tool for optimizing CT scan protocols"): the low-dose log-sinogram is the
    full-dose one plus zero-mean Gaussian noise of the *extra* variance a dose fraction ``k`` adds,
    ``var(p_LD) - var(p_FD)``::

        (1-k)/k * exp(p)/b * (1 + (1+k)/k * sigma_e^2 * exp(p)/b)

    The full-dose scan already carries its own noise, so this inserts only what is missing;
    ``dose_fraction = 1`` leaves the image unchanged.
``poisson``
    Zeng et al. 2015 (IEEE Trans. Nucl. Sci. 62:2226, "A simple low-dose x-ray CT simulation from
    high-dose scan"), photon counts: ``y = Poisson(k*b*exp(-p)) + N(0, sigma_e^2)``,
    ``p_LD = -ln(max(y, 1)/(k*b))``, noise ``p_LD - p``. It adds the *whole* low-dose noise on top of the
    full-dose noise already in the image, so the result carries the full-dose variance twice (k times
    the low-dose variance too much); it keeps the log bias and photon starvation of very low counts.

Photon budget: ``incident_flux`` ``b`` is photons per detector bin (width = pixel size) per view for a
scanner taking ``scanner_views`` views per rotation (a 360 deg fan-beam scan measures each line about
twice, which carries the same photons per line as that many parallel views over 180 deg). The
simulation uses ``num_angles`` views over 180 deg and scales the per-view flux and electronic-noise
variance by ``scanner_views / num_angles``, so the image noise depends on the dose, not on
``num_angles``, which is only a speed/accuracy setting. Noise std scales as ``1/sqrt(b)``.

Dose relative to the scan's own noise, with its texture: ``cdm4mi.simulate.relative_dose``.

The projector (bilinear rotate-and-sum) and FBP (Ram-Lak kernel of Kak & Slaney, optionally
Hann-windowed with a cutoff that sets the noise texture; linear-interpolation back projection) are implemented
here on torch ``grid_sample``; slices of a volume ride along as channels so they share the sampling grids.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

MU_WATER_PER_MM = 0.0192
NOMINAL_INCIDENT_FLUX = 1.5e5  # CoreDiff's normal-dose I0
NOISE_MODELS = ("gaussian", "poisson")
FILTERS = ("ramp", "hann")
_COUNT_FLOOR = 1.0  # photons: the eps of max(y, eps); keeps the log finite where counts are starved
_MAX_CHUNK_ELEMENTS = 1 << 22  # floats per grid_sample output chunk (16 MB), bounds peak memory
_SLICES_PER_BATCH = 4  # slices sharing one sampling grid
CT_FLOOR_HU = -1024.0  # the bottom of the 12-bit CT scale: air is -1000, nothing physical lies lower


def outside_field_of_view(hu: np.ndarray, noise_hu: float = 0.0, floor_hu: float = CT_FLOOR_HU) -> np.ndarray:
    """Voxels more than max(5 x ``noise_hu``, 50 HU) below ``floor_hu``: the padding many scanners store outside the
    reconstructed circle (-2000 or -3024 HU), not air seen through noise. A scanner writes it unchanged at every
    dose, so the simulator adds no noise there and ``cdm4mi denoise`` passes it through."""
    return np.asarray(hu) < floor_hu - max(5.0 * noise_hu, 50.0)


@dataclass(frozen=True)
class ParallelBeamGeometry:
    """Parallel-beam scan of an ``image_shape`` (rows, cols) slice with ``spacing_mm`` (row, col) pixels.

    ``num_angles`` views are spread evenly over [0, 180) deg; detector bins are one pixel (the smaller
    side, in mm) wide and cover the image diagonal.
    """

    image_shape: tuple[int, int]
    spacing_mm: tuple[float, float]
    num_angles: int

    @property
    def bin_mm(self) -> float:
        return min(self.spacing_mm)

    @property
    def num_bins(self) -> int:
        half_y, half_x = self.half_extent_mm()
        return 2 * math.ceil(math.hypot(half_y, half_x) / self.bin_mm) + 1

    def angles(self) -> torch.Tensor:
        return torch.arange(self.num_angles, dtype=torch.float64) * (math.pi / self.num_angles)

    def bins_mm(self) -> torch.Tensor:
        return (torch.arange(self.num_bins, dtype=torch.float64) - (self.num_bins - 1) / 2) * self.bin_mm

    def half_extent_mm(self) -> tuple[float, float]:
        return (0.5 * self.image_shape[0] * self.spacing_mm[0], 0.5 * self.image_shape[1] * self.spacing_mm[1])


def forward_project(mu: torch.Tensor, geometry: ParallelBeamGeometry) -> torch.Tensor:
    """Line integrals (unitless) of attenuation ``mu`` [B, H, W] (1/mm) -> sinogram [B, angles, bins]."""
    num_bins = geometry.num_bins
    bins = geometry.bins_mm()
    half_y, half_x = geometry.half_extent_mm()
    out = mu.new_empty(mu.shape[0], geometry.num_angles, num_bins)
    chunk = min(geometry.num_angles, max(1, _MAX_CHUNK_ELEMENTS // (mu.shape[0] * num_bins * num_bins)))
    grid = mu.new_empty(chunk, num_bins, num_bins, 2)  # reused: filling fresh memory costs as much as sampling
    image = mu[None].expand(chunk, -1, -1, -1)
    t, s = bins[None, None, :], bins[None, :, None]  # one ray along s per detector bin t, step = bin width
    for start in range(0, geometry.num_angles, chunk):
        theta = geometry.angles()[start : start + chunk, None, None]
        cos, sin = torch.cos(theta), torch.sin(theta)
        n = len(theta)
        torch.add((t * cos / half_x).to(mu.dtype), (s * -sin / half_x).to(mu.dtype), out=grid[:n, ..., 0])
        torch.add((t * sin / half_y).to(mu.dtype), (s * cos / half_y).to(mu.dtype), out=grid[:n, ..., 1])
        samples = F.grid_sample(image[:n], grid[:n], mode="bilinear", padding_mode="zeros", align_corners=False)
        out[:, start : start + n] = samples.sum(2).transpose(0, 1) * geometry.bin_mm
    return out


def filter_sinogram(
    sinogram: torch.Tensor, bin_mm: float, filter_name: str = "ramp", kernel_cutoff: float = 1.0
) -> torch.Tensor:
    """Ramp-filter each view of ``sinogram`` [..., bins] (bins ``bin_mm`` apart) -> 1/mm, for FBP.

    ``hann`` multiplies the ramp by a Hann window ``0.5 (1 + cos(pi f / (c f_N)))`` that reaches zero at
    ``c = kernel_cutoff`` times the Nyquist frequency ``f_N`` (and is cut there when c > 1): c = 1 is the
    classic Hann filter, c < 1 a smoother kernel (coarser noise grain), c > 1 a sharper one (towards the
    plain ramp). The cutoff is the one knob of the noise texture (``cdm4mi.simulate.relative_dose``).
    """
    if filter_name not in FILTERS:
        raise ValueError(f"filter_name: unknown '{filter_name}'; choose one of {list(FILTERS)}")
    _validate_cutoff(kernel_cutoff)
    num_bins = sinogram.shape[-1]
    padded = 1 << math.ceil(math.log2(2 * num_bins - 1))  # zero padding stops wrap-around of the kernel
    # Spatial Ram-Lak kernel (Kak & Slaney eq. 3.61): its discrete transform has no DC error.
    n = torch.fft.fftfreq(padded, d=1.0 / padded, dtype=torch.float64)
    kernel = torch.where(n % 2 == 1, -1.0 / (math.pi * n * bin_mm) ** 2, torch.zeros_like(n))
    kernel[0] = 1.0 / (4 * bin_mm**2)
    response = torch.fft.rfft(kernel).real
    if filter_name == "hann":
        nyquists = torch.fft.rfftfreq(padded, dtype=torch.float64) / (0.5 * kernel_cutoff)  # f / (c f_N)
        response = torch.where(nyquists < 1, response * 0.5 * (1 + torch.cos(math.pi * nyquists)), 0.0)
    spectrum = torch.fft.rfft(sinogram, n=padded) * (response * bin_mm).to(sinogram.dtype)
    return torch.fft.irfft(spectrum, n=padded)[..., :num_bins]


def back_project(filtered: torch.Tensor, geometry: ParallelBeamGeometry) -> torch.Tensor:
    """Back-project a filtered sinogram [B, angles, bins] onto the image grid -> [B, H, W], scaled by pi/angles."""
    rows, cols = geometry.image_shape
    batch, num_angles, num_bins = filtered.shape
    y = (torch.arange(rows, dtype=torch.float64) - (rows - 1) / 2) * geometry.spacing_mm[0]
    x = (torch.arange(cols, dtype=torch.float64) - (cols - 1) / 2) * geometry.spacing_mm[1]
    half_detector_mm = 0.5 * num_bins * geometry.bin_mm
    image = filtered.new_zeros(batch, rows * cols)
    chunk = min(num_angles, max(1, _MAX_CHUNK_ELEMENTS // (batch * rows * cols)))
    # Each view is a one-row image sampled at t = x cos + y sin; the row coordinate stays 0, so the
    # bilinear sampler interpolates along t only.
    grid = filtered.new_zeros(chunk, 1, rows * cols, 2)
    for start in range(0, num_angles, chunk):
        theta = geometry.angles()[start : start + chunk, None, None]
        n = len(theta)
        t_y = (y[None, :, None] * torch.sin(theta) / half_detector_mm).to(filtered.dtype)
        t_x = (x[None, None, :] * torch.cos(theta) / half_detector_mm).to(filtered.dtype)
        torch.add(t_y, t_x, out=grid[:n, 0, :, 0].view(n, rows, cols))
        views = filtered[:, start : start + n].transpose(0, 1)[:, :, None, :]  # [n, B, 1, bins]
        samples = F.grid_sample(views, grid[:n], mode="bilinear", padding_mode="zeros", align_corners=False)
        image += samples.sum(0)[:, 0]
    return image.reshape(batch, rows, cols) * (math.pi / num_angles)


def fbp(
    sinogram: torch.Tensor, geometry: ParallelBeamGeometry, filter_name: str = "ramp", kernel_cutoff: float = 1.0
) -> torch.Tensor:
    """Filtered back projection of line integrals [B, angles, bins] -> attenuation [B, H, W] (1/mm)."""
    return back_project(filter_sinogram(sinogram, geometry.bin_mm, filter_name, kernel_cutoff), geometry)


def hu_to_mu(hu: torch.Tensor) -> torch.Tensor:
    """HU -> linear attenuation (1/mm), clipped at 0 (nothing attenuates less than vacuum)."""
    return (MU_WATER_PER_MM * (1 + hu / 1000)).clamp(min=0)


def default_num_angles(image_shape: tuple[int, int]) -> int:
    """Views over 180 deg: 3/4 of the larger side in pixels (384 for 512x512), a multiple of 4.

    Sampling every frequency up to Nyquist across the whole field would take pi/2 views per pixel,
    but only noise is reconstructed here, after the Hann window has removed most power near
    Nyquist: the noise std and noise power spectrum (centre and edge of a 35 cm water cylinder)
    measured with 256, 384, 512 and 2048 views agree within their estimation error (~1% and ~10%),
    and the time grows linearly with the views.
    """
    return 4 * math.ceil(0.75 * max(image_shape) / 4)


def simulate_low_dose_ct(
    hu: np.ndarray,
    pixel_spacing_mm: float | tuple[float, float],
    dose_fraction: float = 0.25,
    incident_flux: float = NOMINAL_INCIDENT_FLUX,
    electronic_noise_var: float = 10.0,
    model: Literal["gaussian", "poisson"] = "gaussian",
    filter_name: Literal["ramp", "hann"] = "hann",
    num_angles: int | None = None,
    scanner_views: int = 1152,
    seed: int | None = None,
    rng: np.random.Generator | None = None,
    kernel_cutoff: float = 1.0,
) -> np.ndarray:
    """Low-dose version of a full-dose CT slice [H, W] or volume [D, H, W] in HU, slice by slice.

    ``pixel_spacing_mm`` is the in-plane (row, col) pixel size in mm (one number for square pixels).
    ``dose_fraction`` k in (0, 1]; ``incident_flux`` full-dose photons per detector bin per view;
    ``electronic_noise_var`` in counts^2; ``kernel_cutoff``: the Hann window's cutoff, the noise texture
    (``filter_sinogram``). Returns float32 HU of the input's shape. Pass ``seed`` or a numpy ``rng`` for
    reproducible noise. Values are not clipped (noise in air can go below -1000); the padding outside the field
    of view (``outside_field_of_view``) keeps its value, as a scanner's low-dose series does.
    """
    image, spacing = validated_image(hu, pixel_spacing_mm)
    validate_physics(
        dose_fraction, incident_flux, electronic_noise_var, model, filter_name, num_angles, scanner_views
    )
    _validate_cutoff(kernel_cutoff)
    if seed is not None and rng is not None:
        raise ValueError("seed, rng: pass at most one of them")
    if model == "gaussian" and dose_fraction == 1.0:
        return image.astype(np.float32, copy=True)  # no extra variance to insert
    rng = rng if rng is not None else np.random.default_rng(seed)

    slices = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).reshape(-1, *image.shape[-2:])
    shape = (slices.shape[-2], slices.shape[-1])
    views = int(num_angles) if num_angles else default_num_angles(shape)
    geometry = ParallelBeamGeometry(shape, spacing, views)
    views_per_angle = scanner_views / geometry.num_angles
    flux = incident_flux * views_per_angle
    electronic_var = electronic_noise_var * views_per_angle
    noisy = torch.empty_like(slices)
    for start in range(0, slices.shape[0], _SLICES_PER_BATCH):
        batch = slices[start : start + _SLICES_PER_BATCH]
        line_integrals = _variance_projection(hu_to_mu(batch), geometry)
        if model == "gaussian":
            var = _extra_log_variance(line_integrals, dose_fraction, flux, electronic_var)
            delta = var.sqrt() * _standard_normal(rng, var.shape)
        else:
            delta = _poisson_log_noise(line_integrals, dose_fraction, flux, electronic_var, rng)
        noise_mu = fbp(delta, geometry, filter_name, kernel_cutoff)
        noisy[start : start + _SLICES_PER_BATCH] = batch + 1000 * noise_mu / MU_WATER_PER_MM
    noisy = noisy.reshape(image.shape).numpy()
    padding = outside_field_of_view(image)
    noisy[padding] = image[padding]
    return noisy


def _extra_log_variance(p: torch.Tensor, k: float, flux: float, electronic_var: float) -> torch.Tensor:
    """Variance of log-sinogram noise that dose fraction k adds to a full-dose scan (Yu et al. 2012)."""
    inv_counts = torch.exp(p) / flux
    return (1 - k) / k * inv_counts * (1 + (1 + k) / k * electronic_var * inv_counts)


def _poisson_log_noise(
    p: torch.Tensor, k: float, flux: float, electronic_var: float, rng: np.random.Generator
) -> torch.Tensor:
    """Low-dose log-sinogram minus the noiseless one, from photon counts (Zeng et al. 2015)."""
    expected = k * flux * torch.exp(-p.double())
    counts = torch.from_numpy(rng.poisson(expected.numpy())).to(p.dtype)
    counts = counts + math.sqrt(electronic_var) * _standard_normal(rng, counts.shape)
    return -torch.log(counts.clamp(min=_COUNT_FLOOR) / (k * flux)) - p


def _standard_normal(rng: np.random.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.from_numpy(rng.standard_normal(tuple(shape), dtype=np.float32))


def _variance_projection(mu: torch.Tensor, geometry: ParallelBeamGeometry) -> torch.Tensor:
    """Line integrals on ``geometry``'s sinogram grid, projected from a 2x coarser image and view set.

    ``p`` only sets each ray's noise statistics (the image itself is never re-projected), and
    ``exp(p)`` moves little over 1-2 mm or half a degree, so the coarse projection costs a quarter of
    the time and changes the noise variance only at sharp edges, where it blurs it by about a pixel.
    """
    rows, cols = geometry.image_shape
    if min(rows, cols) < 128:
        return forward_project(mu, geometry)
    coarse_shape = (math.ceil(rows / 2), math.ceil(cols / 2))
    # adaptive pooling keeps the field of view (and its centre) exactly, also for odd sizes
    coarse = ParallelBeamGeometry(
        coarse_shape,
        (rows * geometry.spacing_mm[0] / coarse_shape[0], cols * geometry.spacing_mm[1] / coarse_shape[1]),
        math.ceil(geometry.num_angles / 2),
    )
    sinogram = forward_project(F.adaptive_avg_pool2d(mu, coarse_shape), coarse)
    # Close the angle period: the view at 180 deg is the one at 0 deg with the detector reversed.
    sinogram = torch.cat((sinogram, sinogram[:, :1].flip(-1)), dim=1)
    half_coarse_mm = 0.5 * (coarse.num_bins - 1) * coarse.bin_mm
    gx = (geometry.bins_mm() / half_coarse_mm)[None, :].expand(geometry.num_angles, -1)
    gy = (geometry.angles() / math.pi * 2 - 1)[:, None].expand(-1, geometry.num_bins)
    grid = torch.stack((gx, gy), dim=-1).to(mu.dtype)[None]
    return F.grid_sample(sinogram[None], grid, mode="bilinear", padding_mode="border", align_corners=True)[0]


def _validate_cutoff(kernel_cutoff: float) -> None:
    if (isinstance(kernel_cutoff, bool) or not isinstance(kernel_cutoff, (int, float))
            or not (math.isfinite(kernel_cutoff) and kernel_cutoff > 0)):
        raise ValueError(f"kernel_cutoff: the Hann window's cutoff in Nyquists, a number > 0, got {kernel_cutoff!r}")


def validated_image(
    hu: np.ndarray, pixel_spacing_mm: float | tuple[float, float]
) -> tuple[np.ndarray, tuple[float, float]]:
    image = np.asarray(hu)
    if image.ndim not in (2, 3):
        raise ValueError(f"hu: expected a 2D slice [H, W] or a volume [D, H, W], got shape {image.shape}")
    if min(image.shape[-2:]) < 2 or image.size == 0:
        raise ValueError(f"hu: each slice needs at least 2x2 pixels, got shape {image.shape}")
    if not np.issubdtype(image.dtype, np.number) or not np.all(np.isfinite(image)):
        raise ValueError("hu: values must be finite numbers (HU)")
    spacing = (pixel_spacing_mm, pixel_spacing_mm) if np.isscalar(pixel_spacing_mm) else tuple(pixel_spacing_mm)
    if len(spacing) != 2 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"pixel_spacing_mm: one or two (row, col) positive sizes in mm, got {pixel_spacing_mm}")
    return image, (float(spacing[0]), float(spacing[1]))


def validate_physics(
    dose_fraction: float,
    incident_flux: float,
    electronic_noise_var: float,
    model: str,
    filter_name: str,
    num_angles: int | None,
    scanner_views: int,
) -> None:
    if not 0 < dose_fraction <= 1:
        raise ValueError(f"dose_fraction: must be in (0, 1], got {dose_fraction}")
    if not (math.isfinite(incident_flux) and incident_flux > 0):
        raise ValueError(f"incident_flux: photons per detector bin per view, must be > 0, got {incident_flux}")
    if not (math.isfinite(electronic_noise_var) and electronic_noise_var >= 0):
        raise ValueError(f"electronic_noise_var: counts^2, must be >= 0, got {electronic_noise_var}")
    if model not in NOISE_MODELS:
        raise ValueError(f"model: unknown '{model}'; choose one of {list(NOISE_MODELS)}")
    if filter_name not in FILTERS:
        raise ValueError(f"filter_name: unknown '{filter_name}'; choose one of {list(FILTERS)}")
    if num_angles is not None and (int(num_angles) != num_angles or num_angles < 2):
        raise ValueError(f"num_angles: an integer >= 2 or None (3/4 view per pixel), got {num_angles}")
    if int(scanner_views) != scanner_views or scanner_views < 1:
        raise ValueError(f"scanner_views: views per rotation, an integer >= 1, got {scanner_views}")
