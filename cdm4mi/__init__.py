"""cdm4mi: conditional diffusion models for medical imaging, on MONAI and PyTorch Lightning.

The Python API (``cdm4mi.inference.scan_denoiser``)::

    import cdm4mi
    model = cdm4mi.load_denoiser("runs/site/checkpoints/last.ckpt", device="auto")
    scan = cdm4mi.load_scan("new_scan/")
    cdm4mi.save_scan(model.denoise(scan), scan, "denoised/")

Its names are imported on first use: ``import cdm4mi`` alone loads no torch, MONAI or Lightning.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cdm4mi")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

_API = {  # name -> the module defining it
    "load_denoiser": "cdm4mi.inference.scan_denoiser",
    "ScanDenoiser": "cdm4mi.inference.scan_denoiser",
    "save_scan": "cdm4mi.inference.scan_denoiser",
    "load_scan": "cdm4mi.io.read",
    "Scan": "cdm4mi.io.read",
    "DenoiseResult": "cdm4mi.inference.denoise",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        value = getattr(import_module(_API[name]), name)
        globals()[name] = value  # looked up once
        return value
    raise AttributeError(f"module 'cdm4mi' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
