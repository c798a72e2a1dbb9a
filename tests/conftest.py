"""Shared pytest hooks."""

import sys


def pytest_terminal_summary(terminalreporter) -> None:
    """The bad-input corpus (tests/cli/test_bad_inputs.py) and the bad options (tests/cli/test_option_checks.py),
    when they ran: runs passed, by class of input."""
    for name in ("test_bad_inputs", "test_option_checks"):
        module = sys.modules.get(name)
        for line in module.summary_lines() if module is not None else []:
            terminalreporter.write_line(line)
