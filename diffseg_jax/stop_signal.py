"""SIGTERM and SIGINT as a request to stop at the next safe point, for preemptible machines.

A scheduler (SLURM, Kubernetes, a TPU VM's maintenance event) sends SIGTERM and waits a while before SIGKILL.
Training saves the step it reached and evaluation finishes the case it is on; both then exit with
`EXIT_STOPPED`, which tells a scheduler "stopped early, the same command resumes" apart from 0 (finished) and
1 (failed). A second signal interrupts at once.
"""

from __future__ import annotations

import signal

from absl import logging

EXIT_STOPPED = 75  # EX_TEMPFAIL: try again later


class Stopped(Exception):
    """Work stopped at a safe point on request; what was finished is saved and the same command resumes."""


class StopRequest:
    """Context manager: `requested` becomes True on the first SIGTERM or SIGINT (in the main thread)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        for signum in self.SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread (e.g. a notebook worker): no handler
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        logging.warning("%s received: stopping at the next safe point", signal.Signals(signum).name)

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
