"""Synthetic "cells": textured bright disks on a smooth noisy background, ground truth known."""

from __future__ import annotations

import numpy as np


def cell_slices(n: int, size: int = 160, cells: int = 6, seed: int = 0, debris: int = 0, hard: bool = False):
    """[(image (size, size) uint8, labels (size, size) int32 one id per cell)] * n.

    debris: untextured bright disks that are not cells (not in the labels); hard: cells of
    random brightness, contrast and texture frequency, closer to the background."""
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
            if hard:
                f, a, m = rng.uniform(0.5, 1.2), rng.uniform(15, 40), rng.uniform(110, 190)
            else:
                f, a, m = 0.9, 50, 170
            texture = m + a * np.sin(xx[disk] * f) * np.sin(yy[disk] * f) + 15 * rng.standard_normal(disk.sum())
            img[disk] = texture
        placed = 0
        for _ in range(200 if debris else 0):
            if placed == debris:
                break
            r = rng.uniform(10, 22)
            cy, cx = rng.uniform(r, size - r, 2)
            disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= (r + 3) ** 2
            if (labels[disk] > 0).any():
                continue
            placed += 1
            inner = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            img[inner] = rng.uniform(120, 200) + 12 * rng.standard_normal(inner.sum())
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
