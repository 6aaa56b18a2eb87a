"""The form: every field of the dock widget, each an attribute named as its label
(``widget.prompts``, ``widget.clip_model``, ``widget.max_objects``, ...), so scripts and
tests drive the widget as a user does. No behaviour here beyond showing and hiding fields."""

from __future__ import annotations

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSlider,
    FloatSpinBox,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    Select,
    SpinBox,
    TextEdit,
)
from qtpy.QtCore import QEvent, QObject, QSize, Qt, QTimer
from qtpy.QtWidgets import (
    QAbstractScrollArea,
    QAbstractSlider,
    QAbstractSpinBox,
    QApplication,
    QComboBox,
    QFrame,
    QScrollArea,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from ..core.absence import FLOOR_MODES
from ..core.localizers import LOCALIZERS, TEMPLATE_SETS
from ..core.models import CLIP_CHOICES, SAM_CHECKPOINTS
from ..core.sam_backends import CPU_DEFAULT_SAM2, SAM2_INSTALL, default_sam_kind, sam2_installed, sam_kinds

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

#: the most height the prompts take (their text scrolls within it)
TEXT_AREA_HEIGHT = 160
#: the most height an error's details take (what to do is often at their end: room for it)
DETAILS_HEIGHT = 240

#: every keyboard shortcut the plugin adds (shown in the widget and in docs/usage.md)
SHORTCUTS = {
    "T": "flip the selected points positive/negative",
    "N": "new object: the next points start a new object",
    "M": "next mask: cycle SAM's three candidate masks of the selected points' object",
    "Ctrl+Z": "in the labels layer: undo the last mask update, like a paint stroke (the next point edit "
              "redraws from the points)",
}


class _WrappedHeight(QObject):
    """Keeps a word-wrapped QLabel as tall as its text needs at its width. The dock's form
    layout sizes a label once from its one-line hint, so a status that wraps to two lines
    was cut through the middle."""

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt's name
        if event.type() in (QEvent.Type.Resize, QEvent.Type.Show):
            fit_wrapped_height(obj)
        return False


def wrap_text(label) -> None:
    """Make the magicgui ``label`` word-wrap, at the height its text needs (``show_status``
    and ``show_error`` call ``fit_wrapped_height`` when they change the text)."""
    native = label.native
    native.setWordWrap(True)
    policy = QSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Minimum)  # magicgui's: Fixed
    policy.setHeightForWidth(True)
    native.setSizePolicy(policy)
    native.installEventFilter(_WrappedHeight(native))  # owned by the label


#: the most lines a status or error line in a dock's footer shows (the whole text is its tooltip)
FOOTER_LINES = 3


def fit_wrapped_height(label) -> None:
    """Give the word-wrapped QLabel ``label`` the height its text needs at its width (at most
    its ``max_lines`` property's lines, if set: the rest is cut, the whole text in its tooltip)."""
    if label.width() > 0:
        old = label.minimumHeight()
        label.setMinimumHeight(0)  # QLabel's heightForWidth is never below its minimum height
        label.setMaximumHeight(16777215)
        need = label.heightForWidth(label.width())
        lines = label.property("max_lines")
        if lines and need > 0:
            cap = int(lines) * label.fontMetrics().lineSpacing() + 2 * label.margin() + 2
            if need > cap:
                need = cap
                label.setMaximumHeight(cap)
        label.setMinimumHeight(need if need > 0 else old)


class _FormScroll(QScrollArea):
    """A vertical scroll area that asks for its form's whole height (the dock shows everything
    when there is room) but needs only its width and a few rows of it: in a small window, or
    with the tools docked below, the form scrolls instead of pushing the window past the
    screen's edge. It never takes the keyboard focus: napari's keys (arrows step the slices)
    reach the viewer as they did without it."""

    MINIMUM_HEIGHT = 120

    def __init__(self):
        super().__init__()
        self.setFocusPolicy(Qt.FocusPolicy.NoFocus)

    def setWidget(self, widget) -> None:  # noqa: N802 - Qt's name
        super().setWidget(widget)
        widget.installEventFilter(self)  # its layout changes: ask the dock for the new height

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt's name
        if obj is self.widget() and event.type() == QEvent.Type.LayoutRequest:
            self.updateGeometry()
        return super().eventFilter(obj, event)

    def _extra_width(self) -> int:
        return self.verticalScrollBar().sizeHint().width() + 2 * self.frameWidth()

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt's name
        inner = self.widget().sizeHint() if self.widget() is not None else QSize(0, 0)
        return QSize(inner.width() + self._extra_width(), inner.height() + 2 * self.frameWidth())

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt's name
        inner = self.widget().minimumSizeHint() if self.widget() is not None else QSize(0, 0)
        return QSize(inner.width() + self._extra_width(), min(inner.height(), self.MINIMUM_HEIGHT))


class ScrollingForm(Container):
    """A dock's form whose fields (``self.body``, a labelled magicgui Container) scroll as a
    whole inside the dock. napari docks a magicgui widget's ``native`` without a scroll area,
    so a form taller than the window raised the window's minimum height past the screen."""

    def __init__(self):
        super().__init__(labels=False)
        self.margins = (0, 0, 0, 0)
        self.body = Container(labels=True)
        holder = QWidget()  # the body at its own height, on top; the room below it stays empty
        column = QVBoxLayout(holder)
        column.setContentsMargins(0, 0, 0, 0)
        column.addWidget(self.body.native)
        column.addStretch(1)
        self.scroll_area = _FormScroll()
        self.scroll_area.setWidgetResizable(True)
        self.scroll_area.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll_area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.scroll_area.setWidget(holder)
        self.native.layout().addWidget(self.scroll_area)
        # progress, status and errors stay in view below the scrolling fields (with the tools
        # docked below on a laptop screen, the form shows a few rows: a run gave no feedback)
        self.footer = Container(labels=True)
        self.native.layout().addWidget(self.footer.native)
        # the fields take the height they need (less: they scroll), the footer follows them, and
        # the room left in a tall dock stays below it, not between them
        self.scroll_area.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Preferred)
        self.native.layout().addStretch(1)

        self.body.changed.connect(lambda *_: self.changed.emit(self))
        # fields get their wheel events only once clicked: the wheel scrolls the form (a wheel
        # over a field changed its value: the image, the method, the threshold)
        self._wheel_guard = _WheelOnlyWithFocus(self.scroll_area)
        QTimer.singleShot(0, self.guard_wheel)  # once the subclass has added its fields

    def guard_wheel(self) -> None:
        try:
            fields = self.body.native.findChildren((QComboBox, QAbstractSpinBox, QAbstractSlider))
        except RuntimeError:  # closed before the timer fired
            return
        for field in fields:
            field.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
            field.installEventFilter(self._wheel_guard)

    # the fields are the body's: the form as a magicgui Container is its body
    def __len__(self) -> int:
        return len(self.body)

    def __getitem__(self, key):
        return self.body[key]

    def asdict(self) -> dict:
        return self.body.asdict()

    def reset_choices(self, *_) -> None:
        self.body.reset_choices()


class _WheelOnlyWithFocus(QObject):
    """Gives a wheel event over a field that has not the keyboard focus to the form's scroll
    bar (the form scrolls), instead of letting it change the field's value."""

    def __init__(self, area: QScrollArea):
        super().__init__()
        self._area = area

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt's name
        if event.type() == QEvent.Type.Wheel and not obj.hasFocus():
            QApplication.sendEvent(self._area.verticalScrollBar(), event)
            event.accept()
            return True
        return False


def clip_label(name: str, tag: str) -> str:
    return f"{name} / {tag}"


def sam_model_help(default: str) -> str:
    """The SAM model box's tooltip: the kinds, and why ``default`` is the default here."""
    text = ("Segment Anything model. SAM 1: vit_b (fastest), vit_l, vit_h (most accurate). SAM 2.1 (the "
            "optional sam2 package): sam2.1_tiny, sam2.1_small, sam2.1_base_plus, sam2.1_large.")
    if default == CPU_DEFAULT_SAM2:
        return text + (f"\nNo GPU here, so the default is {CPU_DEFAULT_SAM2}: its image embedding takes a "
                       "fraction of vit_b's on a CPU (docs/sam-backends.md).")
    if not sam2_installed():
        return text + ("\nsam2 is not installed, so the SAM 2.1 kinds are not listed. Without a GPU, its "
                       f"{CPU_DEFAULT_SAM2} is much faster than vit_b; install it with: {SAM2_INSTALL}")
    return text


class AnnotateForm(ScrollingForm):
    """The fields, buttons and status area of the dock widget."""

    def __init__(self):
        super().__init__()
        self.image = ComboBox(label="image", choices=(), nullable=True,
                              tooltip="The image layer to annotate (nD: the displayed plane, in any dims order).")
        self.prompts = TextEdit(label="prompts", value="",
                                tooltip="One prompt per line, e.g. 'nucleus'. Each becomes a heatmap and a class.\n"
                                        "Synonyms of one class on one line, separated by ';': 'cell; nucleus'.")
        self.prompts.native.setMaximumHeight(70)
        self.prompts.native.setPlaceholderText("e.g. nucleus (one prompt per line)")
        self.method = ComboBox(label="method", choices=list(LOCALIZERS), value="gem")
        self.threshold = FloatSlider(label="threshold", min=0.0, max=1.0, step=0.01, value=0.6,
                                     tooltip="Heatmap value a peak needs to become a positive point.")
        self.slices = ComboBox(label="slices", choices=["displayed", "all along axis"], value="displayed",
                               tooltip="nD images: annotate the displayed plane, or every plane along 'slice axis'.")
        self.slice_axis = SpinBox(label="slice axis", min=0, max=31, value=0,
                                  tooltip="Data axis of the image that 'all along axis' steps through.")
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", min=0, max=1000, value=0, visible=False)
        self.status = Label(label="status", value="ready")
        self.error = Label(label="error", value="", visible=False)
        self.error.native.setStyleSheet("color: #ff6b6b;")
        self.error_details_button = PushButton(text="Details…", visible=False,
                                               tooltip="Show the full message (selectable, to copy)")
        self.error_details = TextEdit(label="details", value="", visible=False)
        self.error_details.native.setReadOnly(True)
        self.new_object_button = PushButton(text="New object (N)",
                                            tooltip="Points added next start a new object.")
        self.flip_button = PushButton(text="Flip +/- (T)", tooltip="Make the selected points negative/positive.")
        self.next_mask_button = PushButton(text="Next mask (M)",
                                           tooltip="Cycle SAM's three candidate masks of the selected object.")
        self.semantic_button = PushButton(text="Semantic view",
                                          tooltip="Add a labels layer with one id per class (prompt).")
        self.export_button = PushButton(text="Export labels…")
        self.tools_button = PushButton(text="Verify · few-shot · find slice…",
                                       tooltip="Open the tools that check masks with CLIP, learn a heatmap from "
                                               "accepted objects, and rank the slices of a stack by a prompt")
        self.shortcuts = Label(label="keys", value="T flip · N new object · M next mask · Ctrl+Z undo (labels)")
        self.shortcuts.tooltip = "\n".join(f"{k}: {v}" for k, v in SHORTCUTS.items())

        # folded away: models, channels, prompts' finer control, large images, absence
        self.clip_model = ComboBox(label="CLIP model", choices=[clip_label(n, t) for n, t in CLIP_CHOICES],
                                   tooltip="open_clip architecture / pretrained weights (downloaded once, cached).")
        self.clip_file = FileEdit(label="CLIP file", mode="r", nullable=True,
                                  tooltip="Optional local open_clip checkpoint for the architecture above.")
        sam_default = default_sam_kind()
        self.sam_model = ComboBox(label="SAM model", choices=sam_kinds(list(SAM_CHECKPOINTS)), value=sam_default,
                                  tooltip=sam_model_help(sam_default))
        self.sam_file = FileEdit(label="SAM file", mode="r", nullable=True,
                                 tooltip="Optional local SAM checkpoint of the kind above.")
        self.composite_with = Select(label="composite with", choices=(), value=[],
                                     tooltip="Multichannel images: other channel layers blended with the image as "
                                             "napari shows them (colormap, contrast limits, gamma) before CLIP and "
                                             "SAM see it. Leave empty to use the image alone.")
        self.composite_with.native.setMaximumHeight(70)
        self.templates = ComboBox(label="templates", choices=["method default", *TEMPLATE_SETS, "custom"],
                                  value="method default",
                                  tooltip="Sentences each prompt is put into, averaged: 'single', 'imagenet' "
                                          "(CLIP's 80), 'imagenet-simple' (7), 'surgery' (85), or 'custom'.")
        self.custom_templates = LineEdit(label="custom templates", value="a fluorescence micrograph of {}.",
                                         visible=False,
                                         tooltip="Templates separated by '|', each with {} where the prompt goes.")
        self.background = LineEdit(label="background", value="",
                                   tooltip="Comma-separated prompts for what is not wanted ('background, debris'); "
                                           "each heatmap becomes the margin over the best of them.")
        self.resolution = SpinBox(label="resolution", min=32, max=32768, step=32, value=448,
                                  tooltip="Longer side, in pixels, of the image CLIP sees (aspect ratio kept).")
        self.window = SpinBox(label="window", min=0, max=4096, step=16, value=0,
                              tooltip="Sliding window size at that resolution (0 = one pass); windows overlap by "
                                      "half and their logits are averaged.")
        self.max_objects = SpinBox(label="max objects", min=1, max=200, value=5,
                                   tooltip="At most this many objects (peaks) per prompt.")
        self.one_object_per_prompt = CheckBox(label="one object per prompt", value=False,
                                              tooltip="All peaks of a prompt prompt one object (semantic).")
        self.boxes_from_heatmaps = CheckBox(label="boxes from heatmaps", value=False,
                                            tooltip="Also prompt SAM with each object's heatmap blob (its region "
                                                    "above the threshold) as a box; the boxes are editable in "
                                                    "the boxes layer.")
        self.full_resolution_heatmaps = CheckBox(
            label="full-resolution heatmaps", value=False,
            tooltip="Heatmap layers at the image's size (4 bytes a pixel per prompt) instead of the "
                    "localizer's patch grid placed over the image (the same map, shown with linear "
                    "interpolation, a few kB).")
        self.absence_floor = ComboBox(label="absence floor", choices=list(FLOOR_MODES), value="none",
                                      tooltip="A floor on the method's raw similarity that a point must reach; "
                                              "prompts with nothing above it get no points.")
        self.floor_value = FloatSpinBox(label="floor value", min=-1000.0, max=1000.0, step=0.01, value=0.9,
                                        tooltip="absolute: the raw similarity; quantile: q in [0, 1).")
        self.min_presence = FloatSlider(label="min presence", min=0.0, max=1.0, step=0.01, value=0.0,
                                        tooltip="Image-level zero-shot probability a prompt needs to get points.")
        self.more = Container(labels=True, widgets=[
            self.clip_model, self.clip_file, self.sam_model, self.sam_file, self.slices, self.slice_axis,
            self.composite_with, self.templates, self.custom_templates, self.background, self.resolution,
            self.window, self.max_objects, self.one_object_per_prompt, self.boxes_from_heatmaps,
            self.full_resolution_heatmaps, self.absence_floor, self.floor_value, self.min_presence,
        ])
        self.more.margins = (0, 0, 0, 0)
        self.more_options = QCollapsible("More options")
        self.more_options.setCollapsedIcon("▸")  # pointing at what opens, as in most toolkits
        self.more_options.setExpandedIcon("▾")
        self.more_options.setToolTip("Models and local files, nD slices, channels, templates and background "
                                     "prompts, resolution and windows for large images, absence checks")
        self.more_options.addWidget(self.more.native)  # the whole form scrolls (ScrollingForm)
        self.more_options.collapse(animate=False)

        for area in (self.prompts, self.error_details, self.composite_with):  # size from content, not 256 px
            area.native.setSizeAdjustPolicy(QAbstractScrollArea.SizeAdjustPolicy.AdjustToContents)
        self.prompts.native.setMaximumHeight(TEXT_AREA_HEIGHT)  # ... up to a bound: longer texts scroll in place
        self.error_details.native.setMaximumHeight(DETAILS_HEIGHT)
        for label in (self.status, self.error, self.shortcuts):
            wrap_text(label)
        for box in (self.image, self.method, self.clip_model, self.sam_model, self.slices, self.templates,
                    self.absence_floor):  # long item names must not widen the dock
            box.native.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            box.native.setMinimumContentsLength(10)
        self.body.extend([self.image, self.prompts, self.method, self.threshold])
        self.body.native.layout().addWidget(self.more_options)
        self.body.extend([
            self.error_details, self.new_object_button, self.flip_button,
            self.next_mask_button, self.semantic_button, self.export_button, self.tools_button, self.shortcuts,
        ])
        # in view whatever the form's scroll: Run and Cancel, what a run is doing and why it failed
        # (a few lines; the whole message is one click away, in the scrolling form). With "More
        # options" open or the tools docked below, Run was a scroll away on a laptop screen.
        self.actions = Container(layout="horizontal", labels=False, widgets=[self.run_button, self.cancel_button])
        self.actions.margins = (0, 0, 0, 0)
        self.actions.label = ""
        self.footer.extend([self.actions, self.progress, self.status, self.error, self.error_details_button])
        for label in (self.status, self.error):
            label.native.setProperty("max_lines", FOOTER_LINES)
        layout = self.body.native.layout()  # "More options" right under the first four fields
        layout.removeWidget(self.more_options)
        layout.insertWidget(4, self.more_options)
        self.templates.changed.connect(lambda v: setattr(self.custom_templates, "visible", v == "custom"))
        self.absence_floor.changed.connect(self._floor_default)
        self.floor_value.enabled = self.absence_floor.value in self.FLOOR_DEFAULTS
        self.error_details_button.changed.connect(lambda: self.show_details(not self.error_details.visible))
        self.method.changed.connect(self._method_tooltips)
        self._method_tooltips()

    #: a sensible starting value per absence floor mode (absolute 0: "beats every background prompt")
    FLOOR_DEFAULTS = {"absolute": 0.0, "quantile": 0.9}

    def _floor_default(self, mode) -> None:
        if mode in self.FLOOR_DEFAULTS:
            self.floor_value.value = self.FLOOR_DEFAULTS[mode]
        self.floor_value.enabled = mode in self.FLOOR_DEFAULTS  # 'none' and 'otsu' take no value

    def _method_tooltips(self, *_) -> None:
        """Each method's 'when to use' on its own item, and the current one's on the box."""
        box = self.method.native
        for i in range(box.count()):
            box.setItemData(i, METHOD_HELP.get(box.itemText(i), ""), Qt.ItemDataRole.ToolTipRole)
        self.method.tooltip = f"{self.method.value}: {METHOD_HELP.get(self.method.value, '')}"

    # ------------------------------------------------------------------ status and errors
    def show_status(self, text: str) -> None:
        self.status.value = text
        self.status.native.setToolTip(text)
        fit_wrapped_height(self.status.native)

    def show_error(self, short: str, details: str = "") -> None:
        """Keep an error visible until the next run: a short reason, the full text one click away."""
        self.error.value = short
        self.error.visible = True
        self.error.native.setToolTip(short)
        fit_wrapped_height(self.error.native)
        self.error_details.value = details or short
        self.error_details_button.visible = bool(details and details.strip() != short.strip())
        self.show_details(False)

    def show_details(self, shown: bool = True) -> None:
        """Show (or hide) the whole error message under the short one, as tall as its wrapped
        text needs up to DETAILS_HEIGHT (Qt sized the box for four lines of a long message)."""
        self.error_details.visible = shown
        self.error_details_button.text = "Hide details" if shown else "Details…"
        if shown:
            box = self.error_details.native
            width = max(box.viewport().width(), box.width() - 2 * box.frameWidth(), 200)
            doc = box.document()
            doc.setTextWidth(width)
            need = int(doc.size().height()) + 2 * box.frameWidth() + 4
            # as tall as it needs up to DETAILS_HEIGHT where there is room; never so tall that
            # the window must grow past the screen for it (it scrolls inside then)
            box.setMinimumHeight(min(need, DETAILS_HEIGHT))  # in the scrolling form: never grows the window
            self.scroll_area.ensureWidgetVisible(box)
            # once the form's layout has placed the box (it had no place yet: nothing scrolled
            # into view when the form was short, with More options open or the tools docked)
            QTimer.singleShot(0, self._show_details_box)

    def _show_details_box(self) -> None:
        try:
            if self.error_details.visible:
                self.scroll_area.ensureWidgetVisible(self.error_details.native, 0, 0)
        except RuntimeError:  # the form was closed meanwhile
            pass

    def clear_error(self) -> None:
        self.error.value = ""
        self.error.visible = False
        self.error_details.value = ""
        self.show_details(False)
        self.error_details_button.visible = False
