"""Waiting in a benchmark the way napari's own event loop waits: asleep until an event comes.

``QCoreApplication.processEvents(flags, ms)`` in a loop looks like a wait but returns as soon as
no event is pending (``WaitForMoreEvents`` means nothing to that overload), so such a loop spins
a whole core. On a 2-core machine that halves torch's speed in the worker being measured
(GEM heatmaps 0.72 s -> 1.47 s in a worker thread, the waiting thread using 1.28 s of CPU).
``wait_until`` runs a real ``QEventLoop`` instead (a few ms of CPU for the same wait).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from qtpy.QtCore import QEventLoop, QTimer


def wait_until(condition: Callable[[], bool], timeout_s: float = 600.0, poll_ms: int = 10) -> bool:
    """Run Qt's event loop until ``condition()`` is true (checked every ``poll_ms``) or
    ``timeout_s`` passed; returns whether the condition held."""
    if condition():
        return True
    loop = QEventLoop()
    end = time.perf_counter() + timeout_s
    held = [False]

    def check() -> None:
        if condition():
            held[0] = True
            loop.quit()
        elif time.perf_counter() > end:
            loop.quit()

    timer = QTimer()
    timer.setInterval(poll_ms)
    timer.timeout.connect(check)
    timer.start()
    loop.exec()
    timer.stop()
    return held[0]


def pause(seconds: float) -> None:
    """Let Qt's event loop run for ``seconds`` (timers fire, the canvas paints)."""
    end = time.perf_counter() + seconds
    wait_until(lambda: time.perf_counter() >= end, timeout_s=seconds + 1.0)
