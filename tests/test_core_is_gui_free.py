"""core/ must import without Qt or napari (checked in a fresh interpreter)."""

import pkgutil
import subprocess
import sys

import napari_clipsam.core as core


def test_core_modules_import_no_gui():
    mods = [m.name for m in pkgutil.walk_packages(core.__path__, "napari_clipsam.core.")]
    assert "napari_clipsam.core.localizers.gem" in mods and "napari_clipsam.core.segment" in mods
    code = (
        "import importlib, sys\n"
        f"for m in {mods!r}: importlib.import_module(m)\n"
        "bad = sorted(k for k in sys.modules if k.split('.')[0] in "
        "('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'magicgui', 'superqt', 'vispy'))\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
