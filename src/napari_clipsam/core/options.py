"""Checks for options given through the Python API: a value of the wrong type or range
raises TypeError/ValueError naming the parameter, the value and what is allowed, where it is
first seen (not deep inside skimage or torch, and never a silently different result)."""

from __future__ import annotations

import numbers

import numpy as np

__all__ = ["flag", "optional_whole_number", "unit_interval", "whole_number"]


def whole_number(name: str, value, minimum: int) -> int:
    """``value`` as an int >= ``minimum``; a bool, a fractional or non-finite number, or a
    non-number raises naming ``name``, the value and the allowed range."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a whole number >= {minimum}, got the bool {value!r}")
    if not isinstance(value, (numbers.Real, np.number)) or isinstance(value, np.complexfloating):
        raise TypeError(f"{name} must be a whole number >= {minimum}, got {value!r} ({type(value).__name__})")
    as_float = float(value)
    if not np.isfinite(as_float) or as_float != int(as_float):
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}; round it first")
    if int(as_float) < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return int(as_float)


def unit_interval(name: str, value) -> float:
    """``value`` as a float in [0, 1]; anything else raises naming ``name``."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a number within [0, 1], got the bool {value!r}")
    if not isinstance(value, (numbers.Real, np.number)) or isinstance(value, np.complexfloating):
        raise TypeError(f"{name} must be a number within [0, 1], got {value!r} ({type(value).__name__})")
    v = float(value)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must be within [0, 1], got {value!r}")
    return v


def optional_whole_number(name: str, value, minimum: int) -> int | None:
    """``whole_number``, with None passed through (the option's default)."""
    return None if value is None else whole_number(name, value, minimum)


def flag(name: str, value) -> bool:
    """``value`` as a bool; anything but True/False (``"no"`` is truthy) raises naming ``name``."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)
