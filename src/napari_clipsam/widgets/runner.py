"""Running long work off the GUI thread: one worker, one ``Task`` (progress and cancel), and
progress shown in the widget's bar and, for work that turns out long, in napari's activity panel.

napari's activity entry comes with an animated "in progress" GIF in the status bar (33 frames a
second). Each frame repaints the window, on the GUI thread and holding the GIL (napari's main
window handles Qt events in Python); with software OpenGL (remote desktops, VMs, Xvfb) that
cost a worker 30% of its speed (GEM at 448 in a worker: 0.66 s -> 0.87 s,
``benchmarks/activity_indicator.py``).
So the entry is only made once a job has run ``activity_after_s`` (2 s): a run of a second or
two shows its progress in the widget alone.

The work is a plain function ``job(task) -> result`` that reports to the ``Task`` (the one
way progress and cancellation are done, see ``core.progress``). The GUI thread polls the
task's last report, so the worker never touches Qt. The job's outcome reaches exactly one
of ``on_done(result)``, ``on_failed(short, details)`` or ``on_cancelled()``, on the GUI thread.

Applying results in steps: ``on_done`` may return an iterator (a generator that yields
between pieces of work, e.g. one layer added per step); the runner then runs one step per
turn of Qt's event loop (repaints and input in between, no long freeze) and counts as
running until the last step is done. A step that raises ends it with ``on_apply_failed``
(default ``on_failed``): by then part of the results may be in the viewer.
"""

from __future__ import annotations

import re
import time
import traceback
from collections.abc import Callable

from napari.qt.threading import create_worker
from napari.utils import progress as napari_progress
from qtpy.QtCore import QTimer

from ..core.models import WeightsError
from ..core.progress import Cancelled, Task

#: failures a user can act on: shown as a short reason with the details one click away
EXPECTED = (ValueError, WeightsError, OSError, RuntimeError)


class _Outcome:
    def __init__(self, kind: str, value=None, details: str = ""):
        self.kind, self.value, self.details = kind, value, details


def _short(exc: BaseException) -> str:
    """The reason in one short sentence; the whole text goes to the details."""
    text = str(exc).strip() or type(exc).__name__
    first = text.splitlines()[0]
    # the first sentence: a '. ' that ends one, not one inside an abbreviation ("e.g. ", "i.e. ")
    sentence = re.split(r"(?<!\be\.g)(?<!\bi\.e)(?<!\betc)(?<!\bvs)\. ", first)[0]
    return sentence if len(sentence) <= 140 else sentence[:137] + "…"


class Runner:
    """Runs one job at a time; ``bar`` is a magicgui ProgressBar (0..1000)."""

    #: seconds a job runs before it also shows in napari's activity panel
    activity_after_s: float = 2.0

    def __init__(self, bar, status: Callable[[str], None]):
        self.bar = bar
        self.status = status
        self.task: Task | None = None
        #: every Progress the current (or last) run reported, in order
        self.log: list = []
        #: callables given each Progress in the worker thread (scripts, tests); keep them quick
        self.observers: list[Callable] = []
        self._worker = None
        self._activity = None
        self._activity_text: str | None = None  # the description napari's activity entry shows
        self._label = "napari-clipsam"
        self._started = 0.0
        self._timer = QTimer()
        self._timer.setInterval(200)  # 5 updates a second: each changed text or value repaints the window
        self._timer.timeout.connect(self._show_progress)
        self._steps = None  # (iterator, on_failed) while results are being applied
        self._step_timer = QTimer()
        self._step_timer.setInterval(10)  # a pause between steps: input, repaints and other timers get in
        self._step_timer.timeout.connect(self._next_step)

    @property
    def is_running(self) -> bool:
        """True while the job runs or its results are being applied."""
        return self._worker is not None or self._steps is not None

    @property
    def applying(self) -> bool:
        """True while the job is over and its results are being applied in steps."""
        return self._steps is not None

    def start(self, job: Callable[[Task], object], *, on_done, on_failed, on_cancelled, on_apply_failed=None,
              label: str = "napari-clipsam"):
        if self.is_running:
            raise RuntimeError("a run is already going; cancel it first")
        self.log = log = []
        observers = list(self.observers)

        def on_progress(p):
            log.append(p)
            for observe in observers:
                observe(p)

        task = Task(on_progress)
        self.task = task

        def work():
            try:
                return _Outcome("done", job(task))
            except Cancelled:
                return _Outcome("cancelled")
            except EXPECTED as exc:
                return _Outcome("failed", _short(exc), str(exc))
            except Exception as exc:  # a bug: still one readable message, the traceback one click away
                return _Outcome("failed", f"unexpected error: {_short(exc)}", traceback.format_exc())

        delivered = []

        def finish(outcome: _Outcome):
            delivered.append(outcome)
            self._stop()
            if outcome.kind == "done":
                steps = on_done(outcome.value)
                if steps is not None and hasattr(steps, "__next__"):
                    self._steps = (steps, on_apply_failed or on_failed)
                    self._step_timer.start()
            elif outcome.kind == "cancelled":
                on_cancelled()
            else:
                on_failed(outcome.value, outcome.details)

        worker = create_worker(work, _start_thread=False)
        worker.returned.connect(finish)
        # napari quits workers when the viewer closes: then only `finished` comes
        worker.finished.connect(lambda: None if delivered else finish(_Outcome("cancelled")))
        worker.errored.connect(lambda exc: finish(_Outcome("failed", _short(exc), "".join(
            traceback.format_exception(type(exc), exc, exc.__traceback__)))))
        self._worker = worker
        self.bar.value = 0
        self.bar.visible = True
        self._label = label
        self._started = time.perf_counter()
        self._timer.start()
        worker.start()

    def cancel(self) -> None:
        """Cancel the job at its next step; results already being applied are applied."""
        if self.task is not None:
            self.task.cancel()

    def _next_step(self) -> None:
        if self._steps is None:
            self._step_timer.stop()
            return
        steps, on_failed = self._steps
        try:
            next(steps)
            return
        except StopIteration:
            self._end_steps()
        except Exception as exc:  # a bug while applying: one readable message, the traceback one click away
            self._end_steps()
            on_failed(f"unexpected error: {_short(exc)}", traceback.format_exc())

    def _end_steps(self) -> None:
        self._steps = None
        try:
            self._step_timer.stop()
        except RuntimeError:  # Qt already deleted it
            pass

    def _show_progress(self) -> None:
        try:
            self._show_progress_now()
        except RuntimeError:  # the widget's Qt objects were deleted (viewer closed)
            self.stop_display()

    def _show_progress_now(self) -> None:
        task = self.task
        p = task.last if task is not None else None
        if p is None:
            return
        frac = p.overall if p.overall is not None else p.fraction  # a stack's slices: the whole run
        if p.unit == "bytes":
            size = f"{p.done / 1e6:.1f}/{p.total / 1e6:.1f} MB" if p.total else f"{p.done / 1e6:.1f} MB"
            text = f"{p.stage}: {size}"
        else:
            text = f"{p.stage} {p.done}/{p.total}" if p.total > 1 else p.stage
        if not (task and task.cancelled):
            self.status(text)
        self.bar.value = int(1000 * frac) if frac is not None else 0
        if self._activity is None and self._worker is not None \
                and time.perf_counter() - self._started >= self.activity_after_s:
            self._activity = napari_progress(total=0, desc=self._label)
            self._activity_text = None
        activity = self._activity  # set_description may process events and end the job meanwhile
        if activity is not None:
            if text != self._activity_text:  # napari's bar runs processEvents() on each new description
                self._activity_text = text
                activity.set_description(text)
            if frac is not None:
                if activity.total != 1000:
                    activity.total = 1000
                activity.n = int(1000 * frac)
                activity.refresh()

    def stop_display(self) -> None:
        """Stop showing progress (the widget is going away); the job still ends on its own,
        results not yet applied are dropped."""
        if self._steps is not None:
            close = getattr(self._steps[0], "close", None)
            if close is not None:
                close()
            self._end_steps()
        try:
            self._timer.stop()
        except RuntimeError:  # Qt already deleted it
            pass
        if self._activity is not None:
            self._activity.close()
            self._activity = None

    def _stop(self) -> None:
        self._timer.stop()
        self._worker = None
        self.task = None
        try:
            self.bar.value = 0
            self.bar.visible = False
        except RuntimeError:  # the widget was deleted (viewer closed) while the job ran
            pass
        if self._activity is not None:
            self._activity.close()
            self._activity = None
