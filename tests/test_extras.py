"""The core install without the extras (``bio``: anndata, pandas, scikit-learn; ``deid``: dicognito): the medical
path imports and builds every registered component that needs none of them, and a feature that needs an extra says
which in one line (exit status 2), in a process where those packages cannot be imported."""

import subprocess
import sys

BLOCKED = ("anndata", "pandas", "sklearn", "dicognito", "scanpy")
PRELUDE = f"""
import sys
for name in {BLOCKED!r}:
    sys.modules[name] = None  # import raises ModuleNotFoundError, as when the package is not installed
"""


def run(script: str, tmp_path) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-c", PRELUDE + script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_the_medical_path_needs_no_extra(tmp_path):
    done = run("""
from scipy import sparse
import cdm4mi.cli.main, cdm4mi.inference.batch, cdm4mi.inference.denoise, cdm4mi.io.write, cdm4mi.evaluation.heldout
from cdm4mi.data.graph_files import save_adjacency
from cdm4mi.data.registry import build_dataset, validate_dataset_options
from cdm4mi.models.registry import build_backbone
validate_dataset_options("paired_scans", manifest="m.json")
validate_dataset_options("anndata", path="cells.h5ad")  # registered and checked; reading the file needs the extra
print(len(build_dataset("gaussian_mixture", "train", num_samples=64)))
graph = save_adjacency("graph.npz", sparse.identity(3))  # a .npz graph needs no pandas
print(type(build_backbone("pathway_gnn", dim=3, adjacency=str(graph))).__name__)
""", tmp_path)
    assert done.stdout.split() == ["64", "PathwayGNN"]


def test_a_feature_that_needs_an_extra_says_which_in_one_line(tmp_path):
    done = run("""
from cdm4mi.cli.main import main
from cdm4mi.extras import MissingExtra
from cdm4mi.io.deidentify import Deidentifier
print(main(["train", "--config", "pbmc_residual_mlp", "output_dir=run", "data.path=cells.h5ad"]))
print(main(["train", "--config", "toy_moons", "output_dir=run2"]))
print(main(["evaluate", "--checkpoint", "model.ckpt", "--output", "eval"]))
try:
    Deidentifier(bytes(32))
except MissingExtra as error:
    print(error)
""", tmp_path)
    assert done.stdout.splitlines()[-4:] == ["2", "2", "2", "DICOM de-identification (--deidentify): needs dicognito, "
                                             "which is not installed; pip install 'cdm4mi[deid]'"]
    assert [line for line in done.stderr.splitlines() if line.startswith("cdm4mi ")] == [
        "cdm4mi train: error: data.name 'anndata' (.h5ad files): needs anndata, which is not installed; "
        "pip install 'cdm4mi[bio]'",
        "cdm4mi train: error: data.name 'moons': needs scikit-learn, which is not installed; pip install 'cdm4mi[bio]'",
        "cdm4mi evaluate: error: evaluating a generative model (no --manifest): needs scikit-learn, which is not "
        "installed; pip install 'cdm4mi[bio]'",
    ]
    assert not (tmp_path / "eval").exists()
