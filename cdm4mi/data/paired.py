"""Paired low-dose / full-dose scans of a manifest as 2D slices, 2.5D slabs or 3D patches (``paired_scans``).

Each patient's input (noisy) and target (reference) scans are read once with ``load_scan`` into the
canonical ``[D, H, W]`` layout, checked to share shape and affine, and normalized with the same
normalization: fitted on the input volume, because at inference only the input exists. The normalized
volumes are kept by a MONAI ``CacheDataset`` (``cache='memory'``), so each file is read once.

Items are dicts: ``x0`` (the target, model units) and ``cond`` (the input):

* ``2d``: ``x0 [1, H, W]``, ``cond [1, H, W]``; every slice of every patient is an item.
* ``2.5d``: as 2d but ``cond [2c+1, H, W]``: slices ``k-c .. k+c`` in order (the slice itself in the
  middle channel ``c``), with the edge slice repeated beyond the volume; ``c = context_slices``.
* ``3d``: ``x0 [1, d, h, w]``, ``cond [1, d, h, w]``; ``patches_per_volume`` random patches per patient
  per epoch for training; for val/test a deterministic grid of patches covering each volume (the last
  patch of an axis ends at the volume's edge, so neighbours may overlap); without ``patch_size`` whole
  volumes, one item per patient.

With ``metadata`` (a list of fields of ``cdm4mi.data.metadata``, e.g. ``[dose_fraction, noise_level, kvp]``),
``cond`` is a dict instead, in every mode: ``{"image": <the conditioning image above>, "vector": float32
[2 * len(metadata)]}``, the patient's metadata encoded once when its volumes are loaded: values from the
manifest entry's ``metadata`` first, then the input scan's DICOM tags, then (``noise_level``) the noise std
estimated on the normalized input volume. The network's ``vector_dim`` must be ``2 * len(metadata)``.

2d/2.5d items also carry ``patient_id`` (pseudonym, str) and ``slice_index`` (int); 3d items carry
``patient_id`` and ``patch_start`` (int64 ``[3]``, voxels). Training crops (``patch_size``) use MONAI
``RandSpatialCropd``, seeded by ``seed`` and reseeded in each DataLoader worker from torch's worker seed;
val/test slices are never cropped. Training items under ``dose_augmentation`` carry ``input_noise_std``: the
known noise std (model units) of their simulated input, NaN for a real low-dose input (what the objective's
``warm_start_share`` builds warm-start states from).
"""

from __future__ import annotations

import contextlib
import math
import zlib
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import numpy as np
import torch
from monai.data import CacheDataset, get_track_meta, set_track_meta
from monai.data import Dataset as MonaiDataset
from monai.transforms import Compose, RandFlipd, RandRotate90d, RandSpatialCropd, Transform
from monai.utils import convert_to_tensor
from torch.utils.data import Dataset, get_worker_info

from cdm4mi.cohort.discover import check_pair
from cdm4mi.cohort.manifest import Manifest, load_manifest
from cdm4mi.data.dose_augmentation import DoseAugmentation, build_noise_bank, noise_scale
from cdm4mi.data.metadata import check_fields, encode_metadata, resolve_metadata
from cdm4mi.data.normalize import HUWindow, Normalization, normalization_from_dict
from cdm4mi.data.preprocessing import MODES, ScanPreprocessing, slab_indices
from cdm4mi.data.registry import DATASETS
from cdm4mi.io.read import load_scan, resample_to
from cdm4mi.simulate.noise_estimate import NOISE_ESTIMATORS, estimate_input_noise, units_per_hu

_FITTED_KEYS = {"low", "high", "mean", "std"}


@DATASETS.register("paired_scans")
def paired_scans(
    split: str,
    manifest: str,
    root: str | None = None,
    mode: Literal["2d", "2.5d", "3d"] = "2d",
    context_slices: int = 1,
    patch_size: list[int] | None = None,
    patches_per_volume: int = 16,
    normalization: dict | None = None,
    cache: Literal["memory", "none"] = "memory",
    seed: int = 0,
    spacing_mm: list[float] | None = None,
    metadata: list[str] | None = None,
    metadata_dropout: float = 0.0,
    patches_per_slice: int = 1,
    augment: bool = False,
    dose_augmentation: dict | None = None,
    noise_estimator: Literal["wavelet", "ct_flat_regions"] = "wavelet",
) -> PairedScans:
    """The patients of ``split`` in ``manifest`` (see ``cdm4mi.cohort.manifest``) as denoising pairs.

    Args:
        manifest: manifest JSON file; ``root``: data root replacing the manifest's.
        mode: '2d' slices, '2.5d' slices with ``context_slices`` neighbours each side as extra
            ``cond`` channels, or '3d' patches.
        patch_size: training crop in voxels, ``[h, w]`` for 2d/2.5d, ``[d, h, w]`` for 3d; also the
            val/test grid patch in 3d. None: whole slices / volumes.
        patches_per_volume: random 3D patches per patient per training epoch.
        normalization: a ``to_dict()`` recipe such as ``{"name": "hu_window", "scale_hu": 500}`` or
            ``{"name": "zscore", "nonzero": true}``; statistics are fitted on each input volume. Default
            ``HUWindow()`` for CT; required for other modalities.
        cache: 'memory' keeps every normalized volume (8 bytes per voxel pair); 'none' reads volumes
            again when needed (keeping the last one), slow with shuffling.
        seed: seed of the training crops.
        spacing_mm: resample both scans to this voxel size ``[d, h, w]`` mm first (MONAI ``Spacing``);
            ``cdm4mi denoise`` then resamples its input the same way and its output back.
        metadata: fields of ``cdm4mi.data.metadata`` to encode into ``cond["vector"]`` (module docstring);
            ``cdm4mi denoise`` builds the same vector for its input.
        metadata_dropout: while training, each field of each item is marked missing (encoded ``(0, 0)``)
            with this probability, so the model also learns to denoise scans whose dose or tags are unknown.
        patches_per_slice: 2d/2.5d training: random crops per slice per epoch (each slice is listed this many
            times), so a cohort of few slices still fills its batches with distinct patches.
        augment: training items are flipped along each in-plane axis and rotated by multiples of 90 deg
            (MONAI ``RandFlipd``/``RandRotate90d``; rotations only for square patches; 3d flips all axes).
        dose_augmentation: CT only: ``{dose_range: [low, high], realizations, probability, val_dose}``; each
            training item's input is the target plus projection-domain noise of a dose drawn in the range,
            relative to the scan's own noise (``cdm4mi.data.dose_augmentation``). Patients without a
            low-dose input (full-dose-only manifests) train this way; in val/test they get one fixed
            simulated input at ``val_dose``. With ``noise_level`` in ``metadata`` each item carries its own
            input noise level, and with ``dose_fraction`` its drawn dose.
        noise_estimator: how the ``noise_level`` of a scan is estimated (here and by ``cdm4mi denoise``):
            'wavelet' (white-noise wavelet MAD, reads low on CT noise) or 'ct_flat_regions' (std in the
            flattest soft-tissue windows, right for FBP-correlated CT noise).
    """
    if context_slices < 1:
        raise ValueError(f"data.context_slices: must be >= 1, got {context_slices}")
    if patches_per_volume < 1:
        raise ValueError(f"data.patches_per_volume: must be >= 1, got {patches_per_volume}")
    dims = 3 if mode == "3d" else 2
    if patch_size is not None and (len(patch_size) != dims or min(patch_size) < 1):
        raise ValueError(f"data.patch_size: mode {mode} needs {dims} positive sizes "
                         f"({'[d, h, w]' if dims == 3 else '[h, w]'} voxels), got {patch_size}")
    if spacing_mm is not None and (len(spacing_mm) != 3 or min(spacing_mm) <= 0):
        raise ValueError(f"data.spacing_mm: need 3 positive voxel sizes [d, h, w] in mm, got {spacing_mm}")
    if not 0.0 <= metadata_dropout <= 1.0:
        raise ValueError(f"data.metadata_dropout: must lie in [0, 1], got {metadata_dropout}")
    if patches_per_slice < 1:
        raise ValueError(f"data.patches_per_slice: must be >= 1, got {patches_per_slice}")
    augmentation = DoseAugmentation.from_options(dose_augmentation)
    loaded = load_manifest(manifest, root=root)
    if augmentation is not None and loaded.modality != "CT":
        raise ValueError(f"data.dose_augmentation: simulates CT dose; the manifest's modality is {loaded.modality}")
    return PairedScans(loaded, split, mode, context_slices, patch_size, patches_per_volume,
                       recipe(normalization, loaded.modality), cache, seed, spacing_mm, metadata, metadata_dropout,
                       patches_per_slice, augment, augmentation, noise_estimator)


def recipe(normalization: Mapping[str, Any] | None, modality: str) -> Normalization:
    """The normalization settings (unfitted) for a ``normalization`` option and the manifest's modality."""
    if normalization is None:
        if modality != "CT":
            raise ValueError(f"data.normalization: required for modality {modality}, e.g. {{name: percentile}} or "
                             "{name: zscore, nonzero: true}; only CT has a default (hu_window)")
        return HUWindow()
    fitted = sorted(_FITTED_KEYS & set(normalization))
    if fitted:
        raise ValueError(f"data.normalization: give the settings without statistics ({', '.join(fitted)}); "
                         "they are fitted on each input volume")
    try:
        return normalization_from_dict(normalization)
    except (ValueError, TypeError) as err:
        raise ValueError(f"data.normalization: {err}") from None




class LoadNormalizedPair(Transform):
    """A manifest record ``{patient_id, input, target, modality, metadata}`` -> both volumes in model units.

    Output: ``input``/``target`` float32 ``[D, H, W]``, ``affine`` (RAS mm), ``normalization`` (the
    fitted settings as ``to_dict()``), ``patient_id``; with ``metadata`` fields also ``vector`` (float32
    ``[2 * len(metadata)]``, ``cdm4mi.data.metadata``) and ``metadata_values`` (the values before encoding).
    With ``augmentation`` also ``noise_bank`` (train: ``NoiseBank``) and ``has_input``; a record without an
    input (full-dose only) gets ``input`` = the target plus simulated noise at the validation dose.
    """

    def __init__(self, normalization: Normalization, where: str, spacing_mm: list[float] | None = None,
                 metadata: tuple[str, ...] | None = None, augmentation: DoseAugmentation | None = None,
                 train: bool = False, seed: int = 0, noise_estimator: str = "wavelet") -> None:
        self.normalization = normalization
        self.where = where
        self.spacing_mm = spacing_mm
        self.metadata = metadata
        self.augmentation, self.train, self.seed = augmentation, train, seed
        self.noise_estimator = noise_estimator

    def __call__(self, record: Mapping[str, Any]) -> dict[str, Any]:
        target = load_scan(record["target"], modality=record["modality"])
        has_input = record["input"] is not None
        patient = f"{self.where}: patient {record['patient_id']}"
        if not has_input and self.augmentation is None:
            raise ValueError(f"{patient}: no low-dose input (full-dose only); train it with "
                             "data.dose_augmentation, or simulate an input with `cdm4mi simulate`")
        scan_input = load_scan(record["input"], modality=record["modality"]) if has_input else None
        if self.spacing_mm is not None:
            target = resample_to(target, self.spacing_mm)
            scan_input = None if scan_input is None else resample_to(scan_input, self.spacing_mm)
        if scan_input is not None:
            check_pair(scan_input, target, patient)
        bank = None
        if self.augmentation is not None and (self.train or not has_input):
            # One seed per patient, whatever order the cache loads them in.
            seed = self.seed + zlib.crc32(record["patient_id"].encode())
            bank = build_noise_bank(target.array, target.spacing_mm[1:],
                                    self.augmentation.realizations if self.train else 1, seed)
        input_hu = scan_input.array if scan_input is not None else \
            target.array + bank.noise[0] * noise_scale(self.augmentation.validation_dose)
        fitted = self.normalization.fit(input_hu)
        loaded = {
            "patient_id": record["patient_id"],
            "input": np.asarray(fitted.forward(input_hu), dtype=np.float32),
            "target": np.asarray(fitted.forward(target.array), dtype=np.float32),
            "affine": target.affine,
            "normalization": fitted.to_dict(),
            "has_input": has_input,
        }
        if bank is not None and self.train:
            loaded["noise_bank"] = bank
        if self.metadata:
            reference = (scan_input if scan_input is not None else target).dicom_reference
            given = dict(record.get("metadata") or {})
            if not has_input:  # the simulated input's dose and noise are known
                given.setdefault("dose_fraction", self.augmentation.validation_dose)
                given.setdefault("noise_level", bank.input_noise_hu(self.augmentation.validation_dose)
                                 * units_per_hu(fitted))
            values, _ = resolve_metadata(self.metadata, given, None if reference is None else reference.header,
                                         lambda: estimate_input_noise(loaded["input"], fitted, self.noise_estimator),
                                         f"{patient}: metadata")
            loaded["metadata_values"] = values
            loaded["vector"] = encode_metadata(self.metadata, values)
        return loaded


class PairedScans(Dataset):
    """Denoising pairs of one split; see the module docstring for the item layout."""

    def __init__(self, manifest: Manifest, split: str, mode: str = "2d", context_slices: int = 1,
                 patch_size: list[int] | None = None, patches_per_volume: int = 16,
                 normalization: Normalization | None = None, cache: str = "memory", seed: int = 0,
                 spacing_mm: list[float] | None = None, metadata: list[str] | None = None,
                 metadata_dropout: float = 0.0, patches_per_slice: int = 1, augment: bool = False,
                 dose_augmentation: DoseAugmentation | None = None, noise_estimator: str = "wavelet") -> None:
        if mode not in MODES:
            raise ValueError(f"data.mode: unknown '{mode}'; choose one of {list(MODES)}")
        if cache not in ("memory", "none"):
            raise ValueError(f"data.cache: unknown '{cache}'; choose 'memory' or 'none'")
        entries = manifest.patients_in(split)
        if not entries:
            raise ValueError(f"{manifest.path}: no patients in split '{split}'")
        self.manifest, self.split, self.mode = manifest, split, mode
        self.context_slices, self.patch_size, self.seed = context_slices, patch_size, seed
        self.spacing_mm = spacing_mm
        self.normalization = normalization or recipe(None, manifest.modality)
        """The settings every volume was normalized with (statistics, if any, fitted per input volume:
        ``volume_normalization``); inference fits the same on its input and inverts with it."""
        self.metadata = None if metadata is None else check_fields(metadata, "data.metadata")
        """Metadata fields encoded into ``cond["vector"]``, or None: ``cond`` is the image alone."""
        self.metadata_dropout = metadata_dropout if split == "train" else 0.0
        if noise_estimator not in NOISE_ESTIMATORS:
            raise ValueError(f"data.noise_estimator: unknown '{noise_estimator}'; choose one of {list(NOISE_ESTIMATORS)}")
        self.noise_estimator = noise_estimator
        self.dose_augmentation = dose_augmentation
        self.patient_ids = [entry.patient_id for entry in entries]
        records = [{"patient_id": e.patient_id, "input": None if e.input is None else str(manifest.input_path(e)),
                    "target": str(manifest.target_path(e)), "modality": e.modality, "metadata": dict(e.metadata)}
                   for e in entries]
        loader = LoadNormalizedPair(self.normalization, str(manifest.path or "manifest"), spacing_mm, self.metadata,
                                    dose_augmentation, split == "train", seed, noise_estimator)
        with _original_errors():
            if cache == "memory":
                # copy_cache=False: items are copied out of the cache, never changed in it.
                self._volumes = CacheDataset(records, Compose([loader]), cache_rate=1.0, num_workers=1,
                                             progress=False, copy_cache=False)
            else:
                self._volumes = MonaiDataset(records, loader)
            shapes = [self._volume(v)["input"].shape for v in range(len(records))]
        self._check_patch_size(shapes)
        self._index = self._build_index(shapes, patches_per_volume, patches_per_slice if split == "train" else 1)
        self._crop = self._training_transform(augment) if split == "train" else None
        if self._crop is not None:
            self._crop.set_random_state(seed)
        self._crop_worker: tuple[int, int] | None = None

    def _training_transform(self, augment: bool) -> Compose | None:
        """Random crop (``patch_size``), then flips and 90-degree rotations (``augment``), on the same keys."""
        keys = ("x0", "cond", "clean", "noise") if self.dose_augmentation is not None else ("x0", "cond")
        transforms: list[Transform] = []
        if self.patch_size is not None:
            transforms.append(RandSpatialCropd(keys=keys, roi_size=self.patch_size, random_size=False))
        if augment:
            dims = 3 if self.mode == "3d" else 2
            transforms += [RandFlipd(keys=keys, prob=0.5, spatial_axis=axis) for axis in range(dims)]
            if self.patch_size is not None and self.patch_size[-1] == self.patch_size[-2]:
                transforms.append(RandRotate90d(keys=keys, prob=0.75, max_k=3, spatial_axes=(dims - 2, dims - 1)))
        return Compose(transforms) if transforms else None

    def __len__(self) -> int:
        return len(self._index)

    def preprocessing_state(self) -> dict[str, Any]:
        """Kept with the model (checkpoint): how it sees a scan (``ScanPreprocessing``), which inference follows."""
        return ScanPreprocessing(
            task="denoise", modality=self.manifest.modality, normalization=self.normalization.to_dict(),
            mode=self.mode, context_slices=self.context_slices,
            patch_size=None if self.patch_size is None else tuple(self.patch_size),
            spacing_mm=None if self.spacing_mm is None else tuple(self.spacing_mm),
            metadata=tuple(self.metadata or ()), noise_estimator=self.noise_estimator,
        ).to_dict()

    def __getitem__(self, index: int) -> dict[str, Any]:
        volume_index, *where = (int(i) for i in self._index[index])
        volume = self._volume(volume_index)
        if self.mode == "3d":
            item = self._patch(volume, where)
        else:
            item = self._slice(volume, where[0])
        dose = self._simulated_dose(volume)
        if dose is not None:  # the target laid out like cond (2.5d: with its neighbours), and the noise
            item["clean"] = self._like_cond(volume["target"], where)
            item["noise"] = self._like_cond(volume["noise_bank"].noise[int(torch.randint(self._realizations, ()))],
                                            where)
        if self._crop is not None:
            keys = [key for key in ("x0", "cond", "clean", "noise") if key in item]
            item.update(self._random_crop({key: item[key] for key in keys}))
            item.pop("patch_start", None)  # a random patch has no fixed place
        if dose is not None:
            item["cond"] = self._simulated_input(volume, item.pop("clean"), item.pop("noise"), dose)
        # Items never share memory with the cached volumes, so changing one cannot change the cache.
        item["x0"], item["cond"] = (item[key].clone(memory_format=torch.contiguous_format) for key in ("x0", "cond"))
        noise_level = None if dose is None else volume["noise_bank"].input_noise_hu(dose) * self._units_per_hu(volume)
        if "noise_bank" in volume:  # the input's known noise std (model units), NaN for a real low-dose input
            item["input_noise_std"] = torch.tensor(math.nan if noise_level is None else noise_level)
        if self.metadata:
            vector = volume["vector"]
            if dose is not None:  # this item's own dose and input noise
                vector = encode_metadata(self.metadata, {**volume["metadata_values"], "dose_fraction": dose,
                                                         "noise_level": noise_level})
            item["cond"] = {"image": item["cond"], "vector": self._vector(vector)}
        return item

    @property
    def _realizations(self) -> int:
        return self.dose_augmentation.realizations

    def _simulated_dose(self, volume: Mapping[str, Any]) -> float | None:
        """The dose this training item is simulated at, or None for the real low-dose input."""
        if "noise_bank" not in volume:
            return None
        if volume["has_input"] and float(torch.rand(())) >= self.dose_augmentation.probability:
            return None
        return self.dose_augmentation.draw_dose()

    def _like_cond(self, volume: np.ndarray, where: list[int]) -> torch.Tensor:
        """A ``[D, H, W]`` array cut like an item's ``cond``: a slice (2.5d: with neighbours) or a 3d patch."""
        as_input = {"input": volume, "target": volume, "patient_id": ""}
        return self._patch(as_input, where)["cond"] if self.mode == "3d" else self._slice(as_input, where[0])["cond"]

    def _simulated_input(self, volume: Mapping[str, Any], clean: torch.Tensor, noise_hu: torch.Tensor,
                         dose: float) -> torch.Tensor:
        """Clean target (model units) plus the bank's noise (HU) scaled to ``dose``, in model units."""
        fitted = self._fitted(volume)
        noisy_hu = np.asarray(fitted.inverse(clean.numpy())) + noise_scale(dose) * noise_hu.numpy()
        return torch.as_tensor(np.asarray(fitted.forward(noisy_hu), dtype=np.float32))

    def _fitted(self, volume: Mapping[str, Any]) -> Normalization:
        key = volume["patient_id"]
        cache = self.__dict__.setdefault("_fitted_cache", {})
        if key not in cache:
            cache[key] = normalization_from_dict(volume["normalization"])
        return cache[key]

    def _units_per_hu(self, volume: Mapping[str, Any]) -> float:
        return units_per_hu(self._fitted(volume))

    def _vector(self, encoded: np.ndarray) -> torch.Tensor:
        """The encoded metadata of an item, with fields dropped to missing at ``metadata_dropout`` (train)."""
        vector = torch.tensor(encoded, dtype=torch.float32)
        if self.metadata_dropout > 0:
            # DataLoader workers seed torch's generator each, so draws differ across workers.
            dropped = torch.rand(len(vector) // 2) < self.metadata_dropout
            vector = vector.view(-1, 2).masked_fill(dropped[:, None], 0.0).flatten()
        return vector

    def volume(self, patient_id: str) -> dict[str, Any]:
        """One patient's normalized ``input``/``target`` ``[D, H, W]``, ``affine``, fitted normalization and,
        with ``metadata``, the encoded ``vector``."""
        if patient_id not in self.patient_ids:
            raise ValueError(f"patient {patient_id} is not in split '{self.split}'")
        cached = self._volume(self.patient_ids.index(patient_id))
        copied = {key: cached[key].copy() for key in ("input", "target", "vector") if key in cached}
        return {**cached, **copied, "normalization": normalization_from_dict(cached["normalization"])}

    def volume_normalization(self, patient_id: str) -> Normalization:
        """The normalization fitted on this patient's input: ``inverse`` maps model units back to HU."""
        return self.volume(patient_id)["normalization"]

    def _volume(self, index: int) -> dict[str, Any]:
        if isinstance(self._volumes, CacheDataset):
            with _original_errors():
                return self._volumes[index]
        if getattr(self, "_last", (None,))[0] != index:  # cache='none': keep the last volume only
            with _original_errors():
                self._last = (index, self._volumes[index])
        return self._last[1]

    def _slice(self, volume: Mapping[str, Any], k: int) -> dict[str, Any]:
        context = self.context_slices if self.mode == "2.5d" else 0
        neighbours = slab_indices(volume["input"].shape[0], context, [k])[0]
        return {
            "x0": torch.from_numpy(volume["target"][k:k + 1]),
            "cond": torch.from_numpy(volume["input"][neighbours]),
            "patient_id": volume["patient_id"],
            "slice_index": k,
        }

    def _patch(self, volume: Mapping[str, Any], start: list[int]) -> dict[str, Any]:
        if self._crop is not None or self.patch_size is None:  # the random crop places training patches
            window = (slice(None),) * 3
        else:
            window = tuple(slice(s, s + n) for s, n in zip(start, self.patch_size, strict=True))
        return {
            "x0": torch.from_numpy(volume["target"][window][None]),  # views: copied once cropped
            "cond": torch.from_numpy(volume["input"][window][None]),
            "patient_id": volume["patient_id"],
            "patch_start": torch.tensor(start, dtype=torch.int64),
        }

    def _random_crop(self, pair: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        worker = get_worker_info()
        key = None if worker is None else (worker.id, worker.seed)
        if key != self._crop_worker:  # DataLoader workers start with copies of one random state
            self._crop.set_random_state((self.seed + worker.seed) % 2**32)
            self._crop_worker = key
        # Crops need no meta data, and MONAI's tracking of it (MetaTensor, transform stack) is most of their cost:
        # 3.7 ms with it, 1.0 ms without, per 64x64 crop, flips and turn of four 512x512 arrays (same crops)
        tracking = get_track_meta()
        set_track_meta(False)
        try:
            cropped = self._crop(pair)
        finally:
            set_track_meta(tracking)
        return {key: convert_to_tensor(cropped[key], track_meta=False) for key in pair}

    def _check_patch_size(self, shapes: list[tuple[int, ...]]) -> None:
        if self.patch_size is None:
            return
        for patient, shape in zip(self.patient_ids, shapes, strict=True):
            spatial = shape if self.mode == "3d" else shape[1:]
            if any(p > s for p, s in zip(self.patch_size, spatial, strict=True)):
                raise ValueError(f"data.patch_size: {list(self.patch_size)} is larger than the "
                                 f"{'volume' if self.mode == '3d' else 'slices'} of patient {patient} "
                                 f"({list(spatial)} voxels)")

    def _build_index(self, shapes: list[tuple[int, ...]], patches_per_volume: int,
                     patches_per_slice: int = 1) -> np.ndarray:
        """Rows (volume, slice) for 2d/2.5d, each slice ``patches_per_slice`` times; (volume, d, h, w start) for 3d."""
        rows: list[tuple[int, ...]] = []
        for v, shape in enumerate(shapes):
            if self.mode != "3d":
                rows.extend((v, k) for k in range(shape[0]) for _ in range(patches_per_slice))
            elif self.patch_size is None:
                rows.append((v, 0, 0, 0))
            elif self.split == "train":
                rows.extend((v, 0, 0, 0) for _ in range(patches_per_volume))  # placed by the random crop
            else:
                grid = [_grid_starts(s, p) for s, p in zip(shape, self.patch_size, strict=True)]
                rows.extend((v, d, h, w) for d in grid[0] for h in grid[1] for w in grid[2])
        return np.asarray(rows, dtype=np.int64)


def _grid_starts(size: int, patch: int) -> list[int]:
    """Starts of ``ceil(size / patch)`` patches covering ``[0, size)``, evenly spread, the last at the edge."""
    count = math.ceil(size / patch)
    if count == 1:
        return [0]
    return [round(i * (size - patch) / (count - 1)) for i in range(count)]




@contextlib.contextmanager
def _original_errors() -> Iterator[None]:
    """Re-raise what a transform raised: MONAI wraps it in RuntimeError('applying transform ...'), which
    would turn a user's one-line error into a traceback."""
    try:
        yield
    except RuntimeError as error:
        cause: BaseException = error
        while isinstance(cause, RuntimeError) and str(cause).startswith("applying transform") and cause.__cause__:
            cause = cause.__cause__
        if cause is error:
            raise
        raise cause from None
