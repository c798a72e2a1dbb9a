"""Optional dependencies (``pip install 'cdm4mi[bio]'``, ``'cdm4mi[deid]'``): imported where they are used, so the
medical path installs and runs without them; a missing one is a ``MissingExtra`` that says in one line what to install
(``cdm4mi`` reports it with exit status 2, like any input it cannot use)."""

from __future__ import annotations

import importlib
from types import ModuleType

EXTRAS = {  # module -> (the package that provides it, the extra that installs it)
    "anndata": ("anndata", "bio"),
    "pandas": ("pandas", "bio"),
    "sklearn": ("scikit-learn", "bio"),
    "dicognito": ("dicognito", "deid"),
}


class MissingExtra(ImportError):
    """An optional dependency that a requested feature needs is not installed."""


def require(module: str, purpose: str) -> ModuleType:
    """``import module`` (a key of ``EXTRAS``, or a submodule of one), or a ``MissingExtra`` naming ``purpose``, the
    package and the extra: ``data.name 'anndata' (.h5ad files): needs anndata, which is not installed; pip install
    'cdm4mi[bio]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        top = module.partition(".")[0]
        if error.name is not None and error.name.partition(".")[0] != top:
            raise  # the package is there but broken (one of its own imports failed): not a missing extra
        package, extra = EXTRAS[top]
        raise MissingExtra(f"{purpose}: needs {package}, which is not installed; pip install 'cdm4mi[{extra}]'") from None
