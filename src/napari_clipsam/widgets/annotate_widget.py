"""The dock widget: prompts -> heatmap layers -> editable points -> live SAM labels -> export.

Thin glue only: the work is ``core.pipeline.annotate`` run in a napari generator worker
(cancellable between stages); results enter the viewer in one go when the run returns, so
a cancelled or failed run leaves the viewer as it was. Editing the points layer re-runs
only SAM's prompt decoder, for the objects whose points changed, in a worker as well.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import core as _core  # noqa: F401  (puts the triton/Mesa guard in place before torch)
from ..core.absence import FLOOR_MODES, AbsenceRule
from ..core.image import composite_rgb, take_displayed_slice, to_rgb_uint8
from ..core.localizers import LOCALIZERS, TEMPLATE_SETS, check_prompts, get_localizer
from ..core.localizers.prompts import resolve_templates
from ..core.models import CLIP_CHOICES, SAM_CHECKPOINTS, WeightsError, load_clip, load_sam
from ..core.pipeline import Annotation, Step, annotate
from ..core.points import PointPrompts, object_point_sets
from ..core.segment import SamSession
from . import layers as L

import pandas as pd
from magicgui.widgets import (
    CheckBox, ComboBox, Container, FileEdit, FloatSlider, FloatSpinBox, Label, LineEdit, ProgressBar, PushButton,
    Select, SpinBox, TextEdit,
)
from napari.layers import Image, Points
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt, QTimer

METHOD_HELP = {
    "gem": "GEM (default): self-self attention on a parallel path through the last blocks; a good first choice.",
    "raw": "Raw patch-text cosine of vanilla CLIP: a baseline that often highlights the background "
           "('opposite visualization'); for comparison only.",
    "surgery": "CLIP Surgery: v-v path plus feature surgery; removes activations shared by all prompts. "
               "Good with several prompts describing different things in the image.",
    "maskclip": "MaskCLIP: value embeddings of the last block; fast, works with ResNet CLIPs too.",
    "sclip": "SCLIP: correlative (q-q + k-k) self-attention in the last block; smooth maps.",
    "clearclip": "ClearCLIP: q-q attention without residual and FFN; low-noise maps.",
    "naclip": "NACLIP: k-k attention with a Gaussian neighbourhood; spatially coherent maps.",
    "gradcam": "Grad-CAM against the image-text score: a class-discriminative explanation; coarse.",
    "attention": "Attention of the best-matching patch: an explanation view, not a segmentation.",
}


class RunFailed(str):
    """An expected failure's message, returned (not raised) by the worker.

    (Not an Exception: superqt's worker raises a returned Exception instance.)"""


class RunCancelled(str):
    """Returned by the worker when Cancel stopped a download."""


class DownloadCancelled(Exception):
    """Raised from a download's progress callback when the user pressed Cancel."""


def _clip_label(name: str, tag: str) -> str:
    return f"{name} / {tag}"


@dataclass
class LiveState:
    """What the live SAM update of one points layer needs."""

    image_layer: object
    labels_layer: object
    prompts: list[str]
    session: SamSession
    objects: dict = field(default_factory=dict)  # object id -> (points bytes, labels bytes)


class ClipSamWidget(Container):
    """Annotate an image layer from words: CLIP heatmaps, points, SAM labels."""

    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self._clip_cache: dict = {}
        self._sam_cache: dict = {}
        self._sessions: dict[int, SamSession] = {}
        self._models_override: dict = {}
        self._worker = None
        self._decode_worker = None
        self._decode_again = False
        self._live: dict[int, LiveState] = {}
        self.last_result: Annotation | None = None

        self._image = ComboBox(label="image", choices=self._image_layers, nullable=True,
                               tooltip="The image layer to annotate (nD: the displayed slice).")
        self._composite = Select(label="composite with", choices=self._channel_layers, value=[],
                                 tooltip="Multichannel images: pick other channel layers to blend with the image "
                                         "as napari shows them (colormap, contrast limits, gamma) before CLIP and "
                                         "SAM see it. Leave empty to use the image alone.")
        self._prompts = TextEdit(label="prompts", value="",
                                 tooltip="One prompt per line, e.g. 'nucleus'. Each becomes a heatmap and a class.\n"
                                         "Synonyms of one class on one line, separated by ';': 'cell; nucleus'.")
        self._method = ComboBox(label="method", choices=list(LOCALIZERS), value="gem")
        self._templates = ComboBox(label="templates", choices=["method default", *TEMPLATE_SETS, "custom"],
                                   value="method default",
                                   tooltip="Sentences each prompt is put into, averaged: 'single' ('a photo of a "
                                           "{}.'), 'imagenet' (CLIP's 80), 'imagenet-simple' (7), 'surgery' (85), "
                                           "or 'custom' (your own, below).")
        self._custom_templates = LineEdit(label="custom templates", value="a fluorescence micrograph of {}.",
                                          visible=False,
                                          tooltip="Your templates separated by '|', each with {} where the prompt "
                                                  "goes, e.g. 'a micrograph of {}. | an image of {} in tissue.'")
        self._templates.changed.connect(lambda v: setattr(self._custom_templates, "visible", v == "custom"))
        self._background = LineEdit(label="background", value="",
                                    tooltip="Comma-separated prompts for what is not wanted (e.g. 'background, "
                                            "debris'). They compete with your prompts: each heatmap becomes the "
                                            "margin over the best background prompt. No layers are made for them.")
        self._resolution = SpinBox(label="resolution", min=32, max=32768, step=32, value=448,
                                   tooltip="Longer side, in pixels, of the image CLIP sees (aspect ratio kept). "
                                           "Larger finds smaller things; use a window above ~900.")
        self._window = SpinBox(label="window", min=0, max=4096, step=16, value=0,
                               tooltip="Sliding window size in pixels at that resolution (0 = one pass). 224 "
                                       "matches most CLIPs; windows overlap by half and their logits are averaged.")
        self._floor = ComboBox(label="absence floor", choices=list(FLOOR_MODES), value="none",
                               tooltip="A floor on the method's raw similarity that a point must reach; prompts "
                                       "with nothing above it get no points. absolute: a value in the method's "
                                       "units (cosine; 0 with background prompts); quantile: keep the top 1-q; "
                                       "otsu: Otsu's threshold.")
        self._floor_value = FloatSpinBox(label="floor value", min=-1000.0, max=1000.0, step=0.01, value=0.9,
                                         tooltip="absolute: the raw similarity; quantile: q in [0, 1).")
        self._min_presence = FloatSlider(label="min presence", min=0.0, max=1.0, step=0.01, value=0.0,
                                         tooltip="Image-level zero-shot probability (softmax over prompts and "
                                                 "background) a prompt needs to get points; 0 = no check.")
        self._clip = ComboBox(label="CLIP model", choices=[_clip_label(n, t) for n, t in CLIP_CHOICES],
                              tooltip="open_clip architecture / pretrained weights (downloaded once, then cached).")
        self._clip_file = FileEdit(label="CLIP file", mode="r", nullable=True,
                                   tooltip="Optional local open_clip checkpoint for the architecture above.")
        self._sam = ComboBox(label="SAM model", choices=list(SAM_CHECKPOINTS), value="vit_b",
                             tooltip="Segment Anything size: vit_b is fastest, vit_h most accurate.")
        self._sam_file = FileEdit(label="SAM file", mode="r", nullable=True,
                                  tooltip="Optional local SAM checkpoint of the kind above.")
        self._threshold = FloatSlider(label="threshold", min=0.0, max=1.0, step=0.01, value=0.6,
                                      tooltip="Heatmap value a peak needs to become a positive point.")
        self._max_objects = SpinBox(label="max objects", min=1, max=200, value=5,
                                    tooltip="At most this many objects (peaks) per prompt.")
        self._one_object = CheckBox(text="one object per prompt", value=False,
                                    tooltip="All peaks of a prompt prompt one object (semantic) instead of one each.")
        self._run_btn = PushButton(text="Run")
        self._cancel_btn = PushButton(text="Cancel", enabled=False)
        self._progress = ProgressBar(label="progress", min=0, max=4, value=0)
        self._status = Label(label="status", value="ready")
        self._download_bar = ProgressBar(label="download", min=0, max=1000, value=0, visible=False)
        self._download_state: tuple[str, int, int] | None = None
        self.download_log: list[tuple[str, int, int]] = []
        self._new_object_btn = PushButton(text="New object",
                                          tooltip="Next points added to the points layer start a new object.")
        self._flip_btn = PushButton(text="Flip +/-", tooltip="Make the selected points negative/positive (key: T).")
        self._export_btn = PushButton(text="Export labels…")
        # what most runs need stays in view; the rest folds away under "more options"
        self._composite.native.setMaximumHeight(90)
        self._advanced = Container(labels=True, visible=False, widgets=[
            self._composite, self._templates, self._custom_templates, self._background, self._resolution, self._window,
            self._max_objects, self._one_object, self._floor, self._floor_value, self._min_presence,
            self._clip_file, self._sam_file,
        ])
        self._advanced.margins = (0, 0, 0, 0)
        self._floor.changed.connect(self._floor_default)
        self._show_advanced = CheckBox(text="more options (channels, prompts, large images, absence, local files)", value=False)
        self._show_advanced.changed.connect(lambda v: setattr(self._advanced, "visible", bool(v)))
        self.extend([
            self._image, self._prompts, self._method, self._clip, self._sam, self._threshold,
            self._show_advanced, self._advanced, self._run_btn, self._cancel_btn,
            self._progress, self._status, self._download_bar, self._new_object_btn, self._flip_btn, self._export_btn,
        ])
        self._method_tooltips()
        self._method.changed.connect(self._method_tooltips)
        self._run_btn.changed.connect(self.run)
        self._cancel_btn.changed.connect(self.cancel)
        self._new_object_btn.changed.connect(self.new_object)
        self._flip_btn.changed.connect(self.flip_selected)
        self._export_btn.changed.connect(self._export_dialog)

        self._download_timer = QTimer()
        self._download_timer.setInterval(200)
        self._download_timer.timeout.connect(self._show_download)

        self._debounce = QTimer()
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(120)
        self._debounce.timeout.connect(self._decode_changed)
        self._pending_layers: set[int] = set()

        self.viewer.layers.events.inserted.connect(self.reset_choices)
        self.viewer.layers.events.removed.connect(self.reset_choices)
        self.viewer.layers.events.removed.connect(self._forget_removed)
        active = self.viewer.layers.selection.active
        if isinstance(active, Image):
            self._image.value = active

    # ------------------------------------------------------------------ choices / models
    def _method_tooltips(self, *_) -> None:
        """Each method's 'when to use' on its own item, and the current one's on the box."""
        box = self._method.native
        for i in range(box.count()):
            box.setItemData(i, METHOD_HELP.get(box.itemText(i), ""), Qt.ItemDataRole.ToolTipRole)
        self._method.tooltip = f"{self._method.value}: {METHOD_HELP.get(self._method.value, '')}"

    def _image_layers(self, *_):
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Image)]

    def _channel_layers(self, *_):
        """Layers that can be blended in as channels: single-channel images that are not ours."""
        return [(layer.name, layer) for layer in self.viewer.layers
                if isinstance(layer, Image) and not layer.rgb and not L.is_ours(layer)]

    def use_models(self, clip=None, sam=None) -> None:
        """Use already-loaded models: clip = (open_clip model, tokenizer), sam = a ``Sam``."""
        if clip is not None:
            self._models_override["clip"] = clip
        if sam is not None:
            self._models_override["sam"] = sam

    def _get_clip(self, label: str, path, device=None):
        if "clip" in self._models_override:
            return self._models_override["clip"]
        name, tag = (s.strip() for s in label.split("/", 1))
        key = (name, str(path) if path else tag)
        if key not in self._clip_cache:
            model = load_clip(name, str(path) if path else tag, device,
                              progress=self._download_progress(f"CLIP {name}/{tag}"))
            self._clip_cache.clear()  # keep one CLIP in memory
            self._clip_cache[key] = model
        return self._clip_cache[key]

    def _get_sam(self, kind: str, path, device=None):
        if "sam" in self._models_override:
            return self._models_override["sam"]
        key = (kind, str(path) if path else None)
        if key not in self._sam_cache:
            model = load_sam(kind, path or None, device, progress=self._download_progress(f"SAM {kind}"))
            self._sam_cache.clear()
            self._sessions.clear()
            self._sam_cache[key] = model
        return self._sam_cache[key]

    def _download_progress(self, label: str):
        """A progress(done, total) callback for weight downloads, run in the worker thread.

        It only records the numbers (the GUI thread shows them) and raises DownloadCancelled
        when Cancel was pressed, which stops the download (the partial file is kept to resume).
        """
        worker = self._worker

        def progress(done: int, total: int) -> None:
            if worker is not None and worker.abort_requested:
                raise DownloadCancelled(f"download of {label} cancelled")
            self._download_state = (label, int(done), int(total or 0))
            self.download_log.append(self._download_state)

        return progress

    def _show_download(self) -> None:
        state = self._download_state
        if state is None:
            return
        label, done, total = state
        self._download_bar.visible = True
        self._download_bar.value = int(1000 * done / total) if total else 0
        size = f"{done / 1e6:.1f}/{total / 1e6:.1f} MB" if total else f"{done / 1e6:.1f} MB"
        self._status.value = f"downloading {label}: {size}"

    def _session(self, sam) -> SamSession:
        if id(sam) not in self._sessions:
            self._sessions[id(sam)] = SamSession(sam)
        return self._sessions[id(sam)]

    # ------------------------------------------------------------------ running
    @property
    def is_running(self) -> bool:
        return self._worker is not None

    def _displayed_plane(self, layer) -> np.ndarray:
        data = layer.data[0] if layer.multiscale else layer.data
        point = layer.world_to_data(self.viewer.dims.point)
        return take_displayed_slice(data, point, layer.rgb)

    def _input_plane(self, layer) -> np.ndarray:
        """The RGB uint8 image CLIP and SAM see: the layer's displayed plane, or the additive
        composite of it and the 'composite with' layers as napari shows them."""
        others = [lay for lay in (self._composite.value or []) if lay is not layer and lay in self.viewer.layers]
        plane = self._displayed_plane(layer)
        if not others:
            limits = None if (layer.rgb and plane.dtype == np.uint8) else layer.contrast_limits
            return to_rgb_uint8(plane, rgb=layer.rgb, contrast_limits=limits)
        channels = [layer, *others]
        rgb_layers = [lay.name for lay in channels if lay.rgb]
        if rgb_layers:
            raise ValueError(f"RGB layers cannot be composited as channels: {rgb_layers}; "
                             "pick single-channel layers in 'composite with' or clear it")
        planes = [plane] + [self._displayed_plane(lay) for lay in others]
        shapes = {lay.name: p.shape for lay, p in zip(channels, planes)}
        if len(set(shapes.values())) > 1:
            raise ValueError(f"channel layers must have the same size to be composited, got {shapes}")
        ramp = np.linspace(0.0, 1.0, 256)
        return composite_rgb(planes, luts=[np.asarray(lay.colormap.map(ramp))[:, :3] for lay in channels],
                             contrast_limits=[tuple(lay.contrast_limits) for lay in channels],
                             gammas=[float(lay.gamma) for lay in channels])

    #: a sensible starting value per absence floor mode (absolute 0: "beats every background prompt")
    FLOOR_DEFAULTS = {"absolute": 0.0, "quantile": 0.9}

    def _floor_default(self, mode) -> None:
        if mode in self.FLOOR_DEFAULTS:
            self._floor_value.value = self.FLOOR_DEFAULTS[mode]

    def _localizer_params(self) -> dict:
        background = [b.strip() for b in self._background.value.split(",") if b.strip()]
        window = int(self._window.value)
        templates = self._templates.value
        if templates == "custom":
            templates = [t.strip() for t in self._custom_templates.value.split("|") if t.strip()]
            resolve_templates(templates, ())  # a bad template is a notification before the run
        return dict(templates=None if templates == "method default" else templates,
                    input_size=int(self._resolution.value), window=window or None,
                    background=check_prompts(background) if background else ())

    def _absence_rule(self) -> AbsenceRule | None:
        rule = AbsenceRule(self._floor.value, float(self._floor_value.value), float(self._min_presence.value))
        return None if (rule.floor == "none" and rule.min_presence == 0) else rule

    def run(self) -> None:
        """Start a run on the chosen image layer (no-op with a message if one is running)."""
        if self._worker is not None:
            show_info("napari-clipsam is already running; cancel it first")
            return
        layer = self._image.value
        if layer is None or layer not in self.viewer.layers:
            show_error("napari-clipsam: pick an image layer first (open an image, then choose it in 'image')")
            return
        try:
            prompts = check_prompts([ln for ln in self._prompts.value.splitlines() if ln.strip()])
            rgb = self._input_plane(layer)
            localizer_params = self._localizer_params()
            absence = self._absence_rule()
        except ValueError as exc:
            show_error(f"napari-clipsam: {exc}")
            return
        cfg = dict(
            method=self._method.value, clip=self._clip.value, clip_file=self._clip_file.value,
            sam=self._sam.value, sam_file=self._sam_file.value, localizer=localizer_params, absence=absence,
            points=dict(threshold=float(self._threshold.value), max_objects=int(self._max_objects.value),
                        one_object_per_prompt=bool(self._one_object.value)),
        )
        worker = create_worker(self._work, rgb, prompts, cfg, _start_thread=False)
        worker.yielded.connect(self._on_step)
        worker.returned.connect(lambda result, lay=layer: self._on_result(lay, result))
        worker.errored.connect(self._on_error)
        worker.aborted.connect(lambda: self._status.set_value("cancelled: nothing was changed"))
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self._run_btn.enabled = False
        self._cancel_btn.enabled = True
        self._progress.max = 5
        self._progress.value = 0
        self._status.value = "starting"
        self._download_state = None
        self._download_timer.start()
        worker.start()

    def _work(self, rgb, prompts, cfg):
        """Runs in the worker thread; yields between stages so Cancel takes effect.

        Expected failures (bad weights, bad input) and a cancelled download come back as
        ``RunFailed`` / ``DownloadCancelled`` values, shown as plain notifications; only
        real bugs propagate as exceptions.
        """
        try:
            yield Step("loading models", 0, 5)
            clip_model, tokenizer = self._get_clip(cfg["clip"], cfg["clip_file"])
            yield Step("loading SAM", 0, 5)
            sam = self._get_sam(cfg["sam"], cfg["sam_file"])
            localizer = get_localizer(cfg["method"], clip_model, tokenizer, **cfg["localizer"])
            session = self._session(sam)
            result = yield from annotate(rgb, prompts, localizer, session, absence=cfg["absence"], **cfg["points"])
        except DownloadCancelled as exc:
            return RunCancelled(str(exc))
        except (ValueError, WeightsError, OSError) as exc:
            return RunFailed(f"{exc}")
        return result, session

    def cancel(self) -> None:
        if self._worker is not None:
            self._status.value = "cancelling…"
            self._worker.quit()

    def _on_step(self, step) -> None:
        if isinstance(step, Step):
            self._progress.value = min(step.index + 1, self._progress.max)
            self._status.value = f"{step.stage} {step.done}/{step.of}" if step.of > 1 else step.stage

    def _on_error(self, exc) -> None:
        self._status.value = "failed: nothing was changed"
        show_error(f"napari-clipsam failed: {exc}" if str(exc) else f"napari-clipsam failed: {type(exc).__name__}")

    def _on_finished(self) -> None:
        if self._worker is not None and self._worker.abort_requested and "cancelled" not in self._status.value:
            # superqt emits neither `returned` nor `aborted` when the generator ended after a
            # cancel request without yielding again (e.g. a download stopped by Cancel)
            self._status.value = "cancelled: nothing was changed (a partial download resumes next time)"
        self._download_timer.stop()
        self._download_bar.visible = False
        self._worker = None
        self._run_btn.enabled = True
        self._cancel_btn.enabled = False

    def _on_result(self, image_layer, payload) -> None:
        if isinstance(payload, RunCancelled):
            self._status.value = "cancelled: download stopped (it resumes next time); nothing was changed"
            return
        if isinstance(payload, RunFailed):
            self._status.value = "failed: nothing was changed"
            show_error(f"napari-clipsam: {payload}")
            return
        result, session = payload
        if image_layer not in self.viewer.layers:
            self._status.value = "image layer was removed: results discarded"
            show_warning(f"napari-clipsam: the image layer '{image_layer.name}' was removed during the run; "
                         "its results were discarded")
            return
        self.last_result = result
        self._add_result_layers(image_layer, result, session)
        self._progress.value = self._progress.max
        n_obj = len(result.classes)
        self._status.value = f"done: {len(result.prompts)} heatmaps, {len(result.points)} points, {n_obj} objects"

    # ------------------------------------------------------------------ layers
    def _add_result_layers(self, image_layer, result: Annotation, session: SamSession) -> None:
        name = image_layer.name
        geo = dict(scale=image_layer.scale[-2:], translate=image_layer.translate[-2:])
        for i, prompt in enumerate(result.prompts):
            presence = None if result.presence is None else float(result.presence[i])
            L.upsert_layer(self.viewer, "image", L.heatmap_name(name, prompt), result.heatmaps[i],
                           colormap="inferno", blending="additive", opacity=0.6, contrast_limits=(0.0, 1.0),
                           visible=prompt not in result.absent,
                           metadata={"prompt": prompt, "presence": presence, "absent": prompt in result.absent},
                           **geo)
        if result.absent:
            show_info(f"napari-clipsam: no points for {result.absent}: below the absence floor or the minimum "
                      "presence (their heatmaps are added hidden)")
        pts = result.points
        features = pd.DataFrame({
            "positive": pts.positive.astype(bool),
            "object_id": pts.object_id.astype(int),
            "prompt": pd.Categorical([result.prompts[i] for i in pts.prompt], categories=result.prompts),
        })
        size = max(4.0, max(result.labels.shape) / 60.0)
        labels_layer = L.upsert_layer(self.viewer, "labels", L.labels_name(name), result.labels,
                                      metadata={"classes": dict(result.classes), "prompts": list(result.prompts)},
                                      **geo)
        points_layer = L.upsert_layer(self.viewer, "points", L.points_name(name), pts.points, features=features,
                                      size=size, face_color=L.point_colors(pts.positive) if len(pts) else "lime",
                                      border_color="white", metadata={"prompts": list(result.prompts)}, **geo)
        self._recolor(points_layer)
        if len(pts):
            points_layer.feature_defaults = features.iloc[[int(np.argmax(pts.positive))]].reset_index(drop=True)
        state = LiveState(image_layer, labels_layer, list(result.prompts), session)
        state.objects = self._object_signature(self._prompts_from_layer(points_layer, state.prompts))
        if id(points_layer) not in self._live:
            points_layer.events.data.connect(lambda e, lay=points_layer: self._schedule_decode(lay, e))
            points_layer.bind_key("t", lambda lay: self.flip_selected(lay), overwrite=True)
        self._live[id(points_layer)] = state

    @staticmethod
    def _recolor(points_layer) -> None:
        if len(points_layer.data):
            points_layer.face_color = L.point_colors(points_layer.features["positive"].to_numpy(bool))

    def _prompts_from_layer(self, layer, prompt_names: list[str]) -> PointPrompts:
        f = layer.features
        n = len(layer.data)
        if n == 0:
            return PointPrompts()
        names = f["prompt"].astype(str).to_numpy() if "prompt" in f else np.array([prompt_names[0]] * n)
        index = {p: i for i, p in enumerate(prompt_names)}
        return PointPrompts(
            points=np.asarray(layer.data, float)[:, -2:],
            positive=f["positive"].to_numpy(bool) if "positive" in f else np.ones(n, bool),
            object_id=f["object_id"].to_numpy(np.int32) if "object_id" in f else np.ones(n, np.int32),
            prompt=np.array([index.get(s, 0) for s in names], np.int32),
            score=np.zeros(n, np.float32),
        )

    @staticmethod
    def _object_signature(prompts: PointPrompts) -> dict:
        return {oid: (pts.round(3).tobytes(), lab.tobytes(), cls)
                for oid, (pts, lab, cls) in object_point_sets(prompts).items()}

    # ------------------------------------------------------------------ live editing
    def _schedule_decode(self, layer, event=None) -> None:
        if id(layer) in self._live:
            self._pending_layers.add(id(layer))
            self._debounce.start()

    def _forget_removed(self, event) -> None:
        self._live.pop(id(event.value), None)

    def _decode_changed(self) -> None:
        if self._decode_worker is not None:
            self._decode_again = True
            return
        jobs = []
        for lid in list(self._pending_layers):
            self._pending_layers.discard(lid)
            layer = next((lay for lay in self.viewer.layers if id(lay) == lid), None)
            state = self._live.get(lid)
            if layer is None or state is None or state.labels_layer not in self.viewer.layers:
                continue
            self._recolor(layer)
            prompts = self._prompts_from_layer(layer, state.prompts)
            sig = self._object_signature(prompts)
            changed = {oid for oid in sig if state.objects.get(oid) != sig[oid]}
            removed = set(state.objects) - set(sig)
            if changed or removed:
                jobs.append((state, prompts, changed, removed, sig))
        if not jobs:
            return

        def decode():
            out = []
            for state, prompts, changed, removed, sig in jobs:
                masks = state.session.predict_objects(prompts, objects=changed) if changed else {}
                out.append((state, masks, removed, sig))
            return out

        worker = create_worker(decode, _start_thread=False)
        worker.returned.connect(self._apply_decoded)
        worker.errored.connect(lambda exc: show_error(f"napari-clipsam: updating masks failed: {exc}"))
        worker.finished.connect(self._decode_finished)
        self._decode_worker = worker
        worker.start()

    def _apply_decoded(self, results) -> None:
        for state, masks, removed, sig in results:
            labels_layer = state.labels_layer
            if labels_layer not in self.viewer.layers:
                continue
            data = np.array(labels_layer.data, copy=True)
            for oid in removed | set(masks):
                data[data == oid] = 0
            for oid, (mask, _score, cls) in sorted(masks.items(), key=lambda kv: -int(kv[1][0].sum())):
                data[mask] = oid
                labels_layer.metadata.setdefault("classes", {})[oid] = state.prompts[cls]
            for oid in removed:
                labels_layer.metadata.get("classes", {}).pop(oid, None)
            labels_layer.data = data
            state.objects = sig

    def _decode_finished(self) -> None:
        self._decode_worker = None
        if self._decode_again or self._pending_layers:
            self._decode_again = False
            self._decode_changed()

    def _points_layer(self, layer=None):
        layer = layer if isinstance(layer, Points) else self.viewer.layers.selection.active
        if isinstance(layer, Points) and id(layer) in self._live:
            return layer
        live = [lay for lay in self.viewer.layers if id(lay) in self._live]
        return live[-1] if live else None

    def new_object(self) -> None:
        """Points added next start a new positive object (of the current prompt)."""
        layer = self._points_layer()
        if layer is None:
            show_info("napari-clipsam: run first, then add objects to its points layer")
            return
        ids = layer.features["object_id"].to_numpy(int) if len(layer.data) else np.array([0])
        defaults = layer.feature_defaults.copy()
        defaults["object_id"] = int(ids.max()) + 1
        defaults["positive"] = True
        layer.feature_defaults = defaults
        self.viewer.layers.selection.active = layer
        layer.mode = "add"

    def flip_selected(self, layer=None) -> None:
        """Toggle positive/negative on the selected points, then update the masks."""
        layer = self._points_layer(layer)
        if layer is None or not layer.selected_data:
            show_info("napari-clipsam: select points in the points layer to flip them")
            return
        feats = layer.features.copy()
        idx = sorted(layer.selected_data)
        feats.loc[idx, "positive"] = ~feats.loc[idx, "positive"].astype(bool)
        layer.features = feats
        self._recolor(layer)
        self._schedule_decode(layer)

    # ------------------------------------------------------------------ export
    def export_labels(self, path, labels_layer=None) -> list[str]:
        """Write the labels layer (default: the last result's) to ``path`` (.tif/.png/.npy)."""
        from ..core.export import write_labels

        if labels_layer is None:
            live = [s.labels_layer for s in self._live.values() if s.labels_layer in self.viewer.layers]
            if not live:
                raise ValueError("no labels to export yet: run first")
            labels_layer = live[-1]
        classes = labels_layer.metadata.get("classes", {})
        return write_labels(path, np.asarray(labels_layer.data), classes=classes,
                            metadata={"layer": labels_layer.name, "plugin": "napari-clipsam"})

    def _export_dialog(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getSaveFileName(self.native, "Export labels", "labels.tif",
                                              "TIFF (*.tif *.tiff);;PNG (*.png);;NumPy (*.npy)")
        if not path:
            return
        try:
            written = self.export_labels(path)
        except (ValueError, OSError) as exc:
            show_error(f"napari-clipsam: export failed: {exc}")
            return
        show_info(f"napari-clipsam: wrote {', '.join(written)}")
