"""The built wheel is the product: it carries the configs, declares the medical path's dependencies in its core and
the rest in extras, and ``cdm4mi demo --quick`` and ``cdm4mi train --config toy2d`` (a shipped config by name) run
from it in a fresh virtual environment, in a folder outside the checkout.

The fresh environment sees this environment's installed packages for its dependencies (a ``.pth`` file: no download,
no network) and gets cdm4mi from the wheel alone (``--no-deps``); the test asserts that the cdm4mi that runs is the
wheel's, not the checkout's.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest

from cdm4mi.presets import shipped_configs

REPO = Path(__file__).resolve().parents[1]
CORE = {"torch", "monai", "lightning", "nibabel", "pydicom", "pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg",
        "pylibjpeg-rle", "simpleitk"}
EXTRAS = {"bio": {"anndata", "pandas", "scikit-learn"}, "deid": {"dicognito"}}


def run(command: list, cwd: Path, timeout: int = 600) -> str:
    environment = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run([str(part) for part in command], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=environment)
    assert done.returncode == 0, f"{' '.join(map(str, command))}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the sources (a build in the checkout would leave build/ there)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "cdm4mi", source / "cdm4mi", ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path_factory.mktemp("dist")
    # setuptools >= 70.1 builds wheels by itself: this environment's, offline; else pip fetches the build requirements
    modern = tuple(int(part) for part in re.findall(r"\d+", version("setuptools"))[:2]) >= (70, 1)
    isolation = ["--no-build-isolation"] if modern else []
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w", dist, source], source)
    [built] = dist.glob("cdm4mi-*.whl")
    return built


def requirements(metadata: str) -> dict[str, set[str]]:
    """Requires-Dist names of a wheel's METADATA by extra ('' for the core)."""
    found: dict[str, set[str]] = {}
    for line in metadata.splitlines():
        if line.startswith("Requires-Dist:"):
            name = re.match(r"[A-Za-z0-9_.-]+", line.removeprefix("Requires-Dist:").strip()).group(0).lower()
            extra = re.search(r"extra == \"([^\"]+)\"", line)
            found.setdefault(extra.group(1) if extra else "", set()).add(name)
    return found


@pytest.mark.slow
def test_the_wheel_carries_the_configs_and_declares_core_and_extras(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(next(name for name in names if name.endswith(".dist-info/METADATA"))).decode()
    assert {f"cdm4mi/configs/{name}.yaml" for name in shipped_configs()} <= names
    declared = requirements(metadata)
    assert CORE <= declared[""]
    for extra, packages in EXTRAS.items():
        assert packages <= declared[extra] and not packages & declared[""], extra  # optional, and only there
    assert {"cdm4mi"} <= declared["test"]  # the test extra pulls in bio and deid


@pytest.mark.slow
def test_the_wheel_runs_the_demo_and_a_shipped_config_outside_the_checkout(wheel, tmp_path):
    environment = tmp_path / "venv"
    run([sys.executable, "-m", "venv", environment], tmp_path)
    python = environment / "bin" / "python"
    site_packages = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path).strip())
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}  # the dependencies, not cdm4mi
    (site_packages / "dependencies.pth").write_text("".join(f"{path}\n" for path in sorted(ours)))
    run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], tmp_path)

    work = tmp_path / "work"  # no configs/ folder, no checkout anywhere above
    work.mkdir()
    where = run([python, "-c", "import cdm4mi, cdm4mi.presets as p; print(cdm4mi.__file__); print(p.CONFIG_DIR)"], work)
    assert all(Path(line).is_relative_to(site_packages) for line in where.split()), where
    cdm4mi = environment / "bin" / "cdm4mi"
    assert run([cdm4mi, "--version"], work).strip() == "cdm4mi 0.1.0"

    printed = run([cdm4mi, "train", "--config", "toy2d", "output_dir=toy", "training.max_steps=2",
                   "training.batch_size=8", "data.num_samples=64", "training.preview_samples=16",
                   "training.progress_bar=false"], work)
    assert "trained 2 steps" in printed and (work / "toy" / "checkpoints" / "last.ckpt").is_file()

    printed = run([cdm4mi, "demo", "--quick", "--output", "demo"], work)
    for stage in ("1/5", "2/5", "3/5", "4/5", "5/5", "demo finished"):
        assert stage in printed
    assert (work / "demo" / "evaluation" / "summary.json").is_file()
    assert (work / "demo" / "real_ct" / "ct_small_lesions.png").is_file()
