"""Screenshot of the real napari window running the plugin (docs/images/napari-clipsam.png).

Run under a display (e.g. `xvfb-run -a -s "-screen 0 1600x1000x24" python docs/scripts/screenshot.py`).
Uses the tiny random-weight test models (no weights can be downloaded where the docs are
built), so the heatmaps show the pipeline working, not CLIP's real accuracy.
"""

import sys
from pathlib import Path

root = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(root / "tests"))

import napari  # noqa: E402
from qtpy.QtWidgets import QApplication  # noqa: E402

from napari_clipsam.widgets import ClipSamWidget  # noqa: E402

from reference_model import load_reference_clip  # noqa: E402
from tiny_sam import build_tiny_sam  # noqa: E402

viewer = napari.Viewer(title="napari-clipsam")  # napari's default window size
viewer.open_sample("napari-clipsam", "chelsea")
widget = ClipSamWidget(viewer)
widget.use_models(clip=load_reference_clip(), sam=build_tiny_sam(img_size=256, seed=3))
viewer.window.add_dock_widget(widget, name="Annotate from words")
widget.prompts.value = "cat\nsofa"
widget.run()
app = QApplication.instance()
while widget.is_busy:
    app.processEvents()
for _ in range(20):
    app.processEvents()
viewer.layers["chelsea heatmap [sofa]"].visible = False
viewer.layers.selection.active = viewer.layers["chelsea points"]
viewer.reset_view()  # the whole image in view
for _ in range(20):
    app.processEvents()
size = viewer.window._qt_window.size()
print(f"window {size.width()} x {size.height()}, dock {widget.native.width()} px, "
      f"canvas {viewer.window._qt_viewer.canvas.native.width()} px wide")
out = root / "docs" / "images" / "napari-clipsam.png"
viewer.screenshot(str(out), canvas_only=False, flash=False)
print(out)
viewer.close()
