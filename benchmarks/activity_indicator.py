"""What napari's activity indicator costs work in a worker thread, in a real napari window.

    xvfb-run -a python benchmarks/activity_indicator.py [--repeats 5]

GEM heatmaps (random-weight open_clip ViT-B-16, one prompt, one 448 window of a 1024 x 768
photo) run in a plain thread while the GUI thread runs Qt's event loop, interleaved: with no
napari progress open (the reference), and with one open (its animated status-bar GIF repaints
the window 33 times a second). JSON on stdout (medians, min/max), a line on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import napari
    import numpy as np
    import open_clip
    import torch
    from napari.utils import progress
    from qt_wait import pause, wait_until
    from skimage import data, transform

    from napari_clipsam.core.localizers import get_localizer

    load_start = os.getloadavg()
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", pretrained=None).eval()
    localizer = get_localizer("gem", model, open_clip.get_tokenizer("ViT-B-16"))
    photo = (transform.resize(data.chelsea(), (768, 1024), anti_aliasing=True) * 255).astype(np.uint8)
    localizer.text_features(["cat"])
    viewer = napari.Viewer()
    viewer.add_image(photo)
    pause(0.5)

    def heatmaps_in_a_thread() -> float:
        took = []

        def work():
            t0 = time.perf_counter()
            localizer.grid_similarity(photo, ["cat"])
            took.append(time.perf_counter() - t0)

        thread = threading.Thread(target=work)
        thread.start()
        wait_until(lambda: not thread.is_alive(), poll_ms=10)  # the GUI thread runs its event loop
        thread.join()
        return took[0]

    heatmaps_in_a_thread()  # warm-up
    times: dict[str, list[float]] = {"no napari progress": [], "napari progress open": []}
    for _ in range(args.repeats):
        times["no napari progress"].append(heatmaps_in_a_thread())
        bar = progress(total=1000, desc="napari-clipsam")
        pause(0.1)
        try:
            times["napari progress open"].append(heatmaps_in_a_thread())
        finally:
            bar.close()
        pause(0.1)

    def summary(values):
        return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}

    ref, with_bar = (statistics.median(v) for v in times.values())
    out = {"device": "cpu", "torch_threads": torch.get_num_threads(), "load_average_start": load_start,
           "load_average_end": os.getloadavg(), "gem_heatmaps_s": {k: summary(v) for k, v in times.items()},
           "ratio_with_progress_open": with_bar / ref}
    print(json.dumps(out, indent=2))
    print(f"GEM heatmaps in a worker: {ref:.2f} s without napari progress, {with_bar:.2f} s with it open "
          f"({with_bar / ref:.2f}x)", file=sys.stderr)
    viewer.close()


if __name__ == "__main__":
    main()
