"""The dock widget: the form plus wiring.

Run: the chosen image layer's displayed plane (or every plane along an axis) goes through
``core.pipeline.annotate`` in a worker (``runner``), its SAM work through the widget's one
``SamQueue``; results enter the viewer only when the run returns (``layer_writer``), so a
cancelled or failed run leaves the viewer as it was. Each annotated image gets a
``LiveEditor`` that keeps its labels in step with its points and boxes.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from napari.layers import Image, Labels, Points
from napari.utils.notifications import show_error as notify_error
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import QEvent, QObject, QTimer

from .. import core as _core  # noqa: F401  (the triton/Mesa guard before torch)
from ..core.absence import AbsenceRule, explain_absent
from ..core.annotation import ImageAnnotation, Plane, SamQueue
from ..core.localizers import check_background, check_prompts, get_localizer
from ..core.localizers.prompts import resolve_templates
from ..core.progress import Task
from . import kept_states as KS
from . import layer_writer as LW
from . import result_writer as RW
from .form import AnnotateForm
from .inputs import check_channels, displayed_plane, plane_rgb, planes_to_annotate, spatial_shape
from .live_editor import LiveEditor
from .model_cache import ModelCache
from .run_support import annotate_via_queue, provenance, run_record
from .runner import Runner

#: suffixes of file types that labels cannot be exported as (typed in the export dialog, refused
#: with the formats that can); any other dotted ending is part of the name
_OTHER_FILE_TYPES = frozenset(
    ".csv .tsv .txt .xlsx .xls .jpg .jpeg .gif .bmp .webp .svg .pdf .h5 .hdf5 .nii .gz .mrc .czi .lif .nd2 "
    ".ims .lsm .vsi .oib .oir .ics .dcm .roi .zip .pkl .pt .pth .npz .mat .xml .yaml .yml .html .md .geojson "
    ".jp2 .jxl .heic .avif .ppm .pgm .parquet .feather .arrow .tar .xz .bz2 .7z .rar .svs .ndpi .scn .exr "
    ".docx .doc .pptx .ods .odt .rtf .log .ini .toml .jsonl .ndjson .sqlite .db .zarr2 .n5 .klb .lsm2".split())

#: the most prompts one run takes (one heatmap layer each; napari's adding a layer costs ~0.1-0.4 s
#: of the GUI thread, more as layers pile up)
MAX_PROMPTS = 32


def _snapshot(layer) -> dict:
    """A points or shapes layer's rows, features, look and placement as they are now (copies)."""
    snap = dict(name=layer.name, ndim=layer.ndim, features=layer.features.copy(),
                **{k: np.array(getattr(layer, k), copy=True) for k in ("scale", "translate", "rotate", "shear")})
    if hasattr(layer, "shape_type"):
        return dict(snap, kind="shapes", data=LW.rows_copy(layer), shape_type=list(layer.shape_type),
                    edge_color=np.array(layer.edge_color, copy=True))
    return dict(snap, kind="points", data=LW.rows_copy(layer), size=np.array(layer.size, copy=True))


class ClipSamWidget(AnnotateForm):
    """Annotate an image layer from words: CLIP heatmaps, points, SAM labels."""

    def __init__(self, napari_viewer):
        super().__init__()
        # docked from the Plugins menu, napari passes a PublicOnlyProxy of the viewer, whose
        # every layer access makes a new proxy: the same layer would not be itself (``is``)
        # from one access to the next, nor the object its events come from. The widget keeps
        # the viewer itself (it uses napari's public API only; the tests run it this way).
        self.viewer = getattr(napari_viewer, "__wrapped__", napari_viewer)
        self.sam_queue = SamQueue()
        self.editors: list[LiveEditor] = []
        #: the last run's ``Annotation`` per annotated plane, in plane order (all slices: one per
        #: slice; only the last keeps its image-size heatmaps), and the last of them
        self.last_results: list = []
        self.last_result = None
        self.models = ModelCache()
        self.runner = Runner(self.progress, self.show_status)

        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.new_object_button.changed.connect(self.new_object)
        self.flip_button.changed.connect(self.flip_selected)
        self.next_mask_button.changed.connect(self.next_mask)
        self.semantic_button.changed.connect(self.semantic_view)
        self.export_button.changed.connect(self._export_dialog)
        self.tools_button.changed.connect(self.open_tools)
        self.tools: dict = {}  # name -> panel, once opened
        self._tool_docks: list = []  # their napari dock widgets
        #: optional callable applied to each run's localizer (e.g. a few-shot probe's
        #: ``LinearProbe.localizer``); None runs the method as chosen
        self.localizer_wrapper = None

        self.closed = False
        self._edit_error = False  # the error line shows a failed edit (the next edit that works clears it)
        self._ahead: Task | None = None
        self._ahead_timer = QTimer()
        self._ahead_timer.setSingleShot(True)
        self._ahead_timer.setInterval(300)
        self._ahead_timer.timeout.connect(self.embed_ahead)
        self.image.changed.connect(self._schedule_ahead)
        self.image.changed.connect(lambda *_: self._layers_changed())  # 'composite with' lists the other images
        self.viewer.dims.events.current_step.connect(self._schedule_ahead)
        self.native.destroyed.connect(self._on_destroyed)
        # napari's dock close button (remove_dock_widget) takes the widget out of its dock
        # (setParent(None)) without destroying it: that is a close too
        self._parent_watch = _ParentWatch(self.close_down)
        self.native.installEventFilter(self._parent_watch)
        layers = self.viewer.layers
        layers.events.inserted.connect(self._layers_changed)
        layers.events.removed.connect(self._layers_changed)
        layers.events.moved.connect(self._layers_changed)
        for layer in layers:
            layer.events.name.connect(self._layers_changed)
        self._layers_changed()
        active = layers.selection.active
        if isinstance(active, Image):
            self.image.value = active
        self._resume_kept()

    def _resume_kept(self) -> None:
        """Go on editing what a closed widget annotated in this viewer (its image, labels and
        points layers still there): its editors are made again at once, so point edits, the
        keys and the buttons work as before; SAM loads at the first edit that needs it."""
        names, last = [], []  # (generation, prompts, image layer) of each image's last run
        for labels, kept in KS.resumable(self.viewer):
            image = kept.image()
            if KS.take(labels, spatial_shape(image)) is None:
                continue
            for ann in kept.state.planes.values():  # painted while no editor watched the layer
                ann.note_painting(ann.plane.take(labels.data))
            points = kept.layer("points", self.viewer)
            editor = LiveEditor(self.viewer, image, points, labels, kept.layer("boxes", self.viewer), kept.state,
                                self.sam_queue, kept.pixels or (lambda plane, lay=image: plane_rgb(lay, plane, [])),
                                on_applied=self._after_edit, on_error=self._edit_failed, on_note=self.show_status,
                                displayed=lambda lay=image: displayed_plane(self.viewer, lay), history=kept.history)
            editor.record = kept.record
            editor.user_edits = kept.edits(self.viewer)  # a re-run keeps a copy of them
            sam = (kept.record or {}).get("sam") or {}
            if sam.get("kind") in self.sam_model.choices:  # the SAM its masks came from, not this widget's default
                self.sam_model.value = sam["kind"]
            # edits decode with the SAM the run recorded (kind and checkpoint file), whatever the boxes say now
            recorded = sam.get("kind") not in (None, "given by script")  # a script's model: use_models again
            editor.session_opener = functools.partial(self._session_opener, sam["kind"], _own_checkpoint(sam)) \
                if recorded else self._session_opener
            self.editors.append(editor)
            self._bind_keys(points)
            names.append(f"'{image.name}'")
            if kept.state.planes:
                newest = max(kept.state.planes.values(), key=lambda a: a.generation)
                last.append((newest.generation, newest.prompts, image))
        if last and not self.prompts.value.strip():  # the chosen image's last prompts, else the newest run's
            chosen = [entry for entry in last if entry[2] is self.image.value or entry[2] == self.image.value]
            self.prompts.value = "\n".join(max(chosen or last, key=lambda entry: entry[0])[1])
        if names:
            self.show_status(f"went on with {', '.join(names)} from the closed widget: edit the points as before "
                             "(SAM loads at the first edit)")

    def _session_opener(self, kind=None, path=None):
        """The function that opens a SAM session (run in a worker): of ``kind`` and checkpoint
        ``path`` (default: the model now chosen), or the model a script gave."""
        if kind is None:
            kind, path = self.sam_model.value, self.sam_file.value
        in_use = [e.state.session for e in self.editors]  # read here, on the GUI thread

        def open_session():
            sam = self.models.sam(kind, path or None, None)
            return self.models.session(sam, in_use)
        return open_session

    # ------------------------------------------------------------------ lifetime
    def _on_destroyed(self, *_) -> None:
        """The dock (or the viewer) was closed: stop all work, follow nothing any more."""
        self.close_down()

    def close_down(self) -> None:
        """Cancel the run, stop following layers, drop pending decodes' results."""
        if self.closed:
            return
        self.closed = True
        self.runner.cancel()
        if self._ahead is not None:
            self._ahead.cancel()
        self.viewer.dims.events.current_step.disconnect(self._schedule_ahead)
        self.runner.stop_display()
        layers = self.viewer.layers
        for editor in self.editors:
            editor.close()
            self._unbind_keys(editor.points_layer)  # its bindings held this widget
            if editor.labels_layer in layers and editor.image_layer in layers:
                KS.keep(editor, with_layers=True)  # a widget opened later goes on from here
        self.editors = []
        self.models.release()  # CLIP and SAM leave memory with the widget
        for panel in self.tools.values():  # they work with this widget's models and options
            panel.cancel()
        for dock in self._tool_docks:
            try:
                self.viewer.window.remove_dock_widget(dock)
            except (LookupError, RuntimeError, AttributeError):  # the window is closing, or the user closed it
                pass
        self.tools, self._tool_docks = {}, []
        layers = self.viewer.layers
        for emitter in (layers.events.inserted, layers.events.removed, layers.events.moved):
            emitter.disconnect(self._layers_changed)
        for layer in layers:
            layer.events.name.disconnect(self._layers_changed)

    # ------------------------------------------------------------------ layer choices
    def _layers_changed(self, event=None) -> None:
        """The image fields follow layers added, removed and renamed."""
        if self.closed:
            return
        if event is not None and getattr(event, "type", "") == "inserted":
            event.value.events.name.connect(self._layers_changed)
        if event is not None and getattr(event, "type", "") == "removed":
            self._forget(event.value)
        images = [lay for lay in self.viewer.layers if isinstance(lay, Image) and not LW.is_ours(lay)]
        current = self.image.value
        self.image.choices = [(lay.name, lay) for lay in images]
        opened = event.value if event is not None and getattr(event, "type", "") == "inserted" else None
        annotating = current in images and self.editor_for(current) is not None
        if opened in images and not self.is_running and not annotating:
            self.image.value = opened  # an image the user opens is the one to annotate ...
        elif current in images:
            self.image.value = current  # ... unless one is being annotated (a reference image, a copy)
            if opened in images and annotating:
                self.show_status(f"'{opened.name}' opened; still annotating '{current.name}' (choose '{opened.name}' "
                                 "in 'image' to annotate it)")
        elif images:
            self.image.value = images[-1]
        chosen_image = self.image.value
        stack = chosen_image is not None and len(spatial_shape(chosen_image)) > 2
        self.slices.enabled = self.slice_axis.enabled = stack  # a 2D image has no slices to choose
        # channels to blend with the image: single-channel layers of its size (others cannot be)
        size = spatial_shape(chosen_image) if chosen_image is not None and not chosen_image.rgb else None
        channels = [lay for lay in images if not lay.rgb and lay is not chosen_image and spatial_shape(lay) == size]
        chosen = [lay for lay in (self.composite_with.value or []) if lay in channels]
        self.composite_with.choices = [(lay.name, lay) for lay in channels]
        self.composite_with.value = chosen

    def reset_choices(self, *_) -> None:
        self._layers_changed()

    def _retire(self, editor: LiveEditor) -> None:
        """Stop ``editor`` and leave its layers as they are, no longer ours to update: the
        next run on its image gets new layers (its data changed shape, so the old labels and
        points describe pixels that are gone; what the user drew on them is kept)."""
        editor.close()
        self.editors.remove(editor)
        self._unbind_keys(editor.points_layer)
        for layer in (editor.points_layer, editor.labels_layer, editor.boxes_layer):
            if layer is not None:
                layer.metadata.pop(LW.OWNER_KEY, None)

    def _forget(self, layer) -> None:
        KS.forget(layer)
        for editor in list(self.editors):
            if layer in (editor.image_layer, editor.points_layer, editor.labels_layer):
                editor.close()
                self.editors.remove(editor)
                if layer is not editor.labels_layer and layer is not editor.image_layer:
                    # the labels stay: the next run on them takes this state up, so it knows which
                    # pixels the plugin wrote (replaced) and which the user painted (kept)
                    KS.keep(editor, with_layers=False)
                if layer is editor.image_layer and editor.points_layer in self.viewer.layers:
                    self.show_status(f"'{layer.name}' was removed: its points and labels no longer follow edits "
                                     "(they stay as they are)")

    # ------------------------------------------------------------------ models
    def use_models(self, clip=None, sam=None) -> None:
        """Use already-loaded models: clip = (open_clip model, tokenizer), sam = a segment-anything
        ``Sam`` or a sam2 ``SAM2Base``."""
        self.models.use(clip, sam)

    def _schedule_ahead(self, *_) -> None:
        if not self.closed:
            self._ahead_timer.start()  # after the user settles on an image or slice

    def embed_ahead(self) -> bool:
        """Start SAM's embedding of the chosen image's displayed plane in the background, on
        the one SAM queue, so that Run's SAM stage finds it ready. Only once SAM is in memory
        (after a first run, or given with ``use_models``); a newer request cancels an older one
        that has not started. Returns whether one was started."""
        if self.closed or self.is_running:
            return False
        layer = self.image.value
        sam = self.models.loaded_sam(self.sam_model.value, self.sam_file.value)
        if layer is None or layer not in self.viewer.layers or sam is None:
            return False
        try:
            plane = displayed_plane(self.viewer, layer)
        except ValueError:
            return False
        others = [lay for lay in (self.composite_with.value or []) if lay in self.viewer.layers]
        session = self.models.session(sam, [e.state.session for e in self.editors])
        if self._ahead is not None:
            self._ahead.cancel()
        task = self._ahead = Task()

        def job():
            task.check()
            session.set_image(plane_rgb(layer, plane, others))

        future = self.sam_queue.submit(job)
        future.add_done_callback(lambda f: f.exception())  # cancelled or bad pixels: Run will say
        return True

    # ------------------------------------------------------------------ state
    @property
    def is_running(self) -> bool:
        """True while a run (models, heatmaps, points, masks) is going."""
        return self.runner.is_running

    @property
    def is_busy(self) -> bool:
        """True while a run or any mask update is pending."""
        return self.is_running or self.sam_queue.busy or any(e.busy for e in self.editors)

    def editor_for(self, image_layer) -> LiveEditor | None:
        for editor in self.editors:
            if editor.image_layer is image_layer and editor.layers_alive():
                return editor
        return None

    # ------------------------------------------------------------------ run
    def _localizer_params(self) -> dict:
        background = [b.strip() for b in self.background.value.split(",") if b.strip()]
        templates = self.templates.value
        if templates == "custom":
            templates = [t.strip() for t in self.custom_templates.value.split("|") if t.strip()]
            resolve_templates(templates, ())  # a bad template is a message before the run
        return dict(templates=None if templates == "method default" else templates,
                    input_size=int(self.resolution.value), window=int(self.window.value) or None,
                    background=check_prompts(background) if background else ())

    def _absence_rule(self) -> AbsenceRule | None:
        rule = AbsenceRule(self.absence_floor.value, float(self.floor_value.value), float(self.min_presence.value))
        return None if (rule.floor == "none" and rule.min_presence == 0) else rule

    def _planes(self, layer) -> list[Plane]:
        axis = None if self.slices.value == "displayed" else int(self.slice_axis.value)
        return planes_to_annotate(self.viewer, layer, axis)

    def run(self) -> None:
        """Start a run on the chosen image layer (a message instead if one is running or
        the input is wrong)."""
        if self.closed:
            raise RuntimeError("this napari-clipsam widget was closed; open a new one")
        if self.is_running:
            task = self.runner.task
            show_info("napari-clipsam: the cancelled run is still stopping (at its next step); press Run again "
                      "in a moment" if task is not None and task.cancelled
                      else "napari-clipsam is already running; cancel it first")
            return
        self.clear_error()
        layer = self.image.value
        if layer is None or layer not in self.viewer.layers:
            self._fail("pick an image layer first (open an image, then choose it in 'image')")
            return
        try:
            prompts = check_prompts([ln for ln in self.prompts.value.splitlines() if ln.strip()])
            if len(prompts) > MAX_PROMPTS:
                raise ValueError(f"{len(prompts)} prompts: a run takes at most {MAX_PROMPTS} (each adds a heatmap "
                                 "layer, and adding hundreds of layers would hold napari for minutes). For a larger "
                                 "vocabulary, annotate from Python (napari_clipsam.core.pipeline.annotate) or with "
                                 "'napari-clipsam batch', which add no layers")
            planes = self._planes(layer)
            others = [lay for lay in (self.composite_with.value or []) if lay in self.viewer.layers]
            check_channels(layer, others)  # a mismatch is a message before the run (the pixels are read in it)
            params = self._localizer_params()
            check_background(prompts, params["background"])
            absence = self._absence_rule()
        except ValueError as exc:
            self._fail(str(exc))
            return
        cfg = dict(method=self.method.value, clip=self.clip_model.value, clip_file=self.clip_file.value,
                   sam=self.sam_model.value, sam_file=self.sam_file.value, localizer=params, absence=absence,
                   threshold=float(self.threshold.value), max_objects=int(self.max_objects.value),
                   one_object_per_prompt=bool(self.one_object_per_prompt.value),
                   boxes_from_heatmaps=bool(self.boxes_from_heatmaps.value))

        wrapper = self.localizer_wrapper
        full_resolution = bool(self.full_resolution_heatmaps.value)

        def pixels_now(plane: Plane) -> np.ndarray:
            """The plane's pixels as the layers hold them now (what live decodes embed)."""
            return plane_rgb(layer, plane, others)

        def job(task):
            # the pixels are read here, not on the GUI thread (a large or lazy image would freeze
            # napari), and before the models load, so bad pixels are a message within moments
            task.report("reading the image")
            def on_slice(i: int, step):
                """``step()``; a ValueError of a stack's slice says which slice it is."""
                try:
                    return step()
                except ValueError as exc:
                    if len(planes) == 1:
                        raise
                    raise ValueError(f"slice {i + 1}/{len(planes)} ({planes[i].describe()}): {exc}") from exc

            first = on_slice(0, lambda: pixels_now(planes[0]))

            def pixels(plane: Plane) -> np.ndarray:
                return first if plane == planes[0] else pixels_now(plane)

            task.report("looking for the model weights")
            self.models.check_offline(cfg["clip"], cfg["clip_file"], cfg["sam"], cfg["sam_file"])
            task.report("loading CLIP")
            clip_model, tokenizer = self.models.clip(cfg["clip"], cfg["clip_file"], task)
            task.report("loading SAM")
            sam = self.models.sam(cfg["sam"], cfg["sam_file"], task)
            localizer = get_localizer(cfg["method"], clip_model, tokenizer, **cfg["localizer"])
            if wrapper is not None:
                localizer = wrapper(localizer)
            session = self.models.session(sam, [e.state.session for e in self.editors])
            task.report("recording the models")  # weights' sha256 for the provenance (hashed once per file)
            record = run_record(cfg, localizer, clip_model, sam, self.models.given, layer)
            out = []
            for i, plane in enumerate(planes):
                part = task.within(f"slice {i + 1}/{len(planes)}", (i, len(planes))) if len(planes) > 1 else task
                result = on_slice(i, lambda plane=plane, part=part: annotate_via_queue(
                    self.sam_queue, pixels(plane), prompts, localizer, session, cfg, part))
                if out and not full_resolution:  # keep one plane's image-size maps (last_result), not all
                    RW.slim(out[-1][1])
                out.append((plane, result))
            heat = RW.heatmap_layers(layer, out, full_resolution=full_resolution)  # layers' data made here
            return session, out, record, heat

        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.show_status(f"starting on '{layer.name}'")
        editor = self.editor_for(layer)
        started = {"shape": spatial_shape(layer), "absence": absence,  # what the run's results are checked against
                   "data": [(lay, lay.data) for lay in (layer, *others)],
                   "points": None if editor is None else (editor.points_layer, np.array(editor.points_layer.data))}
        self.runner.start(job, on_done=lambda res, lay=layer: self._on_done(lay, res, pixels_now, started),
                          on_failed=self._on_failed, on_cancelled=self._on_cancelled,
                          on_apply_failed=self._on_apply_failed, label="napari-clipsam run")

    def cancel(self) -> None:
        """Stop the run at its next step (between windows, slices, stages or download chunks);
        results already being added to the viewer are added in full."""
        if self.is_running and not self.runner.applying:
            self.show_status("cancelling…")
            self.runner.cancel()
        elif self.is_running:
            show_info("napari-clipsam: the run's results are being added to the viewer; that is not stopped "
                      "half-way (it would leave some of them), it ends in a moment. To undo it, delete the new "
                      "layers or press Ctrl+Z in the labels layer")

    def _end_run(self) -> None:
        self.run_button.enabled = True
        self.cancel_button.enabled = False

    def _fail(self, short: str, details: str = "") -> None:
        self.show_status("failed: nothing was changed")
        self.show_error(short, details)
        notify_error(f"napari-clipsam: {short}")

    def _on_failed(self, short: str, details: str) -> None:
        if self.closed:
            return
        self._end_run()
        self._fail(short, details)

    def _on_apply_failed(self, short: str, details: str) -> None:
        """A step of adding the results raised: say what state the viewer is in."""
        if self.closed:
            return
        self._end_run()
        self.show_status("failed while adding the results: some layers may hold this run's results")
        self.show_error(f"{short} (while adding the results)", details)
        notify_error(f"napari-clipsam: adding the results failed: {short}")

    def _on_cancelled(self) -> None:
        if self.closed:
            return
        self._end_run()
        last: dict[str, object] = {}  # each download's last report in this run
        for p in self.runner.log:
            if p.unit == "bytes":
                last[p.stage] = p
        partial = [p.stage for p in last.values() if not p.total or p.done < p.total]
        self.show_status("cancelled: nothing was changed" + (
            f" ({partial[0]} stopped; it resumes from where it stopped next time)" if partial else ""))

    def _on_done(self, image_layer, payload, pixels, started):
        """The run's results enter the viewer in steps, one per event-loop turn (a generator
        the runner advances): each heatmap layer, each new layer, each plane's labels, the
        points, the boxes, the features (the live editor held until the last)."""
        if self.closed:
            return None  # the widget is gone: a run's results never land in a closed viewer
        self.cancel_button.enabled = False
        session, results, record, heat = payload
        if image_layer not in self.viewer.layers:
            self._end_run()
            self.show_status("image layer was removed: results discarded")
            show_warning(f"napari-clipsam: the image layer '{image_layer.name}' was removed during the run; "
                         "its results were discarded")
            return None
        shape = started["shape"]
        if spatial_shape(image_layer) != shape:
            self._end_run()
            now = " x ".join(map(str, spatial_shape(image_layer)))
            self.show_status("the image changed shape during the run: results discarded")
            show_warning(f"napari-clipsam: the data of '{image_layer.name}' changed shape during the run "
                         f"({' x '.join(map(str, shape))} -> {now}); its results were discarded. Run again")
            return None
        replaced = [lay.name for lay, data in started["data"] if lay.data is not data]
        if replaced:
            self._end_run()
            self.show_status("the image's pixels were replaced during the run: results discarded")
            show_warning(f"napari-clipsam: the data of '{replaced[0]}' was replaced during the run; its results "
                         "(made from the pixels it had before) were discarded. Run again")
            return None
        return self._apply(image_layer, session, results, record, heat, pixels, started["points"],
                           started["absence"])

    def _apply(self, image_layer, session, results, record, heat, pixels, points_before=None, absence=None):
        # what the user changed in the points and boxes layers since the plugin last wrote them,
        # before the run or while it ran (read before the plugin changes anything): the run
        # replaces their plane's rows, so a hidden copy of each keeps the user's work
        before = self.editor_for(image_layer)
        edited_while_running = points_before is not None and not np.array_equal(
            points_before[1], np.asarray(points_before[0].data))
        changed = set(before.user_edits) if before is not None else set()
        if edited_while_running and before is not None and points_before[0] is before.points_layer:
            changed.add("points")
        snapshots = {}
        for which in sorted(changed):
            layer = before.points_layer if which == "points" else before.boxes_layer
            if layer is not None and layer in self.viewer.layers and len(layer.data):
                snapshots[which] = _snapshot(layer)
        kept_edits = []
        try:
            self.last_results = [r for _, r in results]
            self.last_result = self.last_results[-1]
            self.show_status("adding the results")
            for item in heat:
                RW.write_heatmap(self.viewer, image_layer, item)
                yield
                if not self._still_there(image_layer):
                    return
            stale = RW.hide_other_heatmaps(self.viewer, image_layer, list(results[-1][1].prompts))
            editor = self.editor_for(image_layer)
            if editor is not None and editor.shape_problem() is not None:
                self._retire(editor)  # the image's data changed shape since: new layers, the old ones kept
                editor = None
            if editor is None:
                shape = spatial_shape(image_layer)
                kept = KS.take(LW.find_labels_of(self.viewer, image_layer), shape)
                old_points = kept.layer("points", self.viewer) if kept is not None else None
                prompts = list(results[-1][1].prompts)
                points, labels, boxes = yield from RW.new_layer_steps(
                    self.viewer, image_layer, prompts, points=old_points,
                    boxes=kept.layer("boxes", self.viewer) if old_points is not None else None)
                yield
                if not self._still_there(image_layer, points, labels, boxes):
                    if kept is not None and labels in self.viewer.layers:
                        KS.put_back(labels, kept)  # for the next run on them
                    return
                state = kept.state if kept is not None else None
                if state is not None:
                    for ann in state.planes.values():  # painted while no editor watched the layer
                        ann.note_painting(ann.plane.take(labels.data))
                if state is not None and old_points is None:
                    # its other planes lost their points: their masks count as painted, keeping
                    # their ids (no new object takes one) and classes
                    run_planes = {plane for plane, _ in results}
                    for plane, ann in state.planes.items():
                        if plane not in run_planes:
                            state.painted_classes.update(ann.classes)
                            ann.hand_over()
                state = state or ImageAnnotation(shape, session)
                editor = LiveEditor(self.viewer, image_layer, points, labels, boxes, state, self.sam_queue, pixels,
                                    on_applied=self._after_edit, on_error=self._edit_failed, on_note=self.show_status,
                                    displayed=lambda lay=image_layer: displayed_plane(self.viewer, lay),
                                    history=kept.history if kept is not None else None)
                self.editors.append(editor)
                self._bind_keys(points)
            elif editor.boxes_layer is None or editor.boxes_layer not in self.viewer.layers:
                editor.attach_boxes(RW.new_boxes_layer(self.viewer, image_layer))  # the user deleted it: anew,
                yield  # as the points and labels layers are, so the run's boxes are seen and edited
            where = LW.placement(image_layer)  # the image may have moved since the last run ...
            for layer, name in ((editor.labels_layer, LW.labels_name), (editor.points_layer, LW.points_name),
                                (editor.boxes_layer, LW.boxes_name)):
                if layer is not None and layer in self.viewer.layers:
                    LW.place(layer, where)
                    LW.follow_image_name(self.viewer, layer, name(image_layer.name))  # ... or been renamed
            editor.pixels = pixels
            editor.state.session = session
            editor.state.shape = spatial_shape(image_layer)
            if editor is before:
                why = "edited during the run" if edited_while_running else "as you edited them"
                kept_edits = [self._keep_user_layer(snap, why) for snap in snapshots.values()]
            kept = yield from RW.write_run_steps(editor, results)
            editor.user_edits.clear()  # the layers hold the run's rows now
            editor.record = record
            if editor.points_layer in self.viewer.layers:  # what the user edits next, and where T / N / M work
                self.viewer.layers.selection.active = editor.points_layer
        finally:  # also when a step raises (the runner then reports it: _on_apply_failed)
            if not self.closed:
                self._end_run()
        n_points = sum(len(r.points) for _, r in results)
        # prompts absent on every annotated plane, with the first plane's reason; on some planes only: counted
        absent_on = [set(r.absent) for _, r in results]
        everywhere = set.intersection(*absent_on) if absent_on else set()
        reasons = {}
        for _, r in results:
            for prompt, why in explain_absent(r.prompts, r.absent, r.presence,
                                              absence.min_presence if absence else 0.0).items():
                if prompt in everywhere:
                    reasons.setdefault(prompt, why)
        partly = {p: sum(p in a for a in absent_on) for p in dict.fromkeys(x for a in absent_on for x in a)
                  if p not in everywhere}
        why = ", ".join(f"'{p}' ({why})" for p, why in reasons.items())
        if reasons:
            show_info(f"napari-clipsam: no points for {why}. Their heatmaps are added hidden; lower 'min presence' "
                      "or the absence floor (More options) to get points for them")
        note = f"; kept {kept} hand-painted pixels" if kept else ""
        if reasons:
            note += f"; no points for {why}"
        if partly:
            note += "; no points for " + ", ".join(f"'{p}' on {n} of {len(results)} slices" for p, n in partly.items())
        if stale:
            note += f"; hid {len(stale)} heatmap{'s' if len(stale) > 1 else ''} of earlier prompts"
        if kept_edits:
            names = " and ".join(f"'{name}'" for name in kept_edits)
            note += f"; your edits {'while it ran ' if edited_while_running else ''}are kept in {names} (hidden)"
        counts = ", ".join(f"{n} {what}{'s' if n != 1 else ''}" for n, what in (
            (len(results[-1][1].prompts), "heatmap"), (n_points, "point"), (self.count_objects(image_layer), "object")))
        self.show_status(f"done: {counts}{note}")

    def _keep_user_layer(self, snap: dict, why: str) -> str:
        """A hidden points or shapes layer of the user's own (the plugin never changes it)
        holding a points or boxes layer as the user left it (``snap``: ``_snapshot``); returns
        its name."""
        placement = {k: snap[k] for k in ("scale", "translate", "rotate", "shear")}
        name = f"{snap['name']} ({why})"
        if snap["kind"] == "points":
            copy = self.viewer.add_points(snap["data"], features=snap["features"], name=name, ndim=snap["ndim"],
                                          visible=False, size=snap["size"], border_color="white", **placement)
            LW.recolor(copy)  # positive green, negative magenta, as in the points layer
        else:
            copy = self.viewer.add_shapes(snap["data"], shape_type=snap["shape_type"], features=snap["features"],
                                          name=name, ndim=snap["ndim"], visible=False, face_color="transparent",
                                          edge_color=snap["edge_color"], **placement)
        return copy.name

    def _still_there(self, image_layer, *layers) -> bool:
        """Between steps: the widget is open and the run's layers are in the viewer (else
        the rest of the results are dropped, with a status line saying so)."""
        if self.closed:
            return False
        gone = [lay for lay in (image_layer, *layers) if lay is not None and lay not in self.viewer.layers]
        if gone:
            self.show_status(f"'{gone[0].name}' was removed while the results were added: the rest was dropped")
        return not gone

    def count_objects(self, image_layer=None) -> int:
        """Objects visible in the labels layer of ``image_layer`` (default: the chosen image):
        the rows of its features table (``LiveEditor.shown_ids``)."""
        editor = self.editor_for(image_layer if image_layer is not None else self.image.value)
        return 0 if editor is None else len(editor.shown_ids())

    # ------------------------------------------------------------------ live editing
    def _after_edit(self, editor: LiveEditor) -> None:
        """An edit's masks were painted: that image's features and the status follow."""
        if self.closed:
            return
        n = RW.update_label_features(editor)
        self.show_status(f"updated: {n} objects")
        if self._edit_error:  # an earlier edit's failure is over: this one went through
            self._edit_error = False
            self.clear_error()

    def labels_changed(self, labels_layer) -> None:
        """A panel changed an annotated labels layer (Verify's drop): its features and the
        status follow, as after an edit."""
        editor = next((e for e in self.editors if e.labels_layer is labels_layer and e.layers_alive()), None)
        if editor is not None:
            self._after_edit(editor)

    def _edit_failed(self, short: str, details: str) -> None:
        if self.closed:
            return
        self.show_error(short, details)
        self._edit_error = True
        self.show_status("mask update failed: the labels were not changed")
        notify_error(f"napari-clipsam: {short}")

    _keys = ("t", "n", "m")

    def _bind_keys(self, points_layer) -> None:
        points_layer.bind_key("t", lambda lay: self.flip_selected(lay), overwrite=True)
        points_layer.bind_key("n", lambda lay: self.new_object(), overwrite=True)
        points_layer.bind_key("m", lambda lay: self.next_mask(lay), overwrite=True)

    def _unbind_keys(self, points_layer) -> None:
        for key in self._keys:
            points_layer.bind_key(key, None, overwrite=True)

    def _editor_of_points(self, layer=None) -> LiveEditor | None:
        if self.closed:
            raise RuntimeError("this napari-clipsam widget was closed; open a new one (it goes on with the "
                               "closed one's layers)")
        layer = layer if isinstance(layer, Points) else self.viewer.layers.selection.active
        for editor in self.editors:
            if editor.points_layer is layer and editor.layers_alive():
                return editor
        chosen = self.editor_for(self.image.value)
        if chosen is not None:
            return chosen
        live = [e for e in self.editors if e.layers_alive()]
        return live[-1] if live else None

    def new_object(self) -> None:
        """Points added next start a new positive object (of the current prompt)."""
        editor = self._editor_of_points()
        if editor is None:
            show_info("napari-clipsam: run first, then add objects to its points layer")
            return
        self.viewer.layers.selection.active = editor.points_layer
        try:
            oid = editor.new_object()
        except ValueError as exc:
            self._edit_failed(str(exc), "")
            return
        self.show_status(f"new object {oid}: click to add its points")

    def flip_selected(self, layer=None) -> None:
        """Toggle positive/negative on the selected points, then update the masks."""
        editor = self._editor_of_points(layer)
        if editor is None or not editor.points_layer.selected_data:
            show_info("napari-clipsam: select points in the points layer to flip them")
            return
        try:
            editor.flip(editor.points_layer.selected_data)
        except ValueError as exc:
            self._edit_failed(str(exc), "")

    def next_mask(self, layer=None) -> None:
        """Cycle SAM's three candidate masks of the selected points' objects."""
        editor = self._editor_of_points(layer)
        if editor is None or not editor.points_layer.selected_data:
            show_info("napari-clipsam: select a point of an object to cycle its candidate masks")
            return
        try:
            editor.next_candidates(editor.points_layer.selected_data)
        except ValueError as exc:
            self._edit_failed(str(exc), "")

    def semantic_view(self) -> None:
        """A labels layer '<image> classes' with one id per class: prompt k -> k + 1."""
        editor = self.editor_for(self.image.value) or self._editor_of_points()
        if editor is None:
            show_info("napari-clipsam: run first")
            return
        prompts = editor.labels_layer.metadata.get("prompts", [])
        semantic = RW.semantic_labels(np.asarray(editor.labels_layer.data),
                                      editor.labels_layer.metadata.get("classes", {}), prompts)
        layer = LW.upsert_layer(self.viewer, "labels", LW.classes_name(editor.image_layer.name), semantic,
                                image_layer=editor.image_layer, **LW.placement(editor.labels_layer))
        layer.features = LW.labels_features({i + 1: p for i, p in enumerate(prompts)}, {})

    # ------------------------------------------------------------------ tools
    def open_tools(self) -> dict:
        """Dock the verify, few-shot probe and find-slice panels (tabbed, once each)."""
        if self.closed:
            raise RuntimeError("this napari-clipsam widget was closed; open a new one")
        from .probe_panel import ProbePanel
        from .slice_finder import SliceFinder
        from .verify_panel import VerifyPanel

        first = None
        for cls, name in ((VerifyPanel, "Verify masks"), (ProbePanel, "Few-shot probe"), (SliceFinder, "Find slice")):
            if name not in self.tools:
                self.tools[name] = cls(self.viewer, self)
                # below this widget (not a tab of it: it stays in view), the three tabbed together
                dock = self.viewer.window.add_dock_widget(self.tools[name], name=name)
                if self._tool_docks:
                    dock.parent().tabifyDockWidget(self._tool_docks[0], dock)  # Qt's QMainWindow
                self._tool_docks.append(dock)
                first = first or self._tool_docks[0]
        if first is not None:
            first.raise_()  # Verify in front, as the button's label reads
            QTimer.singleShot(0, lambda dock=first: self._share_height(dock))  # once they are laid out
        return self.tools

    def _share_height(self, tools_dock) -> None:
        """Give this widget the height its form needs (or half the column) and the tools the
        rest: by default Qt gave the main form all it asked for, the room below its last
        button included, and the tools a few rows."""
        from qtpy.QtCore import Qt
        from qtpy.QtWidgets import QDockWidget, QMainWindow

        main_dock = self.native.parentWidget()
        window = main_dock.parentWidget() if main_dock is not None else None
        if self.closed or not isinstance(main_dock, QDockWidget) or not isinstance(window, QMainWindow):
            return
        try:
            if main_dock.isFloating() or tools_dock.isFloating() or \
                    window.dockWidgetArea(main_dock) != window.dockWidgetArea(tools_dock):
                return  # not one column (the user moved a dock): theirs to size
            column = main_dock.height() + tools_dock.height()
            wanted = main_dock.sizeHint().height()
            mine = max(min(wanted, column - 300), column // 2)
            window.resizeDocks([main_dock, tools_dock], [mine, column - mine], Qt.Orientation.Vertical)
        except RuntimeError:  # a dock was deleted in between
            pass

    # ------------------------------------------------------------------ export
    def export_labels(self, path, labels_layer=None, *, overwrite: bool = False) -> list[str]:
        """Write the labels layer (default: the chosen image's) to ``path``, the format from the
        suffix (.tif, .png, .npy, .json COCO, .zarr/.ome.zarr; see ``core.export.write_labels``),
        with a sidecar of classes, scores and provenance (prompts, method and parameters,
        models and their weights' sha256, every object's final prompts). Missing folders on the
        way to ``path`` are made; an existing file is replaced only with ``overwrite=True``."""
        from ..core.export import classes_from_features, write_labels

        if self.closed:
            raise RuntimeError("this napari-clipsam widget was closed; open a new one, or use "
                               "napari_clipsam.core.export.write_labels(path, layer.data)")
        if isinstance(labels_layer, str):  # a layer's name, as napari's own API takes it
            if labels_layer not in self.viewer.layers:
                raise ValueError(f"no layer named {labels_layer!r} in the viewer")
            labels_layer = self.viewer.layers[labels_layer]
        editor = None
        if labels_layer is None:
            image = self.image.value
            editor = self._editor_to_export()
            if editor is None:
                what = f"for '{image.name}'" if image is not None else "yet"
                raise ValueError(f"no labels {what} to export: run on it first, or pass the labels layer, "
                                 "e.g. export_labels(path, viewer.layers['<name> labels'])")
            labels_layer = editor.labels_layer
        else:
            editor = next((e for e in self.editors if e.labels_layer is labels_layer), None)
        if not isinstance(labels_layer, Labels):
            raise ValueError(f"'{getattr(labels_layer, 'name', labels_layer)}' is not a labels layer "
                             f"(it is a {type(labels_layer).__name__}); pass a labels layer or its name")
        if editor is not None and editor.busy:  # the file would miss the edit, its sidecar describe it
            raise ValueError(f"the masks of '{editor.image_layer.name}' are being updated after an edit: export "
                             "once the status says 'updated' (from a script: when widget.is_busy is False)")
        data = np.asarray(labels_layer.data)
        classes, scores = classes_from_features(labels_layer.features, labels_layer.metadata.get("classes", {}))
        prov = provenance(editor, data, classes, scores) if editor is not None else None
        return write_labels(path, data, classes=classes, scores=scores, provenance=prov,
                            image=self._ome_image(editor, path), overwrite=overwrite,
                            metadata={"layer": labels_layer.name, "plugin": "napari-clipsam"})

    def _editor_to_export(self):
        """The editor whose labels Export labels… writes: the chosen image's, or with no image
        chosen the last run's still in the viewer; None when there are none."""
        image = self.image.value
        if image is not None:
            return self.editor_for(image)
        return next((e for e in reversed(self.editors) if e.layers_alive()), None)

    @staticmethod
    def _ome_image(editor, path):
        """OME-Zarr exports carry the image itself, RGB(A) included (``write_labels`` stores its
        colours as a ``c`` axis; labels go under its labels/ group), as the batch writes it."""
        if editor is None or not str(path).lower().rstrip("/").endswith(".zarr"):
            return None
        return np.asarray(editor.image_layer.data[0] if editor.image_layer.multiscale else editor.image_layer.data)

    def _export_dialog(self) -> None:

        from qtpy.QtWidgets import QFileDialog, QMessageBox

        from ..core.export import LABEL_SUFFIXES, sidecar_path

        image = self.image.value
        if self.closed:
            return
        if self._editor_to_export() is None:  # said before the dialog, not after the user chose a file
            what = f"'{image.name}' has no labels yet" if image is not None else "there are no labels yet"
            self.show_status(f"nothing to export: {what}; press Run first")
            show_info(f"napari-clipsam: nothing to export: {what}. Press Run first, then Export labels…")
            return
        start = f"{image.name} labels.tif" if image is not None else "labels.tif"
        # Qt's save dialog asks before replacing the file it returns
        path, chosen = QFileDialog.getSaveFileName(self.native, "Export labels", start, ";;".join(EXPORT_FILTERS))
        if not path:
            return
        name = Path(path).name
        if not name.lower().endswith(LABEL_SUFFIXES):
            suffix = Path(path).suffix
            if suffix.lower() in _OTHER_FILE_TYPES:  # a file type (.csv): not '... v1.2', 'scan.v2', 'cells.final'
                self._export_failed(f"cannot export labels as {suffix} ({name}): choose TIFF (.tif), PNG (.png), "
                                    "NumPy (.npy), COCO JSON (.json) or OME-Zarr (.ome.zarr) in the dialog, or "
                                    "type the name without a suffix to get the chosen format's")
                return
            add = EXPORT_FILTERS.get(chosen, ".tif")  # a name typed without a suffix: the chosen filter's
            path += add[len(".ome"):] if add == ".ome.zarr" and path.lower().endswith(".ome") else add
            asked = False  # Qt asked about the name typed, not about this file
        else:
            asked = _exists(Path(path))
        final = Path(path)
        if not asked and (_exists(final) or _exists(sidecar_path(final))):
            there = final if _exists(final) else sidecar_path(final)
            into = (" (an OME-Zarr image made elsewhere is not replaced: the labels are added to it)"
                    if final.is_dir() else "")
            answer = QMessageBox.question(
                self.native, "Replace export?",
                f"{there.name} already exists in {there.parent}.\nReplace {final.name} and its sidecar "
                f"{sidecar_path(final).name}{into}?", QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                QMessageBox.StandardButton.No)
            if answer != QMessageBox.StandardButton.Yes:
                self.show_status(f"export cancelled: {there.name} was left as it is")
                return
        try:
            written = self.export_labels(path, overwrite=True)
        except (ValueError, OSError) as exc:
            self._export_failed(f"export failed: {str(exc).splitlines()[0]}", str(exc))
            return
        self.clear_error()
        note = self._unclassified_note()
        self.show_status(f"exported {Path(written[0]).name}{note}")
        show_info(f"napari-clipsam: wrote {', '.join(written)}{note}")

    def _export_failed(self, short: str, details: str = "") -> None:
        self.show_status("export failed: nothing was written")
        self.show_error(short, details)
        notify_error(f"napari-clipsam: {short}")

    def _unclassified_note(self) -> str:
        """'; ids 99, 100 have no class ...' for the exported labels' ids that no class names
        (painted by hand with a new id), else ''."""
        import pandas as pd

        from ..core.export import classes_from_features

        image = self.image.value
        editor = self.editor_for(image) if image is not None else None
        if editor is None:
            return ""
        layer = editor.labels_layer
        data = np.asarray(layer.data)
        ids = sorted(int(i) for i in pd.unique(data[data != 0].ravel()))
        classes, _ = classes_from_features(layer.features, layer.metadata.get("classes", {}))
        bare = [i for i in ids if not classes.get(i)]
        if not bare:
            return ""
        shown = ", ".join(map(str, bare[:5])) + (" ..." if len(bare) > 5 else "")
        return (f"; {'id' if len(bare) == 1 else 'ids'} {shown} (painted by hand) "
                f"{'has' if len(bare) == 1 else 'have'} no class and {'is' if len(bare) == 1 else 'are'} "
                "exported without one")


#: the export dialog's filters and the suffix each gives a name typed without one
EXPORT_FILTERS = {"TIFF (*.tif *.tiff)": ".tif", "PNG (*.png)": ".png", "NumPy (*.npy)": ".npy",
                  "COCO JSON (*.json)": ".json", "OME-Zarr (*.ome.zarr *.zarr)": ".ome.zarr"}


def _own_checkpoint(sam_record: dict) -> str | None:
    """The checkpoint file a run's SAM record names, or None where it is the kind's official
    weights (the record names their cache file; loaded as None, as Run loads them, the model in
    memory is the same one, not a second copy)."""
    from ..core.weights import SAM_CHECKPOINTS

    official = SAM_CHECKPOINTS.get(sam_record.get("kind"))
    if official is not None and sam_record.get("sha256") and sam_record.get("sha256") == official.sha256:
        return None
    return sam_record.get("checkpoint")


def _exists(path: Path) -> bool:
    """``path.exists()``, False for a path the system refuses (a name too long): writing it
    says what is wrong."""
    try:
        return path.exists()
    except OSError:
        return False


class _ParentWatch(QObject):
    """Calls ``on_undocked`` when the widget it watches loses the parent it was docked in."""

    def __init__(self, on_undocked):
        super().__init__()
        self._on_undocked = on_undocked

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 (Qt's name)
        if event.type() == QEvent.Type.ParentChange and obj.parent() is None:
            self._on_undocked()
        return False
