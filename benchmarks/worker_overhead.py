"""Is work slower inside napari's thread worker than called directly? (micro-sam #740)

Alternates the same call directly on the main thread and inside ``napari.qt.threading``'s
generator worker, with a napari viewer open and its event loop running, in one process.
Prints JSON: medians, the ratio worker/direct, and torch's thread count in each place.
Model: a ViT-B-16-shaped open_clip CLIP with random weights (real compute, no download).

    xvfb-run -a python benchmarks/worker_overhead.py [--repeats 5] [--size 448]
"""

import argparse
import json
import statistics
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--size", type=int, default=448)
    ap.add_argument("--model", default="ViT-B-16")
    args = ap.parse_args()

    import napari
    import open_clip
    import torch
    from napari.qt.threading import create_worker
    from qtpy.QtWidgets import QApplication
    from skimage import data

    from napari_clipsam.core.localizers import get_localizer

    viewer = napari.Viewer(show=True)
    viewer.add_image(data.chelsea())
    app = QApplication.instance()
    model = open_clip.create_model(args.model, pretrained=None).eval()
    loc = get_localizer("gem", model, open_clip.get_tokenizer(args.model), input_size=args.size)
    image = data.chelsea()

    def job():
        t = time.perf_counter()
        loc.heatmaps(image, ["cat", "sofa"])
        return time.perf_counter() - t, torch.get_num_threads()

    def gen_job():
        yield
        return job()

    job()  # warm-up
    direct, worker, threads = [], [], {}
    for _ in range(args.repeats):
        dt, threads["direct"] = job()
        direct.append(dt)
        box = {}
        w = create_worker(gen_job, _start_thread=False)
        w.returned.connect(lambda r, box=box: box.setdefault("r", r))
        w.start()
        while "r" not in box:
            app.processEvents()
            time.sleep(0.001)
        worker.append(box["r"][0])
        threads["worker"] = box["r"][1]
    viewer.close()
    md, mw = statistics.median(direct), statistics.median(worker)
    print(json.dumps({
        "benchmark": "worker_overhead", "model": args.model, "input_size": args.size, "repeats": args.repeats,
        "direct_median_s": round(md, 4), "worker_median_s": round(mw, 4), "ratio_worker_over_direct": round(mw / md, 3),
        "direct_s": [round(x, 4) for x in direct], "worker_s": [round(x, 4) for x in worker],
        "torch_threads": threads, "torch": torch.__version__, "napari": napari.__version__,
    }, indent=1))


if __name__ == "__main__":
    main()
