"""Synthetic axial CT volumes (HU) of the upper abdomen / lung bases, for demos and tests.

Each seed is a different patient: body size, fat thickness, position, organ sizes and shapes, the
craniocaudal level of the slab, and the vessel trees differ. Anatomy at the T11-L1 level, patient
supine, radiological convention (patient's right on the image left, anterior at the top):

==========================  =================  ==============================================
structure                   HU                 notes
==========================  =================  ==============================================
air                         -1000
skin / subcutaneous fat     ~ +20 / ~ -100     fat 8-30 mm thick
muscle wall, paraspinal     ~ 50               psoas appears towards the kidneys
visceral fat                ~ -90
lung bases                  ~ -850             denser posteriorly (gravity), vessels to ~ +40
liver / spleen / kidneys    ~ 60 / ~ 45 / ~ 30 contrast-filled vessels 150-200 in the liver
aorta / IVC / portal vein   ~ 185 / ~ 150 / ~ 165
stomach                     ~ 15 fluid         with an anterior air-fluid level
ribs, vertebrae             ~ 800 cortex,      discs (~ 85) every ~ 30 mm along z
                            ~ 250 trabecular
==========================  =================  ==============================================

Structure changes slowly along z (lungs give way to liver dome, kidneys and psoas appear, ribs
and discs move). Correlated texture (std 7-12 HU in soft tissue and fat, 25-40 HU in lung and bone)
sits on every tissue so that a denoiser cannot erase the image into flat regions, and edges carry a
~0.6 mm (sigma) blur like a scanner's point spread. Anatomy is laid out in mm: the same seed gives
the same anatomy (not the same texture grain) at any matrix size; with the default spacing the field
of view is 380 mm whatever H, W are. Not modelled: the patient table, arms, beam hardening.
"""

from __future__ import annotations

import numpy as np
from scipy import fft, ndimage

FIELD_OF_VIEW_MM = 380.0
DEFAULT_SLICE_MM = 2.5
_SLAB_MM = 180.0  # anatomy is defined from the liver dome (0) to below the liver tip (180)
_EDGE_BLUR_MM = 0.6


def make_ct_phantom(
    shape: tuple[int, int, int] = (16, 128, 128),
    spacing_mm: tuple[float, float, float] | None = None,
    seed: int | None = None,
) -> np.ndarray:
    """Synthetic patient volume [D, H, W] in HU (float32).

    ``spacing_mm`` is (z, y, x) in mm; by default ``(2.5, 380/H, 380/W)``, a 380 mm field of view.
    """
    if len(shape) != 3 or any(int(n) != n or n < 1 for n in shape) or min(shape[1:]) < 8:
        raise ValueError(f"shape: expected (D, H, W) with D >= 1 and H, W >= 8 voxels, got {shape}")
    depth, rows, cols = (int(n) for n in shape)
    if spacing_mm is None:
        spacing_mm = (DEFAULT_SLICE_MM, FIELD_OF_VIEW_MM / rows, FIELD_OF_VIEW_MM / cols)
    if len(spacing_mm) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing_mm):
        raise ValueError(f"spacing_mm: expected three positive (z, y, x) sizes in mm, got {spacing_mm}")
    rng = np.random.default_rng(seed)
    patient = _draw_patient(rng)
    dz, dy, dx = (float(s) for s in spacing_mm)
    z = (patient["z0"] + dz * np.arange(depth, dtype=np.float32))[:, None, None]
    y = ((np.arange(rows, dtype=np.float32) - (rows - 1) / 2) * dy)[None, :, None]
    x = ((np.arange(cols, dtype=np.float32) - (cols - 1) / 2) * dx)[None, None, :]
    canvas = _Canvas((depth, rows, cols))
    masks = _paint_anatomy(canvas, patient, z, y, x)
    sigma = (0.0, max(0.5, _EDGE_BLUR_MM / dy), max(0.5, _EDGE_BLUR_MM / dx))
    hu = ndimage.gaussian_filter(canvas.hu, sigma, mode="nearest")
    # Vessels brighten their organ up to a ceiling and never add onto neighbouring (blurred) bone.
    trees = (("lung", 500, (0.6, 2.2), 900.0, 50.0), ("liver", 25, (1.5, 3.5), 110.0, 200.0))
    for organ, count, radius_mm, contrast_hu, ceiling_hu in trees:
        vessels = _vessels(rng, masks[organ], z, y, x, count, radius_mm, contrast_hu, (dy, dx))
        hu = np.maximum(hu, np.minimum(hu + vessels, ceiling_hu))
    fine = _correlated_noise(rng, (depth, rows, cols), (dz, dy, dx), correlation_mm=0.8)
    coarse = _correlated_noise(rng, (depth, rows, cols), (dz, dy, dx), correlation_mm=3.0)
    hu += canvas.texture * (0.6 * fine + 0.8 * coarse)
    return hu.astype(np.float32)


class _Canvas:
    """HU and texture-amplitude volumes painted in order, later structures over earlier ones."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        self.hu = np.full(shape, -1000.0, dtype=np.float32)
        self.texture = np.zeros(shape, dtype=np.float32)

    def paint(self, mask: np.ndarray, hu: float | np.ndarray, texture_hu: float) -> None:
        mask = np.broadcast_to(mask, self.hu.shape)
        self.hu[mask] = np.broadcast_to(hu, self.hu.shape)[mask]
        self.texture[mask] = texture_hu


def _radius(y, x, centre, axes, angle_deg: float = 0.0, power: float = 2.0) -> np.ndarray:
    """Normalised superellipse radius (< 1 inside) of points (y, x) in mm; centre, axes (y, x) in mm."""
    dy, dx = y - centre[0], x - centre[1]
    a = np.deg2rad(angle_deg)
    u = (dx * np.cos(a) + dy * np.sin(a)) / axes[1]
    v = (-dx * np.sin(a) + dy * np.cos(a)) / axes[0]
    if power == 2:  # the common case, without the slow general power
        return np.sqrt(u * u + v * v)
    return (np.abs(u) ** power + np.abs(v) ** power) ** (1 / power)


def _bump(z, start: float, length: float) -> np.ndarray:
    """0 outside [start, start + length] mm, rising to 1 in the middle: organ size along z."""
    return np.sqrt(np.clip(np.sin(np.pi * (z - start) / length), 0, 1) * ((z > start) & (z < start + length)))


def _draw_patient(rng: np.random.Generator) -> dict:
    """Patient-specific sizes (mm), positions (mm), levels along z (mm) and tissue HU."""
    def u(low: float, high: float, size=None):  # Python floats / float32, so grids stay float32
        value = rng.uniform(low, high, size)
        return float(value) if size is None else value.astype(np.float32)

    return {
        "z0": u(-30, 0.5 * _SLAB_MM), "body_axes": (u(95, 125), u(135, 170)), "body_power": u(2.0, 2.6),
        "body_centre": (u(-5, 15), u(-10, 10)), "body_angle": u(-3, 3), "fat_mm": u(8, 30), "muscle_mm": u(8, 14),
        "lung_end": u(70, 115), "liver_end": u(170, 230), "liver_scale": u(0.85, 1.15), "spleen_start": u(-10, 40),
        "spleen_scale": u(0.8, 1.2), "kidney_start": u(60, 100), "kidney_scale": u(0.85, 1.15),
        "stomach_scale": u(0.7, 1.2), "disc_phase": u(0, 32), "disc_pitch": u(28, 34),
        "rib_angles": np.sort(u(-15, 15, 7) + np.linspace(35, 150, 7)).tolist(), "rib_drift": u(-0.25, -0.1),
        "liver_hu": u(55, 65), "spleen_hu": u(42, 50), "kidney_hu": u(28, 36), "muscle_hu": u(45, 58),
        "fat_hu": u(-110, -90), "bowel": u(0, 1, (5, 6)).tolist(), "lung_hu": u(-880, -840), "aorta_hu": u(170, 200),
    }


def _paint_anatomy(canvas: _Canvas, p: dict, z, y, x) -> dict[str, np.ndarray]:
    """Paint tissues onto ``canvas``; returns the lung and liver masks that receive vessel trees."""
    cy, cx = p["body_centre"]
    by, bx = p["body_axes"]
    body = _radius(y, x, (cy, cx), (by, bx), p["body_angle"], p["body_power"])
    canvas.paint(body < 1, 25.0, 8.0)  # skin
    canvas.paint(_radius(y, x, (cy, cx), (by - 2, bx - 2), p["body_angle"], p["body_power"]) < 1, p["fat_hu"], 12.0)
    wall_y, wall_x = by - p["fat_mm"], bx - p["fat_mm"]
    canvas.paint(_radius(y, x, (cy, cx), (wall_y, wall_x), p["body_angle"], 2.2) < 1, p["muscle_hu"], 8.0)
    ay, ax = wall_y - p["muscle_mm"], wall_x - p["muscle_mm"]  # visceral cavity
    cavity = _radius(y, x, (cy, cx), (ay, ax), p["body_angle"], 2.2) < 1
    canvas.paint(cavity, p["fat_hu"] + 10, 12.0)
    _paint_bowel(canvas, p, z, y, x, (cy, cx), (ay, ax))

    spine_y = cy + ay - 38  # vertebral body centre, just inside the posterior cavity wall
    liver_size = p["liver_scale"] * np.sqrt(np.clip((p["liver_end"] - z) / 90, 0.05, 1))
    liver = cavity & (
        (_radius(y, x, (cy - 0.05 * ay, cx - 0.38 * ax), (0.75 * ay * liver_size, 0.55 * ax * liver_size), -20) < 1)
        | (_radius(y, x, (cy - 0.55 * ay, cx + 0.05 * ax), (0.28 * ay * liver_size, 0.38 * ax * liver_size), 10) < 1)
    )
    canvas.paint(liver, p["liver_hu"], 7.0)
    canvas.paint(_radius(y, x, (cy - 0.05 * ay, cx - 0.2 * ax), (8, 9)) < 1, 165.0, 6.0)  # portal vein
    stomach_size = p["stomach_scale"] * np.sqrt(np.clip(1 - z / 150, 0, 1))
    stomach_centre = (cy - 0.3 * ay, cx + 0.35 * ax)
    stomach_axes = (0.32 * ay * stomach_size + 1e-3, 0.3 * ax * stomach_size + 1e-3)
    stomach = _radius(y, x, stomach_centre, stomach_axes, 15)
    canvas.paint(stomach < 1, 40.0, 6.0)  # wall
    lumen = stomach < 1 - 4 / np.maximum(stomach_axes[0], 4.1)
    canvas.paint(lumen, 15.0, 4.0)
    canvas.paint(lumen & (y < stomach_centre[0] - 0.45 * stomach_axes[0]), -1000.0, 0.0)  # air rises anteriorly
    spleen_size = p["spleen_scale"] * _bump(z, p["spleen_start"], 130) + 1e-3
    spleen = _radius(y, x, (cy + 0.3 * ay, cx + 0.68 * ax), (0.42 * ay * spleen_size, 0.16 * ax * spleen_size), 40)
    canvas.paint(cavity & (spleen < 1), p["spleen_hu"], 7.0)
    for side, delay in ((-1, 15.0), (1, 0.0)):  # the right kidney (image left) sits lower
        size = p["kidney_scale"] * _bump(z, p["kidney_start"] + delay, 110) + 1e-3
        centre = (spine_y + 5, cx + side * 60)
        canvas.paint(_radius(y, x, centre, (38 * size, 28 * size), side * 30) < 1, p["kidney_hu"], 7.0)
        sinus = _radius(y, x, (centre[0] - 4, centre[1] - side * 12), (14 * size, 8 * size), side * 30)
        canvas.paint(sinus < 1, -80.0, 10.0)  # renal sinus fat

    # The diaphragm dome widens downwards and pushes the lung bases to the posterior-lateral rim.
    dome_size = 0.55 + 0.6 * np.clip(z / p["lung_end"], 0, 1)
    dome = _radius(y, x, (cy - 0.25 * ay, cx), (ay, ax), p["body_angle"]) < dome_size
    lung = cavity & ~dome & ~(_radius(y, x, (spine_y - 5, cx), (35, 40)) < 1)
    depth_gradient = 60 * np.clip((y - cy) / (2 * ay) + 0.5, 0, 1)  # dependent lung is denser
    canvas.paint(lung, p["lung_hu"] + depth_gradient, 25.0)
    heart_size = np.sqrt(np.clip((20 - z) / 40, 0, 1)) + 1e-3  # the heart rests on the dome
    heart = _radius(y, x, (cy - 0.4 * ay, cx + 0.12 * ax), (0.5 * ay * heart_size, 0.42 * ax * heart_size), -25)
    canvas.paint(cavity & (heart < 1), p["muscle_hu"] - 5, 7.0)  # myocardium
    canvas.paint(cavity & (heart < 0.7), 140.0, 6.0)  # contrast-filled chambers

    psoas = np.clip((z - 100) / 80, 0.2, 1)
    for side in (-1, 1):
        canvas.paint(_radius(y, x, (spine_y + 5, cx + side * 32), (12 * psoas, 14 * psoas)) < 1, p["muscle_hu"], 8.0)
        canvas.paint(_radius(y, x, (spine_y + 48, cx + side * 30), (22, 24)) < 1, p["muscle_hu"], 8.0)  # erector spinae
    canvas.paint(_radius(y, x, (spine_y - 32, cx + 18), (12, 12)) < 1, p["aorta_hu"], 6.0)
    canvas.paint(_radius(y, x, (spine_y - 30, cx - 24), (10, 13)) < 1, 150.0, 6.0)  # inferior vena cava
    _paint_spine(canvas, p, z, y, x, (spine_y, cx))
    _paint_ribs(canvas, p, z, y, x, (cy, cx), (ay + 0.5 * p["muscle_mm"], ax + 0.5 * p["muscle_mm"]))
    return {"lung": np.broadcast_to(lung, canvas.hu.shape), "liver": np.broadcast_to(liver, canvas.hu.shape)}


def _paint_bowel(canvas: _Canvas, p: dict, z, y, x, centre, axes) -> None:
    """Bowel loops in the anterior cavity: 3 mm wall, content air, fluid or stool; they wander along z."""
    for pos_y, pos_x, size, content, wander, phase in p["bowel"]:
        loop_y = centre[0] + axes[0] * (-0.6 + 0.7 * pos_y) + 10 * np.sin(z / 40 + 6 * phase)
        loop_x = centre[1] + axes[1] * (-0.6 + 1.2 * pos_x) + 10 * np.cos(z / 40 + 6 * wander)
        radius = 9 + 10 * size
        loop = _radius(y, x, (loop_y, loop_x), (radius, radius * (0.8 + 0.4 * wander)))
        hu, texture = (-1000.0, 0.0) if content < 0.3 else (20.0, 5.0) if content < 0.6 else (-250.0, 60.0)
        canvas.paint(loop < 1, 40.0, 6.0)
        canvas.paint(loop < 1 - 3 / radius, hu, texture)


def _paint_spine(canvas: _Canvas, p: dict, z, y, x, centre: tuple[float, float]) -> None:
    sy, sx = centre
    disc = ((z - p["disc_phase"]) % p["disc_pitch"]) < 8
    canvas.paint(_radius(y, x, (sy, sx), (17, 20)) < 1, 800.0, 30.0)  # cortex
    marrow = _radius(y, x, (sy, sx), (15, 18)) < 1
    canvas.paint(marrow, np.where(disc, 85.0, 240.0), 40.0)
    canvas.paint(_radius(y, x, (sy + 26, sx), (10, 12), power=2.5) < 1, 650.0, 30.0)  # laminae and pedicles
    canvas.paint(_radius(y, x, (sy + 45, sx), (16, 4)) < 1, 600.0, 30.0)  # spinous process
    canvas.paint(_radius(y, x, (sy + 25, sx), (7, 8)) < 1, 15.0, 5.0)  # spinal canal (CSF)


def _paint_ribs(canvas: _Canvas, p: dict, z, y, x, centre, axes) -> None:
    """Rib cross-sections on the cavity wall; they slide along it with z and stop at the costal margin."""
    for side in (-1, 1):
        for index, angle in enumerate(p["rib_angles"]):
            phi = np.deg2rad(angle + p["rib_drift"] * z)  # angle from anterior, per mm of z
            ry, rx = centre[0] - axes[0] * np.cos(phi), centre[1] + side * axes[1] * np.sin(phi)
            present = z < 150 - 25 * (len(p["rib_angles"]) - index)  # anterior ribs end higher
            tangent = side * (90 - np.rad2deg(phi))
            rib = _radius(y, x, (ry, rx), (5, 9), tangent)
            canvas.paint(present & (rib < 1), 850.0, 30.0)
            canvas.paint(present & (rib < 0.65), 260.0, 40.0)


def _vessels(rng, mask, z, y, x, count: int, radius_mm: tuple[float, float], contrast_hu: float, spacing) -> np.ndarray:
    """HU added by ``count`` straight tubes running roughly along z, kept where ``mask`` is true.

    Each tube has a Gaussian cross-section of sigma drawn from ``radius_mm`` and peaks at ``contrast_hu``.
    """
    depth, rows, cols = mask.shape
    field = np.zeros(mask.shape, dtype=np.float32)
    half_field = FIELD_OF_VIEW_MM / 2  # fixed in mm, so vessels do not move with the matrix size
    start = rng.uniform(-half_field, half_field, (count, 2))
    slope = rng.uniform(-0.6, 0.6, (count, 2))  # mm in-plane per mm along z
    radius = rng.uniform(*radius_mm, count)
    for r_lo, r_hi in ((radius_mm[0], np.mean(radius_mm)), (np.mean(radius_mm), radius_mm[1] + 1e-9)):
        pick = (radius >= r_lo) & (radius < r_hi)
        if not pick.any():
            continue
        points = start[pick][None] + slope[pick][None] * z.reshape(-1, 1, 1)  # [D, n, 2] mm
        row = np.rint(points[..., 0] / spacing[0] + (rows - 1) / 2).astype(int)
        col = np.rint(points[..., 1] / spacing[1] + (cols - 1) / 2).astype(int)
        inside = (row >= 0) & (row < rows) & (col >= 0) & (col < cols)
        sigma = np.array([np.mean(radius[pick]) / s for s in spacing])
        slab = np.broadcast_to(np.arange(depth)[:, None], row.shape)
        deltas = np.zeros(mask.shape, dtype=np.float32)
        np.add.at(deltas, (slab[inside], row[inside], col[inside]), 1.0)
        # A blurred unit impulse peaks at 1/(2 pi sy sx): rescale so each vessel peaks at contrast_hu.
        peak = 2 * np.pi * max(sigma[0], 0.4) * max(sigma[1], 0.4)
        field += ndimage.gaussian_filter(deltas, (0, *sigma)) * (peak * contrast_hu)
    return np.where(mask, np.minimum(field, contrast_hu), 0).astype(np.float32)


def _correlated_noise(rng, shape: tuple[int, int, int], spacing_mm, correlation_mm: float) -> np.ndarray:
    """Gaussian random field with unit std and a Gaussian autocorrelation of ``correlation_mm`` (sigma)."""
    white = rng.standard_normal(shape, dtype=np.float32)
    spectrum = fft.rfftn(white, workers=-1)
    for axis, (n, step) in enumerate(zip(shape, spacing_mm)):
        freq = fft.rfftfreq(n, d=step) if axis == len(shape) - 1 else fft.fftfreq(n, d=step)
        gain = np.exp(-2 * (np.pi * freq * correlation_mm) ** 2).astype(np.float32)
        spectrum *= gain.reshape([-1 if a == axis else 1 for a in range(len(shape))])
    field = fft.irfftn(spectrum, s=shape, workers=-1)
    return (field / max(float(field.std()), 1e-12)).astype(np.float32)
