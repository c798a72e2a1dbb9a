"""PNG figures a person would rather look at than read: the one way they are written."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cdm4mi.atomic import atomic_output  # noqa: E402


def save_png(figure: plt.Figure, path: str | Path, overwrite: bool) -> Path:
    """Write ``figure`` as a PNG atomically (refusing an existing file unless ``overwrite``) and close it."""
    try:
        with atomic_output(path, overwrite=overwrite) as temporary:
            figure.savefig(temporary, dpi=110, format="png")
    finally:
        plt.close(figure)
    return Path(path)
