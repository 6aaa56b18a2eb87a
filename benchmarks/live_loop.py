"""The live loop in a real napari window: point edit -> labels updated, and the longest gap in
Qt's event loop during a run, each beside its reference in the same process.

    xvfb-run -a python benchmarks/live_loop.py [--sam vit_b|tiny] [--repeats 15]

Rows (JSON on stdout, a short table on stderr):
* edit_to_labels: a positive point moved -> the labels layer holds the new mask (widget idle),
  vs the reference: ``SamPredictor.predict`` for the same object's points called directly.
* event_loop_gap: the longest interval between ticks of a 5 ms QTimer while a run goes (result
  layers added included), for a first and a later run.
Models: random-weight full-size SAM (``sam_model_registry[kind]`` with no checkpoint, weights
cannot be downloaded here) and the tests' tiny CLIP (heatmap quality plays no role here).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sam", default="vit_b")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()

    import napari
    import torch
    from qtpy.QtCore import QEventLoop, QTimer
    from qtpy.QtWidgets import QApplication
    from segment_anything import SamPredictor, sam_model_registry
    from skimage import data, transform

    from napari_clipsam.widgets import ClipSamWidget

    from reference_model import load_reference_clip
    from tiny_sam import build_tiny_sam

    torch.manual_seed(0)
    sam = build_tiny_sam(img_size=256, seed=3) if args.sam == "tiny" else sam_model_registry[args.sam]().eval()
    photo = (transform.resize(data.chelsea(), (768, 1024), anti_aliasing=True) * 255).astype(np.uint8)
    viewer = napari.Viewer()
    img = viewer.add_image(photo, name="photo")
    widget = ClipSamWidget(viewer)
    widget.use_models(clip=load_reference_clip(), sam=sam)
    viewer.window.add_dock_widget(widget)
    app = QApplication.instance()

    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(5)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))

    def wait_idle():  # sleep until Qt has events (no busy loop competing with torch for the cores)
        while widget.is_busy:
            app.processEvents(QEventLoop.ProcessEventsFlag.WaitForMoreEvents, 20)
        for _ in range(3):
            app.processEvents()

    def run_gap() -> float:
        ticks.clear()
        timer.start()
        widget.run()
        wait_idle()
        timer.stop()
        return float(max(np.diff(ticks)) * 1000) if len(ticks) > 1 else float("nan")

    widget.image.value = img
    widget.prompts.value = "cat"
    widget.max_objects.value = 3
    gaps = {"first run": run_gap(), "later run": run_gap()}

    pts = viewer.layers["photo points"]
    feats = pts.features
    i = int(np.flatnonzero(feats["positive"].to_numpy(bool))[0])
    oid = int(feats["object_id"].iloc[i])
    predictor = SamPredictor(sam)
    predictor.set_image(photo)
    rng = np.random.default_rng(0)
    edit_ms, direct_ms = [], []
    for _ in range(args.repeats):
        moved = np.asarray(pts.data).copy()
        moved[i] = [rng.uniform(50, 700), rng.uniform(50, 950)]
        t0 = time.perf_counter()
        pts.data = moved
        wait_idle()
        edit_ms.append((time.perf_counter() - t0) * 1000)
        own = (pts.features["object_id"].to_numpy() == oid) | (
            (pts.features["object_id"].to_numpy() == 0) & ~pts.features["positive"].to_numpy(bool))
        p = np.asarray(pts.data)[own][:, ::-1].copy()
        lab = pts.features["positive"].to_numpy(int)[own]
        t0 = time.perf_counter()
        predictor.predict(point_coords=p, point_labels=lab, multimask_output=len(p) == 1)
        direct_ms.append((time.perf_counter() - t0) * 1000)

    def summary(values):
        return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}

    out = {
        "device": "cpu", "torch_threads": torch.get_num_threads(), "load_average": os.getloadavg(),
        "sam": args.sam, "image": list(photo.shape),
        "edit_to_labels_ms": summary(edit_ms), "reference_predict_ms": summary(direct_ms),
        "edit_overhead_ratio": statistics.median(edit_ms) / statistics.median(direct_ms),
        "event_loop_gap_ms": gaps,
        "targets": {"edit_to_labels < 50 ms": bool(statistics.median(edit_ms) < 50),
                    "event_loop_gap < 50 ms": bool(max(gaps.values()) < 50)},
    }
    print(json.dumps(out, indent=2))
    print(f"edit -> labels: median {statistics.median(edit_ms):.0f} ms (decoder alone "
          f"{statistics.median(direct_ms):.0f} ms); longest event-loop gap: first run "
          f"{gaps['first run']:.0f} ms, later run {gaps['later run']:.0f} ms", file=sys.stderr)
    viewer.close()


if __name__ == "__main__":
    main()
