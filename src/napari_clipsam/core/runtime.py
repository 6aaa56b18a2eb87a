"""Process-level safety and device choice for the torch stack (no Qt, no napari).

The one place heavy imports are made safe. Importing ``triton`` (pulled in by
``torchvision.ops``, hence by open_clip and segment-anything) into a process that already
has Mesa's software OpenGL loaded (napari on VMs, remote desktops, CI under Xvfb) crashes
the process: triton carries its own LLVM, whose symbols clash with Mesa's ``libLLVM``.
Inference here never needs triton (no ``torch.compile``).

So importing the plugin installs an import hook (``sys.meta_path``) that decides when
``triton`` is actually imported, whatever the order of imports before: if Mesa's LLVM is
mapped at that moment, the import fails cleanly with ``ModuleNotFoundError`` (and
``importlib.util.find_spec("triton")`` answers None afterwards), and torch treats triton
as absent. If Mesa is not loaded then, triton imports normally. Set
``NAPARI_CLIPSAM_ALLOW_TRITON=1`` to opt out (read when triton is imported). A triton
imported *before* the plugin cannot be unloaded; nothing can be done about that.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys

__all__ = ["ALLOW_TRITON_ENV", "guard_triton_against_mesa", "mesa_llvm_loaded", "pick_device"]

ALLOW_TRITON_ENV = "NAPARI_CLIPSAM_ALLOW_TRITON"


def mesa_llvm_loaded() -> bool:
    """True when a system ``libLLVM`` (Mesa's llvmpipe/swrast) is mapped into this process."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            return any("libLLVM" in line for line in maps)
    except OSError:  # not Linux: no /proc, and no Mesa-in-VM crash seen there
        return False


class _Refuse(importlib.abc.Loader):
    """Loader of a blocked module: creating it fails like an absent module."""

    def create_module(self, spec):
        raise ModuleNotFoundError(
            f"{spec.name} is not imported in this process: Mesa's software OpenGL (libLLVM) is loaded and "
            f"triton's own LLVM would crash it (napari-clipsam does not need triton; set {ALLOW_TRITON_ENV}=1 "
            "to allow it anyway)", name=spec.name)

    def exec_module(self, module):  # pragma: no cover - create_module always raises
        raise ModuleNotFoundError(module.__name__)


class _TritonGuard(importlib.abc.MetaPathFinder):
    """Decides at the moment ``triton`` is imported whether it may be."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] != "triton" or os.environ.get(ALLOW_TRITON_ENV) == "1":
            return None
        if not mesa_llvm_loaded():
            return None  # the normal finders take it from here
        sys.modules["triton"] = None  # later imports and find_spec: "absent", at once
        return importlib.machinery.ModuleSpec(fullname, _Refuse())


_GUARD = _TritonGuard()


def guard_triton_against_mesa() -> bool:
    """Install the import hook (once; first in ``sys.meta_path``). Returns True when
    triton is guarded, False when it was imported already or ``NAPARI_CLIPSAM_ALLOW_TRITON=1``."""
    if os.environ.get(ALLOW_TRITON_ENV) == "1":
        return False
    if _GUARD not in sys.meta_path:
        sys.meta_path.insert(0, _GUARD)
    triton = sys.modules.get("triton", _GUARD)
    return triton is _GUARD or triton is None


def check_device_name(device) -> None:
    """Raise naming ``device`` unless it is None, "auto", "cpu", "cuda", "cuda:N" or "mps" (or a
    torch.device): its form only; whether it is available is ``pick_device``'s question (a
    batch's workers may have a GPU this machine lacks)."""
    if device is not None and not isinstance(device, str) and type(device).__name__ != "device":
        raise TypeError(f"device must be a string such as 'auto', 'cpu', 'cuda' or 'mps', got {device!r}")
    if device in (None, "", "auto"):
        return
    kind, _, index = str(device).partition(":")
    if kind not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown device {str(device)!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    if index and not index.isdigit():
        raise ValueError(f"unknown device {str(device)!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' (N a GPU number) "
                         "or 'mps'")


def pick_device(device: str | None = None) -> str:
    """Resolve ``None``/``"auto"`` to ``cuda``, ``mps`` or ``cpu``; validate explicit choices."""
    import torch

    check_device_name(device)
    if device in (None, "", "auto"):
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
        return "cpu"
    dev = str(device)
    kind = dev.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {dev!r} was asked for but CUDA is not available; use 'cpu' or 'auto'")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {dev!r} was asked for but MPS is not available; use 'cpu' or 'auto'")
    if ":" in dev:
        index = dev.split(":", 1)[1]
        if kind == "cuda" and int(index) >= torch.cuda.device_count():
            raise ValueError(f"device {dev!r}: there are only {torch.cuda.device_count()} CUDA devices "
                             f"(cuda:0..cuda:{torch.cuda.device_count() - 1}); use 'cuda' or 'auto'")
    return dev
