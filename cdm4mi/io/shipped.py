"""Real CT slices that ship inside installed Python packages: test data for real-scan benchmarks and the demo.

Nothing is downloaded. pydicom's wheel carries three real CT slices; the ``pydicom-data`` package (pydicom's
larger test files, PyPI) carries three more. Each entry is one patient (scan), with a short anatomical label
chosen here from what the image shows; identifiers in the files are never read or shown.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ShippedScan:
    name: str
    """Short label for tables: anatomy and matrix, e.g. 'head-512'."""
    package: str
    relative_path: str

    def path(self) -> Path | None:
        """Where the file is installed, or None when its package is not installed."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or spec.origin is None:
            return None
        path = Path(spec.origin).parent / self.relative_path
        return path if path.is_file() else None


SHIPPED_CT = (
    ShippedScan("spine-128", "pydicom", "data/test_files/CT_small.dcm"),
    ShippedScan("head-512", "pydicom", "data/test_files/J2K_pixelrep_mismatch.dcm"),  # JPEG 2000 lossless
    ShippedScan("skull-512", "data_store", "data/693_UNCR.dcm"),  # pydicom-data; 693_J2KI.dcm in pydicom: lossy
    ShippedScan("neck-512", "data_store", "data/bad_sequence.dcm"),  # JPEG Lossless (pylibjpeg-libjpeg)
    ShippedScan("brain-enhanced-512", "data_store", "data/eCT_Supplemental.dcm"),  # Enhanced CT, 2 frames
    ShippedScan("abdomen-512", "data_store", "data/explicit_VR-UN.dcm"),  # JPEG 2000 lossless
)
"""One entry per patient (scan); the 693 slice ships twice in pydicom (lossy J2K) and once in pydicom-data
(uncompressed): the uncompressed one is used, and only once, so no patient is in two folds."""


def available_ct(names: tuple[str, ...] | None = None) -> list[tuple[ShippedScan, Path]]:
    """The shipped CT scans whose packages are installed (all, or those ``names``), with their paths."""
    found = [(scan, scan.path()) for scan in SHIPPED_CT if names is None or scan.name in names]
    return [(scan, path) for scan, path in found if path is not None]
