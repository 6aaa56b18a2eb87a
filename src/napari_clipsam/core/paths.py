"""Paths as the user gives them.

Python's file functions take ``~`` literally (``open("~/x.tif", "w")`` writes ``./~/x.tif``),
while a user typing ``~/cells.tif`` into a field, a script or a quoted shell argument means
their home folder. Every path the plugin takes from a user goes through ``user_path``.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["disk_error", "user_path"]


def user_path(path: str | os.PathLike) -> Path:
    """``path`` as a ``Path`` with a leading ``~`` or ``~user`` expanded to that home folder."""
    return Path(os.fspath(path)).expanduser()


def _name_max(path: Path) -> int:
    """The longest file name (bytes) the file system at ``path`` takes (255 if it cannot say)."""
    for folder in (path, *path.parents):
        try:
            if folder.is_dir():
                return int(os.pathconf(folder, "PC_NAME_MAX"))
        except (OSError, ValueError, AttributeError):  # no pathconf (Windows), or an unreadable folder
            break
    return 255


def _too_long_hint(path: Path, related: tuple[tuple[Path, str], ...]) -> str:
    limit = _name_max(path.parent)
    for p, what in ((path, ""), *related):
        for part in p.parts:
            size = len(os.fsencode(part))
            if size > limit and (not what or part not in path.parts):
                shown = part if len(part) <= 48 else f"{part[:24]}…{part[-16:]}"
                return (f"check the name's length: '{shown}'{f' ({what})' if what else ''} has {size} bytes and "
                        f"this file system takes at most {limit} bytes a name; choose a shorter one")
    return (f"check the path's length: it has {len(os.fsencode(str(path)))} bytes, more than this system takes; "
            "choose a shorter folder or name")


def disk_error(what: str, path: str | os.PathLike, exc: OSError, *,
               related: tuple[tuple[str | os.PathLike, str], ...] = (), check: str | None = None) -> OSError:
    """A system error ``exc`` (errno set) restated for the user's ``path``: ``"cannot <what>
    <path>: <reason>; <what to do>"``, the same OSError subclass (by errno), so that it never
    names a temporary file or leaves the user with a bare ``[Errno 36]``. ``related``: (file,
    what it is) written or read with ``path``, e.g. (its sidecar, "its sidecar"), named when
    its name is the one too long; ``check``: the advice for other errors."""
    import errno

    path = Path(path)
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno == errno.ENAMETOOLONG:
        advice = _too_long_hint(path, tuple((Path(r), w) for r, w in related))
    else:
        advice = check or ("check that its folder is a folder you can write to and that the disk has space"
                           if what.startswith("write") else "check that the file exists and that you can read it")
    kind = type(OSError(exc.errno, reason))  # the subclass for the errno (FileNotFoundError, PermissionError...)
    error = kind(f"cannot {what} {path}: {reason}; {advice}")  # its text without "[Errno n]" in front
    error.errno = exc.errno
    return error
