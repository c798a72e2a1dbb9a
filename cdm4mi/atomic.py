"""Atomic file output: write to a temporary sibling, then rename, so no reader ever sees half a file.

The final rename never replaces what another process put at the target meanwhile (``rename_noreplace``),
and a folder a run writes into carries a record of the entries it wrote (``RECORD``), so ``--overwrite``
removes those and never a user's own files.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

RECORD = ".cdm4mi-run.json"
"""In a folder cdm4mi writes into: the names of the entries cdm4mi wrote there."""
_RECORD_FORMAT = "cdm4mi-run/1"
_AT_FDCWD, _RENAME_NOREPLACE = -100, 1  # from <fcntl.h> and <linux/fs.h>
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _load_renameat2():
    """libc's renameat2 (Linux, glibc >= 2.28), or None where the C library has none."""
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_renameat2 = _load_renameat2()


def rename_noreplace(source: str | Path, target: str | Path) -> None:
    """Rename ``source`` (a file or folder) to ``target`` in one step that fails with FileExistsError if
    ``target`` exists, even if it appeared a moment ago: ``os.replace`` would silently replace it."""
    if _renameat2 is not None:
        if _renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):  # else: this file system lacks the flag
            raise OSError(code, os.strerror(code), str(source), None, str(target))
    if Path(source).is_dir() and not Path(source).is_symlink():
        # os.rename replaces an existing empty folder on POSIX; a non-empty one makes it fail. The check
        # leaves a window of microseconds, the best that portable calls allow.
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target))
        os.rename(source, target)
        return
    os.link(source, target, follow_symlinks=False)  # a hard link fails if the target exists
    os.unlink(source)


def check_writable(path: str | Path, overwrite: bool = False, option: str = "--output") -> Path:
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


def refuse_output_inside(output: str | Path, inputs: Iterable[str | Path], option: str, what: str) -> None:
    """Refuse an output that is one of ``inputs`` or lies inside one (``what`` names them, e.g. 'the data root'):
    results written among a patient's scans would be read back as data, or mistaken for it.

    An output folder may hold inputs here: commands that call this write named entries into their folder
    and never replace it as a whole (``refuse_input_overlap`` is for outputs that are replaced whole).
    """
    target = Path(os.path.realpath(output))
    for input_path in inputs:
        source = Path(os.path.realpath(input_path))
        if target == source or source in target.parents:
            raise ValueError(f"{option}: {output} is or lies inside {what} {input_path}; "
                             "cdm4mi never writes into what it reads")


def recorded(folder: str | Path) -> set[str]:
    """The entry names cdm4mi recorded writing into ``folder``; none without a readable record."""
    try:
        content = json.loads((Path(folder) / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    entries = content.get("entries") if isinstance(content, dict) and content.get("format") == _RECORD_FORMAT else None
    if not isinstance(entries, list):
        return set()
    # a name that is a path (a forged or damaged record) must never lead --overwrite out of the folder
    return {name for name in entries if isinstance(name, str) and name not in ("", ".", "..")
            and "/" not in name and os.sep not in name}


def record_written(folder: str | Path, names: Iterable[str], keep: bool = True) -> None:
    """Record ``names`` as entries cdm4mi wrote into ``folder``, beside those recorded before (``keep``)."""
    entries = sorted((recorded(folder) if keep else set()) | set(names))
    with atomic_output(Path(folder) / RECORD, overwrite=True) as temporary:
        temporary.write_text(json.dumps({"format": _RECORD_FORMAT, "entries": entries}, indent=1) + "\n")


def refuse_foreign(folder: str | Path, names: Iterable[str], option: str) -> None:
    """Refuse to go on if any of ``names`` exists in ``folder`` but cdm4mi did not record writing it."""
    folder, own = Path(folder), recorded(folder)
    foreign = [name + "/" * (folder / name).is_dir() for name in names
               if os.path.lexists(folder / name) and name not in own]
    if foreign:
        raise ValueError(f"{option}: {folder} holds files cdm4mi did not write ({', '.join(foreign)}); "
                         f"remove them yourself or choose another {option}")


def remove_recorded(folder: str | Path, names: Iterable[str]) -> None:
    """Delete those of ``names`` that cdm4mi recorded writing into ``folder``; every other entry stays."""
    own = recorded(folder)
    for name in names:
        if name in own:
            _remove(Path(folder) / name)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def _move_into(source: Path, destination: Path, overwrite: bool, option: str | None) -> None:
    """Rename ``source`` to ``destination``; an entry there is replaced only with ``overwrite``, even one that
    appeared after the run checked (another run writing the same output)."""
    if overwrite:
        if os.path.lexists(destination) and (source.is_dir() or (destination.is_dir() and not destination.is_symlink())):
            _remove(destination)  # a rename cannot replace a folder, nor put a folder over a file
        os.replace(source, destination)
        return
    try:
        rename_noreplace(source, destination)
    except FileExistsError:
        where = f"{option}: " if option else ""
        raise FileExistsError(f"{where}{destination} appeared while this run was writing it (another run?); "
                              "nothing was replaced") from None


@contextlib.contextmanager
def staged_folder(folder: str | Path, overwrite: bool = False, option: str = "--output") -> Iterator[Path]:
    """Yield an empty temporary folder for results that belong in ``folder``; on success each of its entries
    moves into ``folder`` (created then), replacing an entry of that name only with ``overwrite``, and a
    folder only if cdm4mi recorded writing it (``RECORD``, updated with the entries moved in).

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
        try:
            yield stage
        except OSError as error:
            if error.errno in _DISK_FULL:  # named after the output, not the temporary folder it happened in
                raise OSError(error.errno, f"{option} {folder}: {error.strerror}; nothing was written") from error
            raise
        entries = sorted(stage.iterdir())
        for entry in entries:
            check_writable(folder / entry.name, overwrite, option)
        refuse_foreign(folder, [entry.name for entry in entries if (folder / entry.name).is_dir()], option)
        folder.mkdir(parents=True, exist_ok=True)
        record_written(folder, [entry.name for entry in entries])
        for entry in entries:
            _move_into(entry, folder / entry.name, overwrite, option)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


@contextlib.contextmanager
def atomic_output(path: str | Path, overwrite: bool = False, directory: bool = False,
                  option: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``, which it replaces only
    with ``overwrite`` (FileExistsError if ``path`` appeared meanwhile). ``option`` prefixes error messages.

    On any exception the temporary file or folder is removed and ``path`` is left untouched; a full disk is
    reported naming ``path``.
    """
    path = check_writable(path, overwrite, option=option or str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = temporary if directory else temporary / path.name
    try:
        try:
            yield target
        except OSError as error:
            if error.errno in _DISK_FULL:  # the bare message ('No space left on device') names no file
                raise OSError(error.errno, f"{path}: {error.strerror}; nothing was written") from error
            raise
        if directory:  # mkdtemp makes 0700; an output folder gets the usual umask-based mode
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(target, 0o777 & ~umask)
        _move_into(target, path, overwrite, option)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
