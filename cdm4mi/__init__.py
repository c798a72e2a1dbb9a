"""cdm4mi: conditional diffusion models for medical imaging, on MONAI and PyTorch Lightning."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cdm4mi")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
