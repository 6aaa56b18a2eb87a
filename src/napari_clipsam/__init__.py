"""napari-clipsam: annotate images from a word (CLIP localizers -> points -> SAM masks)."""

__version__ = "0.1.0"
