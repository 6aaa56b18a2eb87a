"""Pure numpy/torch core of napari-clipsam: no Qt, no napari.

Importing this package first puts the triton/Mesa guard in place (see ``runtime``).
"""

from .runtime import guard_triton_against_mesa as _guard

_guard()
