"""Synthetic "cells": textured bright disks on a smooth noisy background, ground truth known."""

from __future__ import annotations

import numpy as np


def cell_slices(n: int, size: int = 160, cells: int = 6, seed: int = 0):
    """[(image (size, size) uint8, labels (size, size) int32 one id per cell)] * n."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for _ in range(n):
        img = 70 + 12 * rng.standard_normal((size, size))
        labels = np.zeros((size, size), np.int32)
        k = 0
        for _ in range(200):
            if k == cells:
                break
            r = rng.uniform(14, 24)
            cy, cx = rng.uniform(r, size - r, 2)
            disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            if (labels[disk] > 0).any():
                continue
            k += 1
            labels[disk] = k
            texture = 170 + 50 * np.sin(xx[disk] * 0.9) * np.sin(yy[disk] * 0.9) + 15 * rng.standard_normal(disk.sum())
            img[disk] = texture
        out.append((np.clip(img, 0, 255).astype(np.uint8), labels))
    return out


def first_objects(labels_list, k: int):
    """The labels keeping only the first ``k`` object ids overall (slice by slice); the rest -> 0."""
    kept, left = [], k
    for labels in labels_list:
        ids = [i for i in np.unique(labels) if i][:max(left, 0)]
        left -= len(ids)
        kept.append(np.where(np.isin(labels, ids), labels, 0).astype(np.int32))
    return kept
