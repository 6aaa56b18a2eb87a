"""Soak: many random edits on a real viewer with the tiny SAM; after each, the labels equal a
fresh segment-anything SamPredictor on the same points and pixels, and memory stays flat.

The default run does 40 edits. The full soak (1000 edits, a few minutes):

    NAPARI_CLIPSAM_SOAK=1000 python -m pytest -q tests/test_soak.py
"""

import os

import numpy as np
from skimage import data

from sam_oracle import Oracle, object_prompts
from widget_helpers import idle

EDITS = int(os.environ.get("NAPARI_CLIPSAM_SOAK", "40"))


def _rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmRSS:"))




def test_random_edits_always_match_a_fresh_predictor(qtbot, viewer_widget, models):
    pixels = data.chelsea()
    viewer, widget = viewer_widget
    widget.prompts.value = "cat\nsofa"
    widget.run()
    idle(qtbot, widget)
    pts, labels = viewer.layers["chelsea points"], viewer.layers["chelsea labels"]
    oracle = Oracle(models[1], pixels)
    rng = np.random.default_rng(7)
    h, w = pixels.shape[:2]
    memory = []
    for step in range(EDITS):
        n = len(pts.data)
        action = rng.choice(["move", "add", "delete", "flip", "new"]) if n > 3 else "add"
        if action == "move":
            moved = np.asarray(pts.data).copy()
            moved[rng.integers(n)] = [rng.uniform(0, h - 1), rng.uniform(0, w - 1)]
            pts.data = moved
        elif action == "add":
            pts.add(np.array([[rng.uniform(0, h - 1), rng.uniform(0, w - 1)]]))
        elif action == "delete":
            pts.selected_data = {int(rng.integers(n))}
            pts.remove_selected()
        elif action == "flip":
            pts.selected_data = {int(rng.integers(n))}
            widget.flip_selected()
        else:
            widget.new_object()
            for _ in range(2):
                pts.add(np.array([[rng.uniform(0, h - 1), rng.uniform(0, w - 1)]]))
            pts.mode = "pan_zoom"
        idle(qtbot, widget)
        expected = oracle.labels({oid: oracle.mask(p, lab) for oid, (p, lab) in object_prompts(pts).items()})
        np.testing.assert_array_equal(labels.data, expected, err_msg=f"after edit {step} ({action})")
        if step == min(20, EDITS - 1) or step == EDITS - 1:
            memory.append(_rss())
    if EDITS >= 200:
        assert memory[-1] - memory[0] < 100 * 2**20, f"{(memory[-1] - memory[0]) / 2**20:.0f} MB growth"
