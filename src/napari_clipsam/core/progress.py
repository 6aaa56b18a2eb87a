"""Progress and cancellation: the one way long work reports how far it is and stops early.

Every long operation of the core (weight downloads, localizer passes and windows, SAM
embeddings and decodes, whole pipeline runs, batches) takes an optional ``task: Task``.
It calls ``task.report(stage, done, total)`` as it goes; ``report`` raises ``Cancelled``
once ``task.cancel()`` was called (from any thread), so work stops at its next report.
``task.check()`` is the same without a report.

A caller that wants to see progress passes ``Task(on_progress)``; ``on_progress`` receives
``Progress`` values in the worker's thread (a GUI must hand them to its own thread).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Cancelled", "Progress", "Task", "as_task"]


class Cancelled(Exception):
    """Raised inside work whose ``Task`` was cancelled; the work leaves nothing half-done."""


@dataclass(frozen=True)
class Progress:
    """One report: ``stage`` (what is being done, e.g. "heatmaps", "download SAM vit_b"),
    ``done`` of ``total`` units within that stage (``total`` 0: unknown), ``unit``
    ("windows", "bytes", "images", ...)."""

    stage: str
    done: int = 0
    total: int = 0
    unit: str = ""
    #: how far the whole work is, in [0, 1], where it is made of parts (``Task.within`` with
    #: ``part``: slice 3 of 10 at half its stage is 0.25); None: only the stage's fraction is known
    overall: float | None = None

    @property
    def fraction(self) -> float | None:
        """done / total in [0, 1], or None when the total is unknown."""
        if self.total <= 0:
            return None
        return min(1.0, max(0.0, self.done / self.total))


class Task:
    """Progress reports and a cancellation flag for one piece of work (thread-safe)."""

    def __init__(self, on_progress: Callable[[Progress], None] | None = None):
        self.on_progress = on_progress
        self._cancelled = threading.Event()
        self.last: Progress | None = None

    def cancel(self) -> None:
        """Ask the work to stop at its next ``report`` or ``check``."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def check(self) -> None:
        """Raise ``Cancelled`` if ``cancel()`` was called."""
        if self._cancelled.is_set():
            raise Cancelled("cancelled")

    def report(self, stage: str, done: int = 0, total: int = 0, unit: str = "") -> None:
        """Report progress (to ``on_progress``), then stop here if cancelled."""
        self.check()
        self.last = Progress(stage, int(done), int(total or 0), unit)
        if self.on_progress is not None:
            self.on_progress(self.last)
        self.check()


    def within(self, prefix: str, part: tuple[int, int] | None = None) -> Task:
        """A task for one part of this work: its reports reach this task's ``on_progress``
        as "<prefix>: <stage>", and cancelling either cancels both. ``part``: (index, count)
        of equal parts this one is (0-based), so that reports carry how far the whole is
        (``Progress.overall``)."""
        if part is not None:
            index, count = (int(v) for v in part)
            if not 0 <= index < count:
                raise ValueError(f"part must be (index, count) with 0 <= index < count, got {part}")
        peak = [0.0]  # a part's stages each run 0 -> 1: the whole only moves forward
        child = Task(lambda p: self._forward(prefix, p, part, peak))
        child._cancelled = self._cancelled
        return child

    #: the share of a part its stages' fractions can fill: the part counts as done only when
    #: the next one starts (a part's first stage going 0 -> 1 is not the part done)
    PART_FILL = 0.9

    def _forward(self, prefix: str, p: Progress, part: tuple[int, int] | None = None,
                 peak: list | None = None) -> None:
        overall = p.overall
        if part is not None:
            inner = p.overall if p.overall is not None else (p.fraction or 0.0)
            peak[0] = max(peak[0], min(inner, 1.0) * self.PART_FILL)
            overall = (part[0] + peak[0]) / part[1]
        self.last = Progress(f"{prefix}: {p.stage}", p.done, p.total, p.unit, overall)
        if self.on_progress is not None:
            self.on_progress(self.last)


def as_task(task: Task | None) -> Task:
    """``task``, or a silent task that is never cancelled (for callers that pass none)."""
    if task is None:
        return Task()
    if not isinstance(task, Task):
        raise TypeError(f"task must be a napari_clipsam.core.progress.Task (or None), got {type(task).__name__}")
    return task
