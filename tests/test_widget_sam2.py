"""The dock widget with a SAM 2.1 model: the model list, the CPU default, and a run plus live
edits (move a point, a box, next mask) whose labels equal a fresh sam2 ``SAM2ImagePredictor``
on the exact pixels, with the object rules of ``sam_oracle``."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sam2", reason="SAM 2.1 needs Meta's sam2 package "
                                   "(SAM2_BUILD_CUDA=0 pip install --no-build-isolation sam2)")

from sam2.sam2_image_predictor import SAM2ImagePredictor  # noqa: E402
from skimage import data  # noqa: E402

from napari_clipsam.widgets import ClipSamWidget  # noqa: E402
from sam_oracle import Oracle, expected_labels, object_prompts  # noqa: E402
from tiny_sam2 import build_tiny_sam2  # noqa: E402
from widget_helpers import assert_next_mask_cycles, idle  # noqa: E402

from reference_model import load_reference_clip  # noqa: E402


@pytest.fixture(scope="module")
def sam2_model():
    return build_tiny_sam2(seed=3)


def test_model_list_and_cpu_default(make_napari_viewer):
    import torch

    widget = ClipSamWidget(make_napari_viewer())
    kinds = list(widget.sam_model.choices)
    assert kinds[:3] == ["vit_b", "vit_l", "vit_h"]
    assert {"sam2.1_tiny", "sam2.1_small", "sam2.1_base_plus", "sam2.1_large"} <= set(kinds)
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        assert widget.sam_model.value == "sam2.1_tiny"
        assert "No GPU here, so the default is sam2.1_tiny" in widget.sam_model.tooltip


def test_run_and_live_edits_with_sam2(qtbot, make_napari_viewer, sam2_model):
    viewer = make_napari_viewer()
    widget = ClipSamWidget(viewer)
    widget.use_models(clip=load_reference_clip(), sam=sam2_model)
    viewer.window.add_dock_widget(widget)
    pixels = data.chelsea()
    widget.image.value = viewer.add_image(pixels, name="chelsea")
    widget.prompts.value = "cat\nsofa"
    widget.run()
    idle(qtbot, widget)
    assert "done" in widget.status.value, widget.status.value
    pts, labels, boxes = (viewer.layers[f"chelsea {n}"] for n in ("points", "labels", "boxes"))
    oracle = Oracle(sam2_model, pixels, SAM2ImagePredictor)
    expected = expected_labels(oracle, pts)
    assert len(set(np.unique(expected).tolist()) - {0}) >= 2  # real objects, not an empty picture
    np.testing.assert_array_equal(labels.data, expected)

    # move a positive point
    f = pts.features
    i = int(np.flatnonzero(f["positive"].to_numpy(bool))[0])
    moved = np.asarray(pts.data, float).copy()
    moved[i] = (150, 200)
    pts.data = moved
    idle(qtbot, widget)
    np.testing.assert_array_equal(labels.data, expected_labels(oracle, pts))

    # a box around that point prompts its object (points + box)
    oid = int(pts.features["object_id"].iloc[i])
    box = (110.0, 150.0, 210.0, 290.0)
    boxes.add_rectangles(np.array([box[:2], box[2:]], float))
    idle(qtbot, widget)
    assert int(boxes.features["object_id"].iloc[-1]) == oid
    np.testing.assert_array_equal(labels.data, expected_labels(oracle, pts, boxes={oid: box}))

    # next mask cycles SAM 2's three candidates of another object
    other, (p, lab) = next((o, v) for o, v in object_prompts(pts).items() if o != oid)
    j = int(np.flatnonzero((pts.features["object_id"] == other).to_numpy())[0])
    best = oracle.best_candidate(p, lab) if len(p) == 1 else -1
    assert_next_mask_cycles(qtbot, widget, pts, labels, j, best,
                            lambda cand: expected_labels(oracle, pts, boxes={oid: box}, candidates={other: cand}))
