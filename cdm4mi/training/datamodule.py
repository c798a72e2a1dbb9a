"""The one DataModule: any registered data set, split into train / val by the data set itself."""

from __future__ import annotations

from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from cdm4mi.data.registry import build_dataset, validate_dataset_options


class DiffusionDataModule(L.LightningDataModule):
    def __init__(self, data: dict[str, Any], batch_size: int, num_workers: int = 0, validate: bool = True):
        super().__init__()
        self.name = data["name"]
        self.options = {key: value for key, value in data.items() if key != "name"}
        validate_dataset_options(self.name, **self.options)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.validate = validate

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train_set"):  # already built (fit() builds early so bad data fails before any output)
            return
        self.train_set = build_dataset(self.name, "train", **self.options)
        self.val_set = build_dataset(self.name, "val", **self.options) if self.validate else None

    def data_state(self) -> dict[str, Any] | None:
        """What the training set fitted (e.g. genes and scaling of an expression matrix), if anything;
        stored with the model so its samples map back to the data's units."""
        state = getattr(self.train_set, "preprocessing_state", None)
        return state() if callable(state) else None

    def _loader(self, dataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            drop_last=shuffle and len(dataset) > self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return [] if self.val_set is None else self._loader(self.val_set, shuffle=False)
