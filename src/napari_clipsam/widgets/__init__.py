"""napari glue: dock widgets and their worker wiring. The work itself lives in ``core``."""

from .annotate_widget import ClipSamWidget

__all__ = ["ClipSamWidget"]
