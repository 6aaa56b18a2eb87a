"""Helpers for widget tests: waiting on the widget's real workers."""

TIMEOUT = 120_000


def idle(qtbot, widget) -> None:
    """Wait until no run and no mask update is pending (twice: an edit may schedule another)."""
    qtbot.waitUntil(lambda: not widget.is_busy, timeout=TIMEOUT)
    qtbot.wait(10)
    qtbot.waitUntil(lambda: not widget.is_busy, timeout=TIMEOUT)


def run_and_wait(qtbot, widget, prompts: str) -> None:
    """Type ``prompts``, press Run on the chosen image and wait until the run and its mask
    updates are over."""
    widget.prompts.value = prompts
    widget.run()
    idle(qtbot, widget)


def assert_next_mask_cycles(qtbot, widget, points_layer, labels_layer, row: int, best: int, expected) -> None:
    """Selecting point ``row`` and pressing Next mask three times shows SAM's candidates
    best + 1, best + 2, best + 3 (mod 3): each time the labels equal ``expected(candidate)``
    (best: the candidate shown first, -1 for SAM's single-mask output)."""
    import numpy as np

    widget.viewer.layers.selection.active = points_layer
    points_layer.selected_data = {row}
    seen = []
    for step in range(1, 4):
        widget.next_mask()
        idle(qtbot, widget)
        cand = (best + step) % 3
        np.testing.assert_array_equal(labels_layer.data, expected(cand))
        seen.append(cand)
    assert sorted(seen) == [0, 1, 2]
