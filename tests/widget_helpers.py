"""Helpers for widget tests: waiting on the widget's real workers."""

TIMEOUT = 120_000


def idle(qtbot, widget) -> None:
    """Wait until no run and no mask update is pending (twice: an edit may schedule another)."""
    qtbot.waitUntil(lambda: not widget.is_busy, timeout=TIMEOUT)
    qtbot.wait(10)
    qtbot.waitUntil(lambda: not widget.is_busy, timeout=TIMEOUT)
