"""The run configs shipped inside the package (``cdm4mi/configs/*.yaml``; the checkout's top-level ``configs/`` links
to them), and ``--config`` resolution: a YAML file's path, or a shipped config's name (``ldct_2d``, ``ldct_2d.yaml``).

Imports nothing heavy: ``cdm4mi train --help`` lists the names.
"""

from __future__ import annotations

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
CONFIG_SUFFIX = ".yaml"


def shipped_configs() -> list[str]:
    """The names of the shipped configs, sorted (``toy2d``, not ``toy2d.yaml``)."""
    return sorted(path.stem for path in CONFIG_DIR.glob(f"*{CONFIG_SUFFIX}"))


def shipped_config(name: str) -> Path:
    """The shipped config ``name`` (with or without ``.yaml``); a ``ValueError`` listing the names if there is none."""
    path = CONFIG_DIR / (name if name.endswith(CONFIG_SUFFIX) else name + CONFIG_SUFFIX)
    if "/" in name or "\\" in name or not path.is_file():
        raise ValueError(f"--config: no shipped config named {name!r}; shipped: {', '.join(shipped_configs())}")
    return path


def resolve_config(config: str | Path) -> Path:
    """``--config``: an existing file (or folder, refused by the reader), else a shipped config of that name.

    A file of the given path always wins, so a user's own ``ldct_2d.yaml`` in the working folder is read, not the
    shipped one. A path with a folder in it that does not exist is not looked up by name (a mistyped path must not
    silently become a shipped config); its error says which shipped config has its name, if one does.
    """
    path = Path(config)
    if path.exists() or path.is_symlink():
        return path
    text = str(config)
    if "/" not in text and "\\" not in text:
        return shipped_config(text)
    hint = ""
    if (CONFIG_DIR / path.name).is_file() or (CONFIG_DIR / (path.name + CONFIG_SUFFIX)).is_file():
        hint = f"; the shipped config of that name is --config {path.name.removesuffix(CONFIG_SUFFIX)}"
    raise ValueError(f"--config: file not found: {path}{hint}")
