"""The widget's localizer options on a real viewer: method tooltips, channel composite,
sliding windows (progress and Cancel between windows), background prompts, absence."""

import numpy as np
from qtpy.QtCore import Qt
from skimage import data

from napari_clipsam.core.image import composite_rgb
from napari_clipsam.core.localizers import LOCALIZERS

TIMEOUT = 120_000


def _run(qtbot, widget, prompts="cat\nsofa"):
    widget.prompts.value = prompts
    widget.run()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT)


def test_every_method_is_offered_with_its_own_tooltip(viewer_widget):
    _, widget = viewer_widget
    box = widget.method.native
    items = [box.itemText(i) for i in range(box.count())]
    assert sorted(items) == sorted(LOCALIZERS)
    tips = {box.itemText(i): box.itemData(i, Qt.ItemDataRole.ToolTipRole) for i in range(box.count())}
    assert all(isinstance(t, str) and len(t) > 30 for t in tips.values()) and len(set(tips.values())) == len(tips)
    widget.method.value = "surgery"
    assert widget.method.tooltip.startswith("surgery:") and tips["surgery"] in widget.method.tooltip


def test_channel_layers_are_composited_as_displayed(viewer_widget):
    viewer, widget = viewer_widget
    from skimage.color import rgb2hed

    hed = rgb2hed(data.immunohistochemistry()[:256, :256])  # stain channels: hematoxylin (nuclei), DAB
    cells = [np.ascontiguousarray(hed[..., 0]), np.ascontiguousarray(hed[..., 2])]
    lim0 = (float(cells[0].min()), float(cells[0].max()))
    lim1 = (float(cells[1].min()), float(np.quantile(cells[1], 0.99)))
    mem = viewer.add_image(cells[0], name="hematoxylin", colormap="green", contrast_limits=lim0)
    nuc = viewer.add_image(cells[1], name="DAB", colormap="magenta", contrast_limits=lim1, gamma=0.8)
    widget.reset_choices()
    widget.image.value = mem
    offered = [c[1] if isinstance(c, tuple) else c for c in widget.composite_with.choices]
    assert mem not in offered and nuc in offered  # the chosen image is always in: not offered again
    widget.composite_with.value = [nuc]
    from napari_clipsam.widgets.inputs import displayed_plane, plane_rgb

    rgb = plane_rgb(mem, displayed_plane(viewer, mem), [nuc])
    expected = composite_rgb([cells[0], cells[1]], luts=["green", "magenta"],
                             contrast_limits=[lim0, lim1], gammas=[1.0, 0.8])
    assert rgb.shape == (256, 256, 3) and np.abs(rgb.astype(int) - expected).max() <= 1
    assert (rgb[..., 0] > 0).any() and (rgb[..., 1] > 0).any()  # magenta's red and green's green both there
    small = viewer.add_image(np.zeros((10, 10), np.uint16), name="small")
    assert widget.image.value is small  # just opened: the image to annotate
    widget.image.value = mem
    assert small not in [c[1] if isinstance(c, tuple) else c for c in widget.composite_with.choices]
    widget.composite_with.value = [nuc]
    nuc.data = np.zeros((10, 10))  # the chosen channel changes size afterwards
    widget.prompts.value = "nucleus"
    widget.run()  # a size mismatch is a notification, not a run
    assert not widget.is_running and "same size" in widget.error.value and len(viewer.layers) == 4


def test_windowed_run_reports_windows_and_cancel_between_windows_changes_nothing(qtbot, viewer_widget):
    viewer, widget = viewer_widget
    widget.resolution.value = 896
    widget.window.value = 224
    widget.prompts.value = "cat"
    widget.run()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT)
    windows = [(p.done, p.total) for p in widget.runner.log if p.stage == "heatmaps"]
    n = 5 * 7  # 300 x 451 at 896 px: a 592 x 896 working image, 224 px windows, stride 112
    assert windows == [(i, n) for i in range(n + 1)]
    assert widget.last_result.heatmaps.shape == (1, 300, 451)
    assert viewer.layers["chelsea heatmap [cat]"].data.shape == (37, 56)  # the 592 x 896 image's 16 px patches
    # cancel as soon as the first window reports
    for layer in list(viewer.layers)[1:]:
        viewer.layers.remove(layer)
    widget.prompts.value = "sofa"

    # Cancel pressed as the first window reports (the worker thread calls observers)
    widget.runner.observers.append(lambda p: p.stage == "heatmaps" and p.done == 1 and widget.runner.cancel())
    widget.run()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT)
    assert [layer.name for layer in viewer.layers] == ["chelsea"] and "cancelled" in widget.status.value


def test_background_prompts_and_absence_floor(qtbot, viewer_widget):
    viewer, widget = viewer_widget
    widget.background.value = "grass, sky"
    widget.absence_floor.value = "absolute"
    widget.floor_value.value = 50.0  # far above any margin: every prompt is absent
    _run(qtbot, widget, "cat\nsofa")
    result = widget.last_result
    assert result.absent == ["cat", "sofa"] and len(result.points) == 0
    assert widget.status.value.endswith("no points for 'cat' (nothing reaches the absence floor), "
                                        "'sofa' (nothing reaches the absence floor)"), widget.status.value
    for p in ("cat", "sofa"):
        layer = viewer.layers[f"chelsea heatmap [{p}]"]
        assert not layer.visible and layer.metadata["absent"] is True
        assert 0 < layer.metadata["presence"] < 1  # softmax over prompts and background
    assert "grass" not in " ".join(layer.name for layer in viewer.layers)
    # no floor, no minimum presence: points again and visible heatmaps
    widget.absence_floor.value = "none"
    _run(qtbot, widget, "cat\nsofa")
    assert widget.last_result.absent == [] and len(widget.last_result.points) > 0
    assert viewer.layers["chelsea heatmap [cat]"].visible and "no points" not in widget.status.value
    # a minimum presence above what CLIP gives 'sofa': the status says by how much
    presence = dict(zip(widget.last_result.prompts, widget.last_result.presence))
    widget.min_presence.value = round(presence["sofa"] + 0.01, 2)
    _run(qtbot, widget, "cat\nsofa")
    assert "sofa" in widget.last_result.absent
    assert f"'sofa' (presence {presence['sofa']:.2f} < min presence {widget.min_presence.value:.2f})" in \
        widget.status.value, widget.status.value


def test_bad_options_are_notifications(qtbot, viewer_widget):
    viewer, widget = viewer_widget
    widget.absence_floor.value = "quantile"
    assert widget.floor_value.value == 0.9  # each mode starts from a sensible value
    widget.absence_floor.value = "absolute"
    assert widget.floor_value.value == 0.0
    widget.absence_floor.value = "quantile"
    widget.floor_value.value = 3.0
    widget.prompts.value = "cat"
    widget.run()
    assert not widget.is_running and len(viewer.layers) == 1
    widget.absence_floor.value = "none"
    widget.background.value = "Cat"
    widget.run()  # both a prompt and a background prompt: a message before the run, no model loaded
    assert not widget.is_running and len(viewer.layers) == 1
    assert "is both a prompt and a background prompt" in widget.error.value


def test_custom_templates_reach_the_localizer_and_bad_ones_are_notifications(qtbot, viewer_widget):
    _, widget = viewer_widget
    assert widget.custom_templates.native.isHidden()  # the viewer is not shown: ask Qt if hidden
    widget.templates.value = "custom"
    assert not widget.custom_templates.native.isHidden()
    widget.custom_templates.value = "a micrograph of {}. | an image of {} in tissue."
    widget.prompts.value = "cat"
    widget.run()  # good templates: a run
    assert widget.is_running
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT)
    assert "done" in widget.status.value
    widget.custom_templates.value = "no slot here"
    widget.run()  # a bad template is a message before the run, kept in the widget
    assert not widget.is_running and "must contain" in widget.error.value


def test_more_options_fold_away_and_channel_choices_exclude_rgb_and_our_layers(qtbot, viewer_widget):
    viewer, widget = viewer_widget
    assert not widget.more_options.isExpanded() and widget.templates in widget.more
    widget.more_options.expand(animate=False)
    assert widget.more_options.isExpanded()
    _run(qtbot, widget, "cat")
    assert list(widget.composite_with.choices) == []  # an RGB image is not composited
    dapi = viewer.add_image(np.zeros((300, 451), np.uint16), name="dapi")
    viewer.add_image(np.zeros((300, 451), np.uint16), name="gfp")
    viewer.add_image(np.zeros((30, 45), np.uint16), name="thumbnail")
    widget.image.value = dapi
    names = [getattr(c, "name", c) for c in widget.composite_with.choices]
    assert names == ["gfp"]  # not chelsea (RGB), not our heatmap, not a layer of another size
    widget.composite_with.value = [viewer.layers["gfp"]]
    widget.image.value = viewer.layers["thumbnail"]  # the chosen channel does not carry over
    assert widget.composite_with.value == [] and list(widget.composite_with.choices) == []


def test_the_form_scrolls_as_a_whole_instead_of_growing_the_window(qtbot, docked):
    """napari docks the form without a scroll area: expanded "More options", many prompts or a
    long error raised the dock's minimum height by their full length (Run and Export went below
    a 768 px laptop screen's edge; with the tools docked below, the window grew past the
    screen). The form scrolls inside the dock instead, all of it reachable."""
    from qtpy.QtWidgets import QApplication

    viewer, widget = docked
    viewer.show()  # hidden widgets do not count in size hints
    window = viewer.window._qt_window
    window.resize(1000, 700)

    def settle():
        for _ in range(5):
            QApplication.processEvents()

    settle()
    height = window.height()
    widget.more_options.expand(animate=False)
    widget.prompts.value = "\n".join(f"prompt {i}" for i in range(60))
    widget.show_error("a failure", "details\n" * 300)
    widget.open_tools()
    settle()
    assert widget.native.minimumSizeHint().height() <= 260  # a few rows, the status and the error line
    widget.error_details_button.clicked.emit()  # Details…: the whole message, up to DETAILS_HEIGHT tall
    settle()
    assert widget.error_details.visible and widget.error_details_button.text == "Hide details"
    assert not widget.error_details.native.visibleRegion().isEmpty()  # scrolled into view (it stayed below)
    assert widget.error_details.native.height() >= 115  # it was 75 px: four lines of a long message
    assert window.height() == height  # not past the screen's edge
    assert widget.status.native.visibleRegion().boundingRect().height() > 0  # the status stays in view
    area = widget.scroll_area
    assert area.verticalScrollBar().maximum() > 0  # the rest is a scroll away ...
    area.ensureWidgetVisible(widget.tools_button.native)
    settle()
    bar = area.verticalScrollBar().value()
    assert bar > 0 and widget.tools_button.native.visibleRegion().boundingRect().height() > 0  # ... and reachable
    for button in (widget.run_button, widget.cancel_button):  # in view whatever the scroll (they were a scroll away)
        for value in (0, area.verticalScrollBar().maximum()):
            area.verticalScrollBar().setValue(value)
            settle()
            assert button.native.visibleRegion().boundingRect().height() >= button.native.height() - 2
    assert widget.more.native.height() >= widget.more.native.sizeHint().height()  # More options unclipped


def test_a_status_or_error_that_wraps_is_shown_whole(qtbot, docked):
    """The status line wraps; the dock's form layout sized it for one line, so a two-line
    status ("done: 2 heatmaps, 14 points, 7 objects; kept ...") was cut through the middle.
    In the footer (always in view) it shows up to FOOTER_LINES lines, whole lines, and the
    whole text is its tooltip."""
    from qtpy.QtWidgets import QApplication

    from napari_clipsam.widgets.form import FOOTER_LINES

    viewer, widget = docked
    viewer.show()
    for label, show in ((widget.status.native, widget.show_status),
                        (widget.error.native, lambda text: widget.show_error(text))):
        for text in ("ready", "done: 2 heatmaps, 14 points, 7 objects; kept 131 hand-painted pixels", "ok",
                     "done: 2 heatmaps, 14 points, 7 objects; kept 131 hand-painted pixels; " * 6):
            show(text)
            for _ in range(4):  # the layout requests climb one nested layout per event-loop turn
                QApplication.processEvents()
            cap = FOOTER_LINES * label.fontMetrics().lineSpacing()
            assert label.height() >= min(label.heightForWidth(label.width()), cap), (text, label.height())
            assert label.toolTip() == text
            if text == "ok":
                assert label.height() < 2 * label.fontMetrics().height() + 8  # and short again for one line
        assert label.height() <= FOOTER_LINES * label.fontMetrics().lineSpacing() + 8  # a long one: capped


def test_a_run_takes_at_most_32_prompts_and_says_so_before_loading_anything(qtbot, viewer_widget):
    """Each prompt adds a layer: 300 prompts held napari for minutes while their layers were
    added (that step is not cancelled half-way). Too many is a message before the run."""
    from napari_clipsam.widgets.annotate_widget import MAX_PROMPTS

    viewer, widget = viewer_widget
    widget.prompts.value = "\n".join(f"thing {i}" for i in range(MAX_PROMPTS + 1))
    widget.run()
    assert not widget.is_running and len(viewer.layers) == 1
    assert f"{MAX_PROMPTS + 1} prompts: a run takes at most {MAX_PROMPTS}" in widget.error.value


def test_the_wheel_scrolls_the_form_and_changes_no_field_it_passes_over(qtbot, docked):
    """In a scrolling form a wheel turned over a field changed it (the image, the method, the
    threshold) instead of scrolling; the scroll area took the keyboard focus and ate the arrow
    keys that step napari's slices. The form is still a magicgui Container of its fields."""
    from qtpy.QtCore import QPoint, QPointF, Qt
    from qtpy.QtGui import QWheelEvent
    from qtpy.QtWidgets import QApplication

    viewer, widget = docked
    viewer.show()
    viewer.window._qt_window.resize(900, 500)
    first = viewer.add_image(np.zeros((50, 60)), name="A")
    viewer.add_image(np.zeros((50, 60)), name="B")
    widget.image.value = first
    widget.more_options.expand(animate=False)
    qtbot.wait(50)
    bar = widget.scroll_area.verticalScrollBar()
    assert bar.maximum() > 0
    for field in (widget.image.native, widget.method.native, widget.max_objects.native):
        pos = QPointF(field.width() / 2, field.height() / 2)
        QApplication.sendEvent(field, QWheelEvent(pos, field.mapToGlobal(pos), QPoint(0, 0), QPoint(0, -120),
                                                  Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier,
                                                  Qt.ScrollPhase.NoScrollPhase, False))
    assert (widget.image.value, widget.method.value, widget.max_objects.value) == (first, "gem", 5)
    assert bar.value() > 0  # the wheel went to the form
    assert widget.scroll_area.focusPolicy() == Qt.FocusPolicy.NoFocus
    assert len(widget) > 10 and widget[0] is widget.image
    seen = []
    widget.changed.connect(lambda *_: seen.append(1))
    widget.threshold.value = 0.5
    assert seen


def test_fields_that_do_not_apply_are_disabled(viewer_widget):
    """'floor value' means something only for an absolute or quantile floor; 'slices' and
    'slice axis' only for an image with more than two dimensions."""
    viewer, widget = viewer_widget
    assert not widget.floor_value.enabled  # floor 'none'
    widget.absence_floor.value = "quantile"
    assert widget.floor_value.enabled
    widget.absence_floor.value = "otsu"
    assert not widget.floor_value.enabled
    assert widget.image.value.name == "chelsea" and not widget.slices.enabled and not widget.slice_axis.enabled
    stack = viewer.add_image(np.zeros((3, 20, 30)), name="stack")
    assert widget.image.value is stack and widget.slices.enabled and widget.slice_axis.enabled


def test_a_prompt_absent_on_some_slices_only_is_counted_not_called_absent(qtbot, docked):
    """All slices of a stack: a prompt with no points on some slices (but points on others)
    is reported as such, not as absent from the image with one slice's reason."""
    from skimage.transform import resize

    viewer, widget = docked
    planes = [resize(f(), (64, 64), preserve_range=True).astype(np.float32)
              for f in (lambda: data.chelsea()[..., 0], data.camera, data.coins)]
    viewer.add_image(np.stack(planes), name="stack")
    widget.slices.value = "all along axis"
    _run(qtbot, widget, "cat\nsofa")
    cat = sorted(float(r.presence[0]) for r in widget.last_results)
    assert cat[0] < cat[-1]
    widget.min_presence.value = round((cat[0] + cat[-1]) / 2, 2)
    assert cat[0] < widget.min_presence.value <= cat[-1]
    _run(qtbot, widget, "cat\nsofa")
    n = sum(r.presence[0] < widget.min_presence.value for r in widget.last_results)
    assert 0 < n < 3
    assert f"no points for 'cat' on {n} of 3 slices" in widget.status.value, widget.status.value
    assert "'cat' (presence" not in widget.status.value
