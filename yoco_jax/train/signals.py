"""SIGTERM / SIGINT: checkpoint at the next step boundary and exit (preemption)."""

from __future__ import annotations

import signal

import jax
import numpy as np


class StopSignal:
    """Records SIGTERM / SIGINT so the loop can checkpoint and exit between steps (preemption).

    A second SIGINT interrupts at once (KeyboardInterrupt).
    """

    def __init__(self):
        self.received: str | None = None
        self._previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def requested(self, synchronize: bool) -> bool:
        """Whether any process got a signal (`synchronize`: agree across processes, a
        collective every process must join at the same step)."""
        if jax.process_count() == 1:
            return self.received is not None
        if not synchronize:
            return False
        from jax.experimental import multihost_utils

        return bool(multihost_utils.process_allgather(np.array([self.received is not None])).any())

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
