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
    blocker = next((parent for parent in path.absolute().parents if parent.exists() and not parent.is_dir()), None)
    if blocker is not None:
        raise ValueError(f"{option}: {path} cannot be written: {blocker} is a file, not a folder")
    return path


def refuse_input_overlap(input_path: str | Path, output: str | Path, option: str = "--output") -> None:
    """Refuse an output that is the input, lies inside it, or is a folder holding it: replacing such an
    output (``--overwrite``) would delete the input."""
    # realpath, unlike Path.resolve, does not raise on a loop of symbolic links (the reader reports those)
    source, target = Path(os.path.realpath(input_path)), Path(os.path.realpath(output))
    if target == source or source in target.parents or target in source.parents:
        raise ValueError(f"{option}: {output} is, holds or lies inside the input {input_path}; "
                         "cdm4mi never writes over its input")


@contextlib.contextmanager
def staged_folder(folder: str | Path, overwrite: bool = False, option: str = "--out") -> Iterator[Path]:
    """Yield an empty temporary folder for results that belong in ``folder``; on success each of its entries
    moves into ``folder`` (created then), replacing an entry of that name only with ``overwrite``.

    The temporary folder lies in the nearest existing folder above ``folder``, so a failed run (any exception)
    leaves no trace: not even an empty ``folder`` or a parent of it.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{option}: {folder} is a file, not a folder")
    check_writable(folder, overwrite=True, option=option)  # no file where a parent folder must go
    anchor = next(parent for parent in folder.absolute().parents if parent.is_dir())
    stage = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=anchor))
    try:
        yield stage
        entries = sorted(stage.iterdir())
        for entry in entries:
            check_writable(folder / entry.name, overwrite, option)
        folder.mkdir(parents=True, exist_ok=True)
        for entry in entries:
            destination = folder / entry.name
            if destination.is_dir() and not destination.is_symlink():
                shutil.rmtree(destination)
            os.replace(entry, destination)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


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
