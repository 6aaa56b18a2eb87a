"""What the verify, probe and slice-finder panels share: a worker with progress and cancel,
one error notification, and reading the main widget's run options through its public fields."""

from __future__ import annotations

from magicgui.widgets import Label, ProgressBar, PushButton
from napari.layers import Labels
from napari.utils.notifications import show_error as notify_error

from ..core.export import classes_from_features
from ..core.localizers import LOCALIZERS, check_prompts
from .form import FOOTER_LINES, ScrollingForm, fit_wrapped_height, wrap_text
from .runner import Runner


class PanelBase(ScrollingForm):
    """A small panel over ``viewer`` that borrows ``main``'s (a ClipSamWidget) models and options."""

    title = "napari-clipsam"

    def __init__(self, viewer, main):
        super().__init__()
        self.viewer = viewer
        self.main = main
        self.progress = ProgressBar(label="progress", min=0, max=1000, value=0, visible=False)
        self.status = Label(label="status", value="ready")
        wrap_text(self.status)
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.cancel_button.changed.connect(self.cancel)
        self.footer.extend([self.progress, self.status])  # in view however the panel scrolls
        self.status.native.setProperty("max_lines", FOOTER_LINES)
        self.runner = Runner(self.progress, self.show_status)

    # -- state ---------------------------------------------------------------------------
    @property
    def is_running(self) -> bool:
        return self.runner.is_running

    def show_status(self, text: str) -> None:
        self.status.value = text
        self.status.native.setToolTip(text)
        fit_wrapped_height(self.status.native)

    def cancel(self, *_) -> None:
        if self.is_running:
            self.show_status("cancelling…")
            self.runner.cancel()

    def fail(self, short: str, details: str = "") -> None:
        """One napari notification and the status line; nothing else changes."""
        self.show_status(f"failed: {short}")
        notify_error(f"{self.title}: {short}")

    def start(self, job, on_done, label: str) -> None:
        """Run ``job(task)`` in a worker; ``on_done(result)`` on the GUI thread."""
        if self.is_running:
            self.fail("already running; cancel it first")
            return
        self.cancel_button.enabled = True

        def done(result):
            self.cancel_button.enabled = False
            try:
                on_done(result)
            except (ValueError, RuntimeError) as exc:
                self.fail(str(exc))

        def failed(short, details):
            self.cancel_button.enabled = False
            self.fail(short, details)

        def cancelled():
            self.cancel_button.enabled = False
            self.show_status("cancelled: nothing was changed")

        self.runner.start(job, on_done=done, on_failed=failed, on_cancelled=cancelled, label=label)

    # -- the main widget's options ---------------------------------------------------------
    def clip(self, task):
        """(model, tokenizer) of the main widget's CLIP choice (loaded or downloaded once)."""
        return self.main.models.clip(self.main.clip_model.value, self.main.clip_file.value, task)

    def templates(self):
        """The run's template ensemble: the main widget's choice, or its method's default."""
        value = self.main.templates.value
        if value == "custom":
            return [t.strip() for t in self.main.custom_templates.value.split("|") if t.strip()]
        if value == "method default":
            return LOCALIZERS[self.main.method.value].default_templates
        return value

    def background(self) -> list[str]:
        items = [b.strip() for b in self.main.background.value.split(",") if b.strip()]
        return check_prompts(items) if items else []

    def prompts(self) -> list[str]:
        lines = [ln for ln in self.main.prompts.value.splitlines() if ln.strip()]
        return check_prompts(lines) if lines else []

    def labels_choices(self, *_):
        return [lay for lay in self.viewer.layers if isinstance(lay, Labels)]

    def default_labels(self):
        """The labels layer a panel works on when none is chosen: the chosen image's run's, else
        the newest run's still in the viewer (None if there is none)."""
        image = self.main.image.value
        alive = [e for e in self.main.editors if e.labels_layer in self.viewer.layers]
        mine = [e for e in alive if e.image_layer is image]
        editor = (mine or alive or [None])[-1]
        return editor.labels_layer if editor is not None else None

    def pick_default_labels(self) -> None:
        """Choose ``default_labels()`` in the panel's ``labels`` field if it is empty."""
        if self.labels.value is None:
            layer = self.default_labels()
            if layer is not None:
                self.labels.value = layer

    def prompts_of(self, labels_layer) -> list[str]:
        """The prompts ``labels_layer`` was annotated with (its run's, from its metadata), else
        the main widget's."""
        own = labels_layer.metadata.get("prompts") if isinstance(labels_layer.metadata, dict) else None
        own = [p for p in own if isinstance(p, str) and p.strip()] if isinstance(own, (list, tuple)) else []
        return check_prompts(list(dict.fromkeys(own))) if own else self.prompts()

    def image_of(self, labels_layer):
        """The image layer a labels layer annotates: the main widget's editor's, else its chosen image."""
        for editor in self.main.editors:
            if editor.labels_layer is labels_layer:
                return editor.image_layer
        return self.main.image.value


def layer_classes(labels_layer) -> tuple[dict[int, str], dict[int, float]]:
    """({id: class}, {id: SAM score}) from a labels layer's features (``class``, ``score``, by
    ``index`` or in napari's row order), else from its metadata["classes"]; background rows
    are skipped (``core.export.classes_from_features``)."""
    return classes_from_features(labels_layer.features, labels_layer.metadata.get("classes"))
