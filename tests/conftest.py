"""Shared pytest hooks and fixtures."""

import os
import socket

import pytest
from corpus_report import summary_lines


def pytest_terminal_summary(terminalreporter) -> None:
    """The bad-input corpus (tests/cli/test_bad_inputs.py) when it ran: its classes, cases and runs passed; and the
    classes tested beside it (signals, races, privacy, resource bombs) with their tests passed. Read from the
    reports (their user_properties), which pytest-xdist's workers send back."""
    reports = [report for report in terminalreporter.stats.get("passed", []) if report.when == "call"]
    results = dict(value for report in reports for name, value in report.user_properties if name == "bad_input_line")
    cases = []
    if results:  # the corpus ran: its cases, to group the runs by class (imports pydicom, torch: only then)
        from bad_inputs import all_cases

        cases = all_cases()
    for line in summary_lines(cases, results, [report.nodeid for report in reports]):
        terminalreporter.write_line(line)


def pytest_configure(config) -> None:
    """Under pytest-xdist (make test: two workers on two cores) each worker and the processes its tests start
    compute on one thread: two workers with two threads each would fight over two cores."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        import torch

        torch.set_num_threads(1)


@pytest.fixture
def ddp_in_this_process():
    """A free MASTER_PORT for Lightning's DDP in the test's own process, and ``os.environ`` restored afterwards:
    Lightning sets LOCAL_RANK, NODE_RANK, MASTER_ADDR/PORT there, and a later test's DDP child process would take
    itself for a rank that a launcher had started (and wait for its peers)."""
    environment = dict(os.environ)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        os.environ["MASTER_PORT"] = str(probe.getsockname()[1])
    yield
    os.environ.clear()
    os.environ.update(environment)
