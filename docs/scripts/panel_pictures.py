"""Pictures of the verify, probe and slice-finder panels in the real napari window
(docs/images/verify.png, few-shot.png, find-slice.png).

Run under a display: `xvfb-run -a -s "-screen 0 1600x1000x24" python docs/scripts/panel_pictures.py`.
Uses the tiny random-weight test models, so the numbers show the mechanism, not CLIP's accuracy.
"""

import sys
from pathlib import Path

root = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(root / "tests"))

import napari  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from qtpy.QtWidgets import QApplication  # noqa: E402
from skimage import data  # noqa: E402
from skimage.transform import resize  # noqa: E402

from napari_clipsam.widgets import ClipSamWidget  # noqa: E402
from synthetic_cells import cell_slices  # noqa: E402

from reference_model import load_reference_clip  # noqa: E402
from tiny_sam import build_tiny_sam  # noqa: E402

IMAGES = root / "docs" / "images"
MODELS = load_reference_clip(), build_tiny_sam(img_size=256, seed=3)


def settle(app, busy=lambda: False):
    while busy():
        app.processEvents()
    for _ in range(30):
        app.processEvents()


def shot(viewer, name):
    out = IMAGES / name
    viewer.screenshot(str(out), canvas_only=False, flash=False)
    img = Image.open(out).convert("RGB")
    img = img.quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    img.save(out, optimize=True)
    print(out, out.stat().st_size // 1024, "kB")
    viewer.close()


def viewer_with_main():
    viewer = napari.Viewer(title="napari-clipsam")
    viewer.window._qt_window.resize(1400, 950)  # room for the main widget and a panel below it
    main = ClipSamWidget(viewer)
    main.use_models(clip=MODELS[0], sam=MODELS[1])
    viewer.window.add_dock_widget(main, name="Annotate from words")
    return viewer, main


def tool(main, name):
    """The panel ``name`` as a user opens it: the main widget's tools button docks the three
    below it, as tabs; this one in front."""
    panel = main.open_tools()[name]
    settle(QApplication.instance())  # the tab bar exists once the docks are laid out
    panel.native.parentWidget().raise_()  # its tab
    return panel


def verify_picture(app):
    viewer, main = viewer_with_main()
    viewer.add_image(data.chelsea(), name="chelsea")
    main.prompts.value = "cat\nsofa"
    main.max_objects.value = 3
    main.run()
    settle(app, lambda: main.is_busy)
    panel = tool(main, "Verify masks")
    panel.min_probability.value = 0.6
    panel.verify()
    settle(app, lambda: panel.is_running)
    for lay in list(viewer.layers):
        if "heatmap" in lay.name:
            lay.visible = False
    viewer.reset_view()
    settle(app)
    shot(viewer, "verify.png")


def probe_picture(app):
    viewer, main = viewer_with_main()
    (img0, lab0), (img1, _) = cell_slices(2, seed=7, cells=5, debris=5, hard=True)
    train = viewer.add_image(img0, name="cells 1")
    test = viewer.add_image(img1, name="cells 2")
    ids = [int(i) for i in np.unique(lab0) if i][:3]
    viewer.add_labels(np.where(np.isin(lab0, ids), lab0, 0).astype(np.int32), name="accepted",
                      features={"index": [0, *ids], "class": ["background", "cell", "cell", "cell"],
                                "score": [np.nan, 1.0, 1.0, 1.0]})
    main.image.value = train
    main.prompts.value = "cell"
    main.resolution.value = 224
    panel = tool(main, "Few-shot probe")
    panel.labels.value = viewer.layers["accepted"]
    panel.train()
    settle(app, lambda: panel.is_running)
    panel.target.value = test
    panel.apply()
    settle(app, lambda: panel.is_running)
    train.visible = False
    viewer.layers["accepted"].visible = False
    viewer.reset_view()
    settle(app)
    shot(viewer, "few-shot.png")


def slice_picture(app):
    viewer, main = viewer_with_main()

    def gray(img):
        g = img if img.ndim == 2 else img[..., :3].mean(-1)
        return resize(g, (256, 256), preserve_range=True, anti_aliasing=True).astype(np.uint8)

    stack = np.stack([gray(f()) for f in (data.camera, data.coins, data.moon, data.astronaut, data.chelsea,
                                          data.coffee, data.rocket, data.cell, data.page, data.text)])
    viewer.add_image(stack, name="stack", contrast_limits=(0, 255))
    finder = tool(main, "Find slice")
    finder.image.value = viewer.layers["stack"]
    finder.query.value = "coins"
    finder.rank()
    settle(app, lambda: finder.is_running)
    viewer.reset_view()
    settle(app)
    shot(viewer, "find-slice.png")


if __name__ == "__main__":
    app = QApplication.instance() or napari.qt.get_qapp()
    chosen = sys.argv[1:] or ["verify", "probe", "slice"]
    for name in chosen:
        globals()[f"{name}_picture"](app)
