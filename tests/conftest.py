"""Shared pytest hooks."""

import sys

from corpus_report import summary_lines


def pytest_terminal_summary(terminalreporter) -> None:
    """The bad-input corpus (tests/cli/test_bad_inputs.py) when it ran: its classes, cases and runs passed; and the
    classes tested beside it (signals, races, privacy, resource bombs) with their tests passed."""
    corpus = sys.modules.get("test_bad_inputs")
    passed = [report.nodeid for report in terminalreporter.stats.get("passed", []) if report.when == "call"]
    for line in summary_lines(corpus.CASES if corpus else [], corpus.RESULTS if corpus else {}, passed):
        terminalreporter.write_line(line)
