"""Segment Anything session: the image embedding computed once, then cheap point decodes.

Wraps the library's own predictor (segment-anything's ``SamPredictor`` for SAM 1, sam2's
``SAM2ImagePredictor`` for SAM 2.1, through ``sam_backends``; so pre/post-processing is
exactly the library's) and adds what an interactive tool needs: napari (row, col) points,
an embedding cache keyed by image content, and many objects -> one labels array.
This is the one place where (row, col) becomes SAM's (x, y).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .image import to_rgb_uint8
from .models import check_finite_output
from .options import whole_number
from .paths import user_path
from .points import PointPrompts, object_point_sets
from .sam_backends import backend_for

__all__ = ["SamSession", "image_key", "paint_labels"]


def image_key(rgb: np.ndarray) -> str:
    """A content hash of an image (shape and bytes): equal keys, equal embeddings."""
    h = hashlib.blake2b(digest_size=16)
    h.update(str(rgb.shape).encode())
    h.update(np.ascontiguousarray(rgb).data)
    return h.hexdigest()


def _weights_fingerprint(module) -> str:
    """A hash of a module's tensors: names, shapes, dtypes, and up to 4096 evenly spaced
    values and the last value of each (as ``core.text_cache.model_fingerprint``; a few ms)."""
    import torch

    h = hashlib.blake2b(digest_size=16)
    h.update(type(module).__qualname__.encode())
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
            flat = t.detach().reshape(-1)
            if flat.numel():
                h.update(flat[:: max(1, flat.numel() // 4096)][:4096].float().cpu().numpy().tobytes())
                h.update(flat[-1:].float().cpu().numpy().tobytes())
    return h.hexdigest()


class SamSession:
    """sam: a segment-anything ``Sam`` or a sam2 ``SAM2Base`` (any kind). cache_size:
    embeddings kept in memory (a SAM 1 embedding is 4 MB, a SAM 2.1 one 17 MB with its
    high-resolution features).

    predictor: the library's own predictor (``SamPredictor`` / ``SAM2ImagePredictor``).

    accelerate: (SAM 1 only) compute embeddings with ``core.sam_speed``'s fused attention (applied only
        during ``set_image``, the model is left as it was): 1.7x faster for vit_b on a CPU,
        embedding within ~1e-6 and mask logits within ~1e-6 of segment-anything's, so a
        pixel whose logit lies that close to 0 can change side. False (default):
        segment-anything's own encoder, bit-identical to ``SamPredictor``.
    disk_cache: a folder where embeddings persist across sessions and processes, keyed by
        image content, the image encoder's weights and ``accelerate`` (``.npz`` files, about
        4 MB each for SAM 1, 17 MB for SAM 2.1; unreadable files are ignored and replaced);
        None (default): memory only.
    disk_cache_bytes: the folder is kept below this size, least recently used files first.
    bf16: with ``accelerate``, run the image encoder under bfloat16 autocast (much faster on
        CPUs with AMX/AVX512-BF16 and on GPUs; embeddings are no longer exact, masks may differ
        at their edges). Opt-in only, and refused (``ValueError``) on an x86 CPU without those
        units, where bf16 is several times slower than float32.
    """

    def __init__(self, sam, cache_size: int = 4, *, accelerate: bool = False,
                 disk_cache: str | os.PathLike | None = None, disk_cache_bytes: int = 2 * 2**30,
                 bf16: bool = False):
        cache_size = whole_number("cache_size", cache_size, 1)
        self.backend = backend_for(sam)
        self.predictor = self.backend.predictor
        self.cache_size = cache_size
        for name, value in (("accelerate", accelerate), ("bf16", bf16)):
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"{name} must be True or False, got {value!r}")
        if disk_cache is not None and not isinstance(disk_cache, (str, os.PathLike)):
            raise TypeError(f"disk_cache must be a folder path or None, got {disk_cache!r}")
        if disk_cache is not None and user_path(disk_cache).is_file():
            raise ValueError(f"disk_cache {disk_cache} is a file; give a folder for the embeddings")
        disk_cache_bytes = whole_number("disk_cache_bytes", disk_cache_bytes, 0)
        self.accelerate = bool(accelerate)
        if self.accelerate and not self.backend.accelerable:
            raise ValueError(f"accelerate=True applies to SAM 1 (segment-anything) models only, not to this "
                             f"{self.backend.family} model; leave it False")
        if bf16 and not self.accelerate:
            raise ValueError("bf16=True needs accelerate=True (bf16 is part of the accelerated encoder)")
        self.bf16 = bool(bf16)
        if self.bf16:
            from .sam_speed import require_fast_bf16

            require_fast_bf16(self.backend.device)
        self.disk_cache = None if disk_cache is None else user_path(disk_cache)
        self.disk_cache_bytes = disk_cache_bytes
        self._fingerprint: str | None = None
        self._cache: OrderedDict[str, tuple] = OrderedDict()
        self._key: str | None = None

    # -- disk ---------------------------------------------------------------------------
    def _disk_path(self, key: str) -> Path | None:
        if self.disk_cache is None:
            return None
        if self._fingerprint is None:
            self._fingerprint = _weights_fingerprint(self.backend.fingerprint_module())
        tag = ("bf16" if self.bf16 else "fast") if self.accelerate else "ref"
        return self.disk_cache / f"{self._fingerprint}-{tag}" / f"{key}.npz"

    def _load_disk(self, key: str):
        path = self._disk_path(key)
        if path is None or not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                entry = self.backend.from_arrays({name: z[name] for name in z.files})
            os.utime(path)  # recently used
        except Exception:  # noqa: BLE001 - an unreadable file is dropped and recomputed
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        return entry

    def _save_disk(self, key: str, entry: tuple) -> None:
        path = self._disk_path(key)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **self.backend.to_arrays(entry))
            os.replace(tmp, path)
            files = []
            for f in self.disk_cache.glob("*/*.npz"):
                with contextlib.suppress(OSError):
                    st = f.stat()
                    files.append((st.st_mtime, st.st_size, f))
            total = sum(size for _, size, _ in files)
            for _, size, f in sorted(files):
                if total <= self.disk_cache_bytes or f == path:
                    continue
                with contextlib.suppress(OSError):
                    f.unlink()
                    total -= size
        except OSError:
            return  # a full or read-only disk only costs a recomputation later

    @property
    def image_shape(self) -> tuple[int, int] | None:
        return self.backend.image_shape() if self._key else None

    @property
    def key(self) -> str | None:
        """The key (``image_key``) of the image whose embedding is set, or None."""
        return self._key

    def use(self, key: str) -> bool:
        """Make the cached embedding of ``key`` current; False if it is not cached."""
        if not isinstance(key, str):
            raise TypeError(f"key must be an image key (the str set_image returns), got {key!r}")
        if key == self._key:
            return True
        if key not in self._cache:
            entry = self._load_disk(key)
            if entry is None:
                return False
            self._remember(key, entry)
        self.backend.restore(self._cache[key])
        self._cache.move_to_end(key)
        self._key = key
        return True

    def set_image(self, image: np.ndarray) -> str:
        """Compute (or fetch from the cache) the embedding of a 2D grayscale/RGB(A) image;
        returns its key."""
        rgb = to_rgb_uint8(image)
        key = image_key(rgb)
        if self.use(key):
            return key
        self._key = None
        dtype = None
        if self.bf16:
            import torch

            dtype = torch.bfloat16
        entry = self.backend.embed(rgb, accelerate=self.accelerate, dtype=dtype)
        for t in self.backend.tensors(entry):
            check_finite_output(t, "SAM", "the image embedding")
        self._remember(key, entry)
        self._save_disk(key, entry)
        self._key = key
        return key

    def _remember(self, key: str, entry: tuple) -> None:
        self._cache[key] = entry
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _check_points(self, points_rc, labels, box=None) -> tuple[np.ndarray, np.ndarray]:
        if self._key is None:
            raise RuntimeError("call set_image(image) before predict")
        pts = np.asarray(points_rc, dtype=np.float64)
        if pts.size and (pts.ndim != 2 or pts.shape[1] != 2):
            raise ValueError(f"points must be (N, 2) (row, col) on the image plane, got shape {pts.shape}")
        pts = pts.reshape(-1, 2)
        lab = np.asarray(labels).reshape(-1)
        if len(pts) != len(lab):
            raise ValueError(f"{len(pts)} points but {len(lab)} labels")
        if len(pts) and not np.isin(lab, (0, 1)).all():
            raise ValueError(f"point labels must be 1 (positive) or 0 (negative), got {sorted(set(lab.tolist()))}")
        lab = lab.astype(np.int64)
        if box is None and not (lab == 1).any():
            raise ValueError("SAM needs a positive point or a box for an object; only negative points were given")
        if not np.isfinite(pts).all():
            raise ValueError("points contain NaN/inf coordinates")
        h, w = self.image_shape
        outside = (pts[:, 0] < -0.5) | (pts[:, 0] > h - 0.5) | (pts[:, 1] < -0.5) | (pts[:, 1] > w - 0.5)
        if outside.any():
            raise ValueError(f"points {pts[outside].round(1).tolist()} lie outside the {h} x {w} image; "
                             "move or delete them")
        return pts, lab

    def decode(self, points_rc, labels, box=None, candidate: int | None = None
               ) -> tuple[np.ndarray, float, int | None]:
        """One object's mask (H, W) bool, SAM score and the multimask candidate it is (None
        for SAM's single-mask output) from points (row, col), labels 1/0, an optional box
        (row0, col0, row1, col1) and a candidate to pick (0-2; None: a single point alone
        gets SAM's best of three, anything else SAM's single mask)."""
        pts, lab = self._check_points(points_rc, labels, box)
        if candidate is not None:
            candidate = whole_number("candidate", candidate, 0)
            if candidate > 2:
                raise ValueError(f"candidate must be 0, 1 or 2 (SAM's three masks) or None, got {candidate}")
        sam_box = None
        if box is not None:
            try:
                r0, c0, r1, c1 = np.asarray(box, dtype=np.float64).reshape(4).tolist()
            except (TypeError, ValueError):
                raise ValueError(f"box must be 4 numbers (row0, col0, row1, col1), got {box!r}") from None
            if not np.isfinite([r0, c0, r1, c1]).all():
                raise ValueError(f"box {box} has NaN/inf corners")
            h, w = self.image_shape
            if max(r0, r1) < -0.5 or min(r0, r1) > h - 0.5 or max(c0, c1) < -0.5 or min(c0, c1) > w - 0.5:
                corners = [round(v, 1) for v in (r0, c0, r1, c1)]
                raise ValueError(f"box {corners} (row0, col0, row1, col1) lies outside the {h} x {w} image; "
                                 "move or delete it")
            sam_box = np.array([min(c0, c1), min(r0, r1), max(c0, c1), max(r0, r1)], float)
        multimask = candidate is not None or (len(pts) == 1 and sam_box is None)
        masks, scores = self._predict(pts, lab, sam_box, multimask)
        pick = int(np.argmax(scores)) if candidate is None else candidate
        return masks[pick].astype(bool), float(scores[pick]), (pick if multimask else None)

    def _predict(self, pts, lab, sam_box, multimask: bool) -> tuple[np.ndarray, np.ndarray]:
        """The library's masks (C, H, W) bool and scores for checked (row, col) points, labels and
        an (x0, y0, x1, y1) box: here (row, col) becomes (x, y)."""
        masks, scores = self.backend.predict(pts[:, ::-1].copy() if len(pts) else None,
                                             lab if len(pts) else None, sam_box, multimask)
        check_finite_output(scores, "SAM", "the mask decoder's scores")
        return masks, scores

    def predict(self, points_rc, labels, multimask: bool = True) -> np.ndarray:
        """Mask (H, W) bool for one object from (N, 2) napari (row, col) points, labels 1/0.

        multimask: let SAM propose three masks and keep the best-scoring one (what
        ``SamPredictor.predict(..., multimask_output=True)`` + argmax of scores gives).
        """
        mask, _ = self.predict_with_score(points_rc, labels, multimask)
        return mask

    def predict_with_score(self, points_rc, labels, multimask: bool = True) -> tuple[np.ndarray, float]:
        pts, lab = self._check_points(points_rc, labels)
        masks, scores = self._predict(pts, lab, None, multimask)
        best = int(np.argmax(scores))
        return masks[best].astype(bool), float(scores[best])

    def predict_objects(self, prompts: PointPrompts, objects=None) -> dict[int, tuple[np.ndarray, float, int]]:
        """{object_id: (mask (H, W) bool, SAM score, prompt index)} for every object (or ``objects``).

        A single-point object uses SAM's multimask output (its answer to ambiguity); objects
        with several points use the single-mask output, as SAM's authors advise.
        """
        out = {}
        for oid, (pts, lab, cls) in object_point_sets(prompts).items():
            if objects is not None and oid not in objects:
                continue
            mask, score = self.predict_with_score(pts, lab, multimask=len(pts) == 1)
            out[oid] = (mask, score, cls)
        return out


def paint_labels(masks: dict[int, tuple], shape: tuple[int, int]) -> np.ndarray:
    """Objects' masks -> one (H, W) int32 labels array, value = object id, 0 = background.

    Larger masks are painted first, so a small object inside a large one stays visible.
    """
    labels = np.zeros(shape, dtype=np.int32)
    order = sorted(masks.items(), key=lambda kv: -int(kv[1][0].sum()))
    for oid, (mask, *_rest) in order:
        labels[mask] = oid
    return labels
