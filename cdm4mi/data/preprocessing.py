"""How a scan model sees a scan: the one contract between training and inference.

The paired-scans data set writes its ``ScanPreprocessing`` into the checkpoint (``preprocessing_state``, with the
fitted normalization recipe), and ``cdm4mi denoise`` / ``evaluate`` read it back, so inference never re-derives the
preprocessing from config keys with defaults of its own. Checkpoints written before the contract existed carry
only modality and normalization: the rest is read from their ``data`` config section as training read it.
``slab_indices`` is the one builder of 2.5D slabs (a slice with its neighbours), for training and inference alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cdm4mi.data.normalize import HUWindow, Normalization, normalization_from_dict

MODES = ("2d", "2.5d", "3d")
DEFAULT_3D_PATCH = (32, 64, 64)  # paired_scans' 3D default when data.patch_size is not set


@dataclass(frozen=True)
class ScanPreprocessing:
    """What a scan model was trained on, in plain JSON types (``to_dict`` / ``from_dict``)."""

    task: str = "denoise"
    modality: str | None = None
    normalization: dict[str, Any] | None = None  # ``Normalization.to_dict()`` without fitted statistics
    mode: str = "2d"  # '2d' slices, '2.5d' slices with neighbours, '3d' patches
    context_slices: int = 1  # neighbours on each side ('2.5d')
    patch_size: tuple[int, ...] | None = None  # training crop; the sliding window of '3d' inference
    spacing_mm: tuple[float, ...] | None = None  # voxel size the model works at (None: the scan's own)
    metadata: tuple[str, ...] = ()  # fields of the metadata vector (cdm4mi.data.metadata)
    noise_estimator: str = "wavelet"  # how an input's noise level is estimated

    @property
    def context(self) -> int:
        """Neighbour slices on each side that condition a slice (0 unless '2.5d')."""
        return self.context_slices if self.mode == "2.5d" else 0

    @property
    def window(self) -> tuple[int, ...]:
        """The 3D sliding window: the training patch, or the data set's default."""
        return tuple(self.patch_size or DEFAULT_3D_PATCH)

    def normalizer(self) -> Normalization:
        """The normalization settings (unfitted: ``.fit(volume)`` on each input)."""
        return normalization_from_dict(self.normalization) if self.normalization else HUWindow()

    def to_dict(self) -> dict[str, Any]:
        state = dataclasses.asdict(self)
        return {key: list(value) if isinstance(value, tuple) else value for key, value in state.items()}

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> ScanPreprocessing:
        known = {field.name for field in dataclasses.fields(cls)}
        values = {key: value for key, value in state.items() if key in known}
        for key in ("patch_size", "spacing_mm", "metadata"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        return cls(**values)

    @classmethod
    def of_model(cls, data: Mapping[str, Any], state: Mapping[str, Any] | None) -> ScanPreprocessing:
        """The contract of a checkpoint: its stored state, completed from its ``data`` config section when the
        checkpoint predates the contract (no ``mode`` stored)."""
        state = dict(state or {})
        if "mode" not in state:
            state.update({key: data[key] for key in ("mode", "context_slices", "patch_size", "spacing_mm",
                                                     "noise_estimator") if data.get(key) is not None})
            state["metadata"] = tuple(data.get("metadata") or ())
            state.setdefault("normalization", data.get("normalization"))
            state["task"] = "denoise" if data.get("name") == "paired_scans" else "generate"
        return cls.from_dict(state)


def slab_indices(depth: int, context: int, slices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """[n, 2 context + 1] slice indices: each of ``slices`` (default: every slice) with ``context`` neighbours on
    each side, edges replicated."""
    centre = np.arange(depth) if slices is None else np.asarray(slices)
    return np.clip(centre[:, None] + np.arange(-context, context + 1)[None], 0, depth - 1)
