"""Pseudonyms and the private files behind them: a salted HMAC of a patient ID, the salt file, the ID map.

The salt and the ID map re-identify patients: both are written readable by their owner only and refused inside
a git working tree."""

from __future__ import annotations

import csv
import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from cdm4mi.atomic import atomic_output, check_writable

MIN_SALT_BYTES = 16


SALT_BYTES = 32


def pseudonymize(patient_id: str, salt: bytes) -> str:
    """'P' + the first 10 hex digits of HMAC-SHA256(salt, patient_id): stable for a salt, not reversible
    without it. Keep the salt apart from the manifest, or IDs can be guessed and checked."""
    if not isinstance(salt, bytes) or len(salt) < MIN_SALT_BYTES:
        raise ValueError(f"salt must be at least {MIN_SALT_BYTES} bytes")
    if not isinstance(patient_id, str) or not patient_id:
        raise ValueError("patient_id must be a non-empty string")
    return "P" + hmac.new(salt, patient_id.encode("utf-8"), hashlib.sha256).hexdigest()[:10]


def check_outside_version_control(path: str | Path, option: str) -> None:
    """Refuse a private file (the salt, the ID map) inside a git working tree: one ``git add .`` or ``commit -a``
    away from being shared with everyone who can read the repository."""
    path = Path(os.path.abspath(path))
    tree = next((folder for folder in path.parents if (folder / ".git").exists()), None)
    if tree is not None:
        raise ValueError(f"{option}: {path} lies inside the git working tree {tree}; keep the salt and the ID map "
                         "outside version control (e.g. in ~/.cdm4mi/ or next to the raw data)")


def load_or_create_salt(path: str | Path) -> tuple[bytes, bool]:
    """The salt in ``path``; a missing file is created with 32 random bytes, readable by its owner only.
    ``path`` must lie outside any git working tree (``check_outside_version_control``).

    Returns ``(salt, created)``.
    """
    path = Path(path)
    check_outside_version_control(path, "--salt-file")
    if path.exists():
        if not path.is_file():
            raise ValueError(f"--salt-file: {path} is not a file")
        salt = path.read_bytes()
        if len(salt) < MIN_SALT_BYTES:
            raise ValueError(f"--salt-file: {path} holds {len(salt)} bytes; a salt needs at least {MIN_SALT_BYTES}")
        return salt, False
    salt = secrets.token_bytes(SALT_BYTES)
    with atomic_output(path) as partial:
        partial.write_bytes(salt)
        os.chmod(partial, 0o600)
    return salt, True


def write_id_map(id_map: Mapping[str, str], path: str | Path, overwrite: bool = False) -> Path:
    """CSV ``real_id,pseudonym`` (sorted by pseudonym), readable by its owner only. It re-identifies the
    manifest: write it only where the user asks, and never next to a shared manifest."""
    path = check_writable(path, overwrite, option="--id-map")
    with atomic_output(path, overwrite) as partial:
        with partial.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["real_id", "pseudonym"])
            for real_id, pseudonym in sorted(id_map.items(), key=lambda item: item[1]):
                writer.writerow([real_id, pseudonym])
        os.chmod(partial, 0o600)
    return path
