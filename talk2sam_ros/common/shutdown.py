"""Signal-safe stop of a node process: SIGINT/SIGTERM end the spin loop, never the teardown.

A terminal's Ctrl-C reaches the whole process group, and `ros2 launch` then sends its own
SIGINT (and SIGTERM later): the second signal arrives while the node tears down. Python's
default handler would raise KeyboardInterrupt in the middle of that teardown (a traceback and
exit code -2). :class:`ShutdownSignals` records signals instead: the first asks to stop, any
further one asks to hurry (skip waiting for work in progress). Pure Python (no rclpy): the
caller passes its executor's ``spin_once`` and ``ok``.

Install it before ``rclpy.init``: rclpy's own handler chains to the handler it finds
installed (it wakes the executor, then calls ours), so both keep working.
"""
from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

SPIN_PERIOD_S = 0.2  # how often the spin loop looks at the stop request


class ShutdownSignals:
    """Context manager recording SIGINT/SIGTERM.

    ``stop`` is set by the first signal, ``hurry`` by any later one. Inside
    :meth:`interruptible` (start-up: loading a model can take a while) the first signal also
    raises KeyboardInterrupt, so start-up is abandoned at once; the caller catches it.

    restore: put the previous handlers back on exit. A process entry point passes False to
    ignore the signals from then on: the process is exiting, and Python's own exit (freeing
    torch can take seconds) resets Python-level handlers to the default one, so a late signal
    (a second Ctrl-C, launch's SIGTERM after its SIGINT) would kill it with -2 / -15.
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM), *,
                 restore: bool = True) -> None:
        self.stop = threading.Event()
        self.hurry = threading.Event()
        self.received: list[int] = []
        self._signals = signals
        self._restore = restore
        self._previous: dict[int, Any] = {}
        self._raise = False

    def __enter__(self) -> ShutdownSignals:
        for signum in self._signals:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if self._restore else signal.SIG_IGN)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)
        (self.hurry if self.stop.is_set() else self.stop).set()
        if self._raise:
            self._raise = False
            raise KeyboardInterrupt

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        """A signal inside this block raises KeyboardInterrupt (once); also when one came
        just before the block."""
        if self.stop.is_set():
            raise KeyboardInterrupt
        self._raise = True
        try:
            yield
        finally:
            self._raise = False

    def spin(self, spin_once: Callable[[float], None], ok: Callable[[], bool]) -> None:
        """Call ``spin_once(timeout_s)`` until a signal or until ``ok()`` turns false.

        An exception once stopping has begun (a callback that published while the context
        was shut down from outside, rclpy's ExternalShutdownException) ends the loop quietly;
        any other is raised.
        """
        while not self.stop.is_set() and ok():
            try:
                spin_once(SPIN_PERIOD_S)
            except Exception:
                if self.stop.is_set() or not ok():
                    return
                raise
