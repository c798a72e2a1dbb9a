"""Atomic file output: write to a temporary sibling, then rename, so no reader ever sees half a file."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def check_writable(path: str | Path, overwrite: bool = False, option: str = "--out") -> Path:
    """Refuse an existing output unless ``overwrite``; returns ``path`` as a Path."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{option}: {path} already exists (pass --overwrite to replace it)")
    return path


def refuse_input_overlap(input_path: str | Path, output: str | Path, option: str = "--output") -> None:
    """Refuse an output that is the input, lies inside it, or is a folder holding it: replacing such an
    output (``--overwrite``) would delete the input."""
    source, target = Path(input_path).resolve(), Path(output).resolve()
    if target == source or source in target.parents or target in source.parents:
        raise ValueError(f"{option}: {output} is, holds or lies inside the input {input_path}; "
                         "cdm4mi never writes over its input")


@contextlib.contextmanager
def atomic_output(path: str | Path, overwrite: bool = False, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``.

    On any exception the temporary file or folder is removed and ``path`` is left untouched.
    """
    path = check_writable(path, overwrite, option=str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = temporary if directory else temporary / path.name
    try:
        yield target
        if directory:  # mkdtemp makes 0700; an output folder gets the usual umask-based mode
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(target, 0o777 & ~umask)
        if path.is_dir() and directory:
            shutil.rmtree(path)
        os.replace(target, path)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
