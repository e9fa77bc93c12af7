"""Shutdown on signals: SIGTERM and SIGINT set an event instead of raising.

A run, the clock and the workers check that event between batches (and retry sleeps
wake on it). A second signal, or the end of the grace period, exits at once with
:data:`loader.defaults.EXIT_INTERRUPTED`: every saved state is consistent at any moment.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType

from loader import defaults


def stop_on_signals(grace: float) -> threading.Event:
    """An event set by SIGTERM or SIGINT. The run then has ``grace`` seconds to finish
    its request in flight and save its checkpoint; a second signal, or the end of the
    grace period, exits at once. Off the main thread, no handler is installed."""
    stop = threading.Event()

    def handle(signum: int, _frame: FrameType | None) -> None:
        """First signal: set ``stop`` and arm the grace timer; second: exit now."""
        # os._exit, not sys.exit: a second signal must end the process even while other
        # threads are blocked in a request.
        if stop.is_set():
            os._exit(defaults.EXIT_INTERRUPTED)
        stop.set()
        name = signal.Signals(signum).name
        _say(f"{name}: stopping after the request in flight (at most {grace:g}s)")
        _exit_after(grace)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)
    return stop


def clock_signals(stop: threading.Event, reload: threading.Event, grace: float) -> None:
    """SIGTERM/SIGINT set ``stop`` (a second one, or the end of the grace period plus a
    margin, exits at once); SIGHUP sets ``reload``. Call from the main thread."""

    def handle_stop(signum: int, _frame: FrameType | None) -> None:
        """First signal: set ``stop`` and arm the timer; second: exit now."""
        if stop.is_set():
            os._exit(defaults.EXIT_INTERRUPTED)
        stop.set()
        _say(f"{signal.Signals(signum).name}: stopping the clock")
        _exit_after(grace + 2)

    signal.signal(signal.SIGTERM, handle_stop)
    signal.signal(signal.SIGINT, handle_stop)
    signal.signal(signal.SIGHUP, lambda _signum, _frame: reload.set())


def _exit_after(seconds: float) -> None:
    timer = threading.Timer(seconds, os._exit, args=(defaults.EXIT_INTERRUPTED,))
    timer.daemon = True
    timer.start()


def _say(message: str) -> None:
    # Written at once: the process may end by os._exit, which flushes nothing.
    sys.stderr.write(f"{message}\n")
    sys.stderr.flush()
