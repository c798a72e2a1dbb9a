"""SIGTERM stops cdm4mi the way Ctrl-C does: by an exception, so every ``with`` block cleans up.

A batch scheduler (SLURM, Kubernetes, systemd) asks a job to stop with SIGTERM and kills it a grace period
later. Python's default for SIGTERM is to die at once, skipping every ``finally``: a DICOM series being
written would leave its temporary folder behind (``cdm4mi.atomic``), and the exit status would not say why.
While ``sigterm_raises()`` is active, SIGTERM raises ``Terminated`` in the main thread instead; the CLI turns
it into one line and exit status 143 (128 + 15, what a shell reports for a process killed by SIGTERM).

Training handles SIGTERM itself (``cdm4mi.training.stopping``): it finishes the step under way and writes a
checkpoint before it stops.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

SIGTERM_EXIT_STATUS = 128 + signal.SIGTERM
SIGINT_EXIT_STATUS = 128 + signal.SIGINT


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM. A ``BaseException`` like ``KeyboardInterrupt``, so that no
    ``except Exception`` turns it into an error message. ``str()`` says what was kept, or is empty."""


def quiet(stop: BaseException) -> BaseException:
    """``stop`` (``Terminated`` or ``KeyboardInterrupt``) marked as reported by another process of the same run:
    under DDP every rank stops, and rank 0 alone prints the line (what was saved, how to resume); the CLI exits
    the other ranks with the same status, silently."""
    stop.quiet = True
    return stop


def is_quiet(stop: BaseException) -> bool:
    return getattr(stop, "quiet", False)


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """While active (main thread only; elsewhere nothing changes), SIGTERM raises ``Terminated``."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    owner = os.getpid()

    def handler(signum, frame) -> None:
        if os.getpid() != owner:  # a forked child (a data loader worker) dies as it would have without us
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        # A second SIGTERM must not interrupt the clean-up the first one started.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
