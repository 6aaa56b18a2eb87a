"""Paths as the user gives them.

Python's file functions take ``~`` literally (``open("~/x.tif", "w")`` writes ``./~/x.tif``),
while a user typing ``~/cells.tif`` into a field, a script or a quoted shell argument means
their home folder. Every path the plugin takes from a user goes through ``user_path``.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["user_path"]


def user_path(path: str | os.PathLike) -> Path:
    """``path`` as a ``Path`` with a leading ``~`` or ``~user`` expanded to that home folder."""
    return Path(os.fspath(path)).expanduser()
