"""benchmarks/bench_gpu.py keeps working where no GPU is lent: it says so and exits 0, and its tiny CPU run goes
through every timed path (training steps of both networks with FLOP counting, both denoising pipelines)."""

from __future__ import annotations

import runpy
import subprocess
import sys

import pytest
import torch
from cli_runs import REPO

SCRIPT = REPO / "benchmarks" / "bench_gpu.py"


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the script would time it")
def test_without_a_gpu_it_says_so_and_its_smoke_run_times_both_networks(monkeypatch, capsys):
    # run as a script (its folder first on the path), in this process: its imports are loaded already
    monkeypatch.setattr(sys, "argv", [str(SCRIPT)])
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    assert done.value.code in (0, None) and "no CUDA GPU on this machine" in capsys.readouterr().out
    smoke = subprocess.run([sys.executable, str(SCRIPT), "--smoke-cpu"], capture_output=True, text=True, timeout=300)
    assert smoke.returncode == 0, smoke.stderr[-2000:]
    lines = smoke.stdout.splitlines()
    assert any(line.startswith("ours ") for line in lines) and any(line.startswith("MONAI ") for line in lines)
    assert "ours/MONAI training throughput" in smoke.stdout
    assert "3-slice volume" in smoke.stdout and "s per 64² slice" in smoke.stdout
