"""Stopping on SIGINT (Ctrl-C) and SIGTERM: the loop finishes its step, saves a checkpoint and
exits with 130 or 143; a second signal stops at once (the last checkpoint on disk stays
valid: every write is atomic)."""

from __future__ import annotations

import os
import signal

import mlx.core as mx

EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}  # exit status per signal


class StopSignals:
    """While entered, SIGINT and SIGTERM set `received`, which the loop checks after each step
    (`requested`); the previous handlers come back on exit."""

    def __init__(self):
        self.received = None
        self.previous = {}

    def __enter__(self):
        for sig in EXIT_SIGNAL:
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no handlers, the loop still runs
                pass
        return self

    def _handle(self, signum, frame):
        if self.received is not None:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        self.received = signum

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def requested(self, world: int) -> int | None:
        """The signal that asks the run to stop, or None. With several processes every rank
        stops together, at the same step (the flags are summed across them)."""
        flag = self.received or 0
        if world > 1:
            flag = int(mx.distributed.all_sum(mx.array(flag)).item())
        return flag or None
