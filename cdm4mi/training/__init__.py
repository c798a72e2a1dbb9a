"""Training: the one LightningModule and DataModule that serve every backbone and data shape."""

from cdm4mi.training.datamodule import DiffusionDataModule
from cdm4mi.training.module import DiffusionModule

__all__ = ["DiffusionDataModule", "DiffusionModule"]
