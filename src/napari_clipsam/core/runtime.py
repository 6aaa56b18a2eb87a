"""Process-level safety and device choice for the torch stack (no Qt, no napari).

The one place heavy imports are made safe. Importing ``triton`` (pulled in by
``torchvision.ops``, hence by open_clip and segment-anything) into a process that already
has Mesa's software OpenGL loaded (napari on VMs, remote desktops, CI under Xvfb) crashes
the process: triton carries its own LLVM, whose symbols clash with Mesa's ``libLLVM``.
Inference here never needs triton (no ``torch.compile``), so when Mesa's LLVM is mapped
and triton is not yet imported, we make ``import triton`` fail cleanly; torch then
treats triton as absent.
"""

from __future__ import annotations

import os
import sys

__all__ = ["guard_triton_against_mesa", "mesa_llvm_loaded", "pick_device"]


def mesa_llvm_loaded() -> bool:
    """True when a system ``libLLVM`` (Mesa's llvmpipe/swrast) is mapped into this process."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            return any("libLLVM" in line for line in maps)
    except OSError:  # not Linux: no /proc, and no Mesa-in-VM crash seen there
        return False


def guard_triton_against_mesa() -> bool:
    """Block ``import triton`` if doing it now would crash the process.

    Returns True when the guard was (or already is) in place. Safe to call many times;
    set ``NAPARI_CLIPSAM_ALLOW_TRITON=1`` to opt out.
    """
    if os.environ.get("NAPARI_CLIPSAM_ALLOW_TRITON") == "1":
        return False
    if "triton" in sys.modules:
        return sys.modules["triton"] is None
    if mesa_llvm_loaded():
        sys.modules["triton"] = None  # type: ignore[assignment]
        return True
    return False


def pick_device(device: str | None = None) -> str:
    """Resolve ``None``/``"auto"`` to ``cuda``, ``mps`` or ``cpu``; validate explicit choices."""
    import torch

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
    if kind not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown device {dev!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    return dev
