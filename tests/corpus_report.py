"""The terminal summary of the bad-input corpus (tests/cli/test_bad_inputs.py, tests/bad_inputs.py) and of the
classes tested beside it in real processes; tests/conftest.py prints it at the end of a session. Kept apart from
tests/bad_inputs.py, which imports pydicom, nibabel and torch, so that a session that ran none of it pays nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class CorpusCase(Protocol):  # what the summary reads of tests/bad_inputs.py's Case
    name: str
    group: str
    commands: tuple[str, ...]


BESIDE_THE_CORPUS = {  # class of input -> the tests that cover it outside the corpus, in real processes
    "signals (SIGTERM, SIGINT mid-run)": "tests/cli/test_signals.py",
    "races (two runs, one output)": "tests/cli/test_races.py",
    "privacy (header values never shown)": "tests/io/test_header_privacy.py",
    "resource bombs (real allocations)": "tests/io/test_budget.py",
}
EXAMPLE_LENGTH = 150  # characters of each class's example error line in the summary


def summary_lines(cases: Sequence[CorpusCase], results: dict[str, str], passed: list[str]) -> list[str]:
    """The terminal summary: the corpus' classes with their cases, the runs that passed and an example error line
    (``results``: run id 'command :: case name' -> its line); then the classes tested beside the corpus, with
    their tests among ``passed`` (node ids). Empty if none of them ran."""
    lines = []
    if results:
        runs = sum(len(case.commands) for case in cases)
        lines += [f"bad-input corpus: {len(results)} of {runs} runs ({len(cases)} cases, each through every command "
                  "taking it) ended with exit 2 and one error line naming the input or option; no traceback, "
                  "nothing written", f"  {'class':<45}{'cases':>6}{'runs':>6}  example"]
        for group in sorted({case.group for case in cases}):
            names = {case.name for case in cases if case.group == group}
            lines_of_group = [line for run, line in results.items() if run.split(" :: ", 1)[1] in names]
            example = lines_of_group[0] if lines_of_group else "-"
            if len(example) > EXAMPLE_LENGTH:
                example = example[: EXAMPLE_LENGTH - 1] + "…"
            lines.append(f"  {group:<45}{len(names):>6}{len(lines_of_group):>6}  {example}")
    beside = {label: sum(nodeid.split("::")[0] == path for nodeid in passed)
              for label, path in BESIDE_THE_CORPUS.items()}
    if any(beside.values()):
        lines.append("beside the corpus: " + "; ".join(f"{label}: {count} tests passed ({BESIDE_THE_CORPUS[label]})"
                                                       for label, count in beside.items() if count))
    return lines
