"""Invertible intensity normalization: a CT HU window, and MRI percentile or z-score scaling.

Each normalization is an affine map from scanner units to model units, ``u = (x - offset) / scale``, so
``inverse`` is exact up to float rounding; only clipping (the CT window, the optional percentile clip)
loses information. MRI statistics belong to one volume: ``fit`` measures them and ``to_dict`` stores them
with the settings, so a checkpoint or a results file can rebuild the exact inverse with ``from_dict``.
All methods take numpy arrays or torch tensors and return the same type.

``IntensityNormalized`` wraps any of them as a MONAI dictionary transform whose ``inverse`` (or
``monai.transforms.Invertd``) undoes what it did to each item.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, ClassVar

import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import get_track_meta
from monai.transforms import InvertibleTransform, MapTransform
from monai.transforms.utils_pytorch_numpy_unification import clip, percentile
from monai.utils import TraceKeys, TransformBackends, convert_to_tensor


class _Normalization:
    """Shared settings round trip; subclasses are frozen dataclasses with a ``name``."""

    name: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        """Settings and fitted statistics as plain numbers, for a checkpoint or config."""
        return {"name": self.name, **asdict(self)}

    @classmethod
    def from_dict(cls, params: Mapping[str, Any]):
        """Rebuild from ``to_dict()`` output; unknown keys are an error, missing ones take defaults."""
        params = dict(params)
        name = params.pop("name", cls.name)
        if name != cls.name:
            raise ValueError(f"{cls.__name__}.from_dict got name {name!r}, expected {cls.name!r}")
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - allowed)
        if unknown:
            raise ValueError(f"unknown {cls.name} normalization options {unknown}; allowed: {sorted(allowed)}")
        return cls(**params)


@dataclass(frozen=True)
class HUWindow(_Normalization):
    """CT: clip to ``[hu_min, hu_max]`` HU, then ``u = (HU - center_hu) / scale_hu``.

    Defaults: window [-1024, 3071] HU (air to dense bone/metal, the 12-bit CT range), center 0 HU, scale
    500 HU, so water is 0, air -2.05 and the window top 6.14 units. Quarter-dose noise of 20-60 HU is then
    0.04-0.12 units; squeezing the whole window into [-1, 1] (scale 2047.5) would make it 0.01-0.03, which
    a regression U-Net barely learned from on CPU while HU/500 trained well (NOTES.md). Clipping is the only
    lossy step: ``inverse(forward(hu)) == hu`` inside the window; ``inverse`` itself does not clip.
    """

    hu_min: float = -1024.0
    hu_max: float = 3071.0
    center_hu: float = 0.0
    scale_hu: float = 500.0
    name: ClassVar[str] = "hu_window"

    def __post_init__(self) -> None:
        if not all(math.isfinite(v) for v in (self.hu_min, self.hu_max, self.center_hu, self.scale_hu)):
            raise ValueError("hu_min, hu_max, center_hu and scale_hu must be finite numbers")
        if self.hu_min >= self.hu_max:
            raise ValueError(f"hu_min must be below hu_max, got [{self.hu_min}, {self.hu_max}] HU")
        if self.scale_hu <= 0:
            raise ValueError(f"scale_hu must be positive (HU per model unit), got {self.scale_hu}")

    def fit(self, hu: NdarrayOrTensor) -> HUWindow:
        """A fixed window has no per-volume statistics."""
        return self

    def forward(self, hu: NdarrayOrTensor) -> NdarrayOrTensor:
        """HU -> model units."""
        return (clip(hu, self.hu_min, self.hu_max) - self.center_hu) / self.scale_hu

    def inverse(self, units: NdarrayOrTensor) -> NdarrayOrTensor:
        """Model units -> HU (values outside the window stay outside it)."""
        return units * self.scale_hu + self.center_hu

    def noise_in_units(self, noise_hu: float) -> float:
        """Standard deviation in model units of noise of ``noise_hu`` HU."""
        return noise_hu / self.scale_hu


@dataclass(frozen=True)
class PercentileScaling(_Normalization):
    """MRI: ``u = (x - low) / (high - low)`` with low/high this volume's lower/upper percentiles.

    Most voxels land in [0, 1]; ``clip=True`` clips u to [0, 1] (lossy outside it, e.g. for spikes).
    ``nonzero=True`` takes the percentiles over nonzero voxels only, so a large zero background does not
    pull them down. ``low``/``high`` (scanner units) are set by ``fit``.
    """

    lower_percentile: float = 0.5
    upper_percentile: float = 99.5
    nonzero: bool = False
    clip: bool = False
    low: float | None = None
    high: float | None = None
    name: ClassVar[str] = "percentile"

    def __post_init__(self) -> None:
        if not 0.0 <= self.lower_percentile < self.upper_percentile <= 100.0:
            raise ValueError("need 0 <= lower_percentile < upper_percentile <= 100, got "
                             f"{self.lower_percentile}, {self.upper_percentile}")
        if (self.low is None) != (self.high is None) or (self.low is not None and not self.low < self.high):
            raise ValueError(f"fitted low/high must both be set with low < high, got {self.low}, {self.high}")

    def fit(self, image: NdarrayOrTensor) -> PercentileScaling:
        """A copy holding this image's percentiles."""
        values = _voxels(image, self.nonzero)
        low = float(percentile(values, self.lower_percentile))
        high = float(percentile(values, self.upper_percentile))
        if not low < high:
            raise ValueError(f"percentiles {self.lower_percentile}/{self.upper_percentile} are equal ({low}): "
                             "the image is (nearly) constant")
        return replace(self, low=low, high=high)

    def forward(self, image: NdarrayOrTensor) -> NdarrayOrTensor:
        """Scanner units -> model units (about [0, 1])."""
        _require_fitted(self, self.low)
        units = (image - self.low) / (self.high - self.low)
        return clip(units, 0.0, 1.0) if self.clip else units

    def inverse(self, units: NdarrayOrTensor) -> NdarrayOrTensor:
        """Model units -> scanner units."""
        _require_fitted(self, self.low)
        return units * (self.high - self.low) + self.low


@dataclass(frozen=True)
class ZScore(_Normalization):
    """MRI: ``u = (x - mean) / std`` over this volume (nonzero voxels only with ``nonzero=True``)."""

    nonzero: bool = False
    mean: float | None = None
    std: float | None = None
    name: ClassVar[str] = "zscore"

    def __post_init__(self) -> None:
        if (self.mean is None) != (self.std is None) or (self.std is not None and not self.std > 0):
            raise ValueError(f"fitted mean/std must both be set with std > 0, got {self.mean}, {self.std}")

    def fit(self, image: NdarrayOrTensor) -> ZScore:
        """A copy holding this image's mean and standard deviation."""
        values = convert_to_tensor(_voxels(image, self.nonzero), track_meta=False).double()
        mean, std = float(values.mean()), float(values.std(correction=0))
        if not std > 0:
            raise ValueError("cannot z-score a constant image (standard deviation 0)")
        return replace(self, mean=mean, std=std)

    def forward(self, image: NdarrayOrTensor) -> NdarrayOrTensor:
        """Scanner units -> model units (zero mean, unit variance)."""
        _require_fitted(self, self.mean)
        return (image - self.mean) / self.std

    def inverse(self, units: NdarrayOrTensor) -> NdarrayOrTensor:
        """Model units -> scanner units."""
        _require_fitted(self, self.mean)
        return units * self.std + self.mean


Normalization = HUWindow | PercentileScaling | ZScore
NORMALIZATIONS: dict[str, type[_Normalization]] = {cls.name: cls for cls in (HUWindow, PercentileScaling, ZScore)}


def normalization_from_dict(params: Mapping[str, Any]) -> Normalization:
    """Rebuild any normalization from its ``to_dict()`` output (dispatching on ``name``)."""
    name = params.get("name")
    if name not in NORMALIZATIONS:
        raise ValueError(f"normalization name must be one of {sorted(NORMALIZATIONS)}, got {name!r}")
    return NORMALIZATIONS[name].from_dict(params)


class IntensityNormalized(MapTransform, InvertibleTransform):
    """MONAI dictionary transform applying a normalization to ``keys``, invertibly.

    Each item gets the normalization fitted on ``stats_key``'s image if given, else on its own image.
    For denoising pairs pass the noisy (conditioning) key as ``stats_key``: at inference only it exists,
    so training must scale the clean target with the noisy image's statistics too. The fitted parameters
    travel in each MetaTensor's applied operations, which is what ``inverse`` and ``Invertd`` read.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, keys: KeysCollection, normalization: Normalization, stats_key: Hashable | None = None,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if not isinstance(normalization, tuple(NORMALIZATIONS.values())):
            raise ValueError(f"normalization must be one of {[c.__name__ for c in NORMALIZATIONS.values()]}, "
                             f"got {type(normalization).__name__}")
        self.normalization = normalization
        self.stats_key = stats_key

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        shared = self.normalization.fit(d[self.stats_key]) if self.stats_key is not None else None
        for key in self.key_iterator(d):
            image = convert_to_tensor(d[key], track_meta=get_track_meta())
            fitted = shared or self.normalization.fit(image)
            d[key] = fitted.forward(image)
            self.push_transform(d[key], extra_info={"normalization": fitted.to_dict()})
        return d

    def inverse(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            applied = self.pop_transform(d[key])
            d[key] = normalization_from_dict(applied[TraceKeys.EXTRA_INFO]["normalization"]).inverse(d[key])
        return d


def _voxels(image: NdarrayOrTensor, nonzero: bool) -> NdarrayOrTensor:
    values = image[image != 0] if nonzero else image
    if (values.numel() if isinstance(values, torch.Tensor) else values.size) > 0:
        return values
    raise ValueError("no voxels to measure: the image is empty or, with nonzero=True, all zero")


def _require_fitted(normalization: _Normalization, statistic: float | None) -> None:
    if statistic is None:
        raise ValueError(f"{normalization.name} normalization has no statistics yet: call fit(image) first, "
                         "or rebuild it with normalization_from_dict() from a fitted to_dict()")
