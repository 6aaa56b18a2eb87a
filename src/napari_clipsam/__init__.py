"""napari-clipsam: annotate images from a word (CLIP localizers -> points -> SAM masks)."""

# importing the core (light: no torch) installs the triton/Mesa import guard, see core/runtime.py
from .core import runtime as _runtime  # noqa: F401

__version__ = "0.1.0"
