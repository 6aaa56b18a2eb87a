"""Few-shot probe vs zero-shot heatmap on synthetic cells (ground truth known), tiny random CLIP.

Prints JSON: per method and k (labelled objects), the mean pixel AUROC of the "cell" heatmap
against the true cell masks on held-out slices, over several seeds. Run from the repository
root: ``python docs/scripts/probe_benchmark.py``. With random weights this shows the
mechanism (a probe learns from the features it is given), not CLIP's accuracy.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

from napari_clipsam.core.localizers import get_localizer  # noqa: E402
from napari_clipsam.core.probe import train_probe  # noqa: E402
from synthetic_cells import cell_slices, first_objects  # noqa: E402

from reference_model import load_reference_clip  # noqa: E402

KS = (1, 3, 10)
SEEDS = (0, 1, 2)
N_TRAIN, N_TEST = 3, 10


def auroc(heat, labels):
    return float(roc_auc_score((labels > 0).ravel(), heat.ravel()))


def main() -> None:
    model, tok = load_reference_clip()
    out = {"task": f"{N_TRAIN} training slices (k objects labelled, the rest unlabelled), {N_TEST} test slices, "
                   "160x160, 5 textured cells of random brightness/contrast/frequency and 5 untextured bright "
                   "debris disks each; metric: pixel AUROC of the 'cell' map vs the true masks",
           "seeds": list(SEEDS), "results": {}}
    for method in ("gem", "raw", "maskclip"):
        loc = get_localizer(method, model, tok, input_size=224)
        zero, few = [], {k: [] for k in KS}
        for seed in SEEDS:
            slices = cell_slices(N_TRAIN + N_TEST, seed=100 + seed, cells=5, debris=5, hard=True)
            train, test = slices[:N_TRAIN], slices[N_TRAIN:]
            zero.append(np.mean([auroc(loc.heatmaps(img, ["cell"])[0], lab) for img, lab in test]))
            for k in KS:
                kept = first_objects([lab for _, lab in train], k)
                examples = [(img, lab, {int(i): "cell" for i in np.unique(lab) if i})
                            for (img, _), lab in zip(train, kept) if lab.any()]
                probe = train_probe(loc, examples)
                few[k].append(np.mean([auroc(probe.heatmaps(img, loc)[0], lab) for img, lab in test]))
        out["results"][method] = {"zero-shot": [round(float(np.mean(zero)), 3), round(float(np.std(zero)), 3)],
                                  **{f"probe k={k}": [round(float(np.mean(v)), 3), round(float(np.std(v)), 3)]
                                     for k, v in few.items()}}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
