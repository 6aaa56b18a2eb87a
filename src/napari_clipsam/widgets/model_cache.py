"""The models a widget runs with: loaded once (one CLIP and one SAM kept in memory), or given
ready-made by a script (``use``), and one ``SamSession`` per SAM model so its embedding
cache is shared by runs and live edits. Plain Python: loading happens in the run's worker."""

from __future__ import annotations

import os

from ..core.models import check_offline_weights, checkpoints_problems, load_clip, load_sam
from ..core.progress import Task
from ..core.segment import SamSession


def embedding_cache_dir():
    """Where SAM embeddings persist across sessions (None: memory only, with
    ``NAPARI_CLIPSAM_SAM_DISK_CACHE=0``)."""
    if os.environ.get("NAPARI_CLIPSAM_SAM_DISK_CACHE", "").strip().lower() in {"0", "false", "no", "off"}:
        return None
    from ..core.weights import cache_dir

    return cache_dir() / "sam-embeddings"


class ModelCache:
    def __init__(self):
        self.given: dict = {}
        self._clip: tuple | None = None  # (key, (model, tokenizer))
        self._sam: tuple | None = None  # (key, Sam)
        self._sessions: list[SamSession] = []

    def use(self, clip=None, sam=None) -> None:
        """Use already-loaded models: clip = (open_clip model, tokenizer), sam = a segment-anything
        ``Sam`` or a sam2 ``SAM2Base``."""
        if clip is not None:
            if not (isinstance(clip, (tuple, list)) and len(clip) == 2 and hasattr(clip[0], "encode_image")
                    and callable(clip[1])):
                raise TypeError("clip must be (open_clip model, tokenizer), e.g. "
                                "napari_clipsam.core.models.load_clip(...), got "
                                f"{type(clip).__name__}{f' of {len(clip)}' if isinstance(clip, (tuple, list)) else ''}")
        if sam is not None and not (hasattr(sam, "image_encoder") and hasattr(sam, "sam_mask_decoder")
                                    or hasattr(sam, "image_encoder") and hasattr(sam, "mask_decoder")):
            raise TypeError("sam must be a segment-anything Sam or a sam2 SAM2Base (e.g. from "
                            f"napari_clipsam.core.models.load_sam(...)), got {type(sam).__name__}")
        if clip is not None:
            self.given["clip"] = tuple(clip)
        if sam is not None:
            self.given["sam"] = sam

    def release(self) -> None:
        """Drop every model and session this cache holds (the widget was closed)."""
        self.given = {}
        self._clip = self._sam = None
        self._sessions = []

    def clip(self, label: str, path=None, task: Task | None = None):
        """(model, tokenizer) for 'ARCH / tag' (or a local file for ARCH)."""
        if "clip" in self.given:
            return self.given["clip"]
        name, tag = (s.strip() for s in label.split("/", 1))
        key = (name, str(path) if path else tag)
        if self._clip is None or self._clip[0] != key:
            self._clip = None  # free the previous model before loading the next
            self._clip = (key, load_clip(name, str(path) if path else tag, None, task=task))
        return self._clip[1]

    def check_offline(self, clip_label: str, clip_path, sam_kind: str, sam_path) -> None:
        """Offline, one error naming every official weights file the next loads need and that
        is not cached (loading CLIP would name only its own), and one naming every local file
        that plainly cannot be used; models given or already in memory need nothing."""
        name = tag = None
        if "clip" not in self.given:
            name, tag = (s.strip() for s in clip_label.split("/", 1))
            if self._clip is not None and self._clip[0] == (name, str(clip_path) if clip_path else tag):
                name = None
        kind = None if "sam" in self.given or self.loaded_sam(sam_kind, sam_path) is not None else sam_kind
        # local files: what is plainly wrong with either, both named, before loading anything
        checkpoints_problems({"CLIP": clip_path if name is not None else None,
                              "SAM": sam_path if kind is not None else None})
        check_offline_weights(name, None if clip_path else tag, kind, sam_path)

    def sam(self, kind: str, path=None, task: Task | None = None):
        """The SAM model of ``kind`` (a segment-anything ``Sam`` or a sam2 ``SAM2Base``; or from a local
        checkpoint)."""
        if "sam" in self.given:
            return self.given["sam"]
        key = (kind, str(path) if path else None)
        if self._sam is None or self._sam[0] != key:
            self._sam = None
            self._sam = (key, load_sam(kind, path or None, None, task=task))
        return self._sam[1]

    def loaded_sam(self, kind: str, path=None):
        """The ``Sam`` that ``sam(kind, path)`` would give if it is already in memory, else None."""
        if "sam" in self.given:
            return self.given["sam"]
        key = (kind, str(path) if path else None)
        return self._sam[1] if self._sam is not None and self._sam[0] == key else None

    def session(self, sam, in_use=()) -> SamSession:
        """The session of ``sam``; sessions not in ``in_use`` (and not ``sam``'s) are dropped."""
        for s in self._sessions:
            if s.predictor.model is sam:
                return s
        session = SamSession(sam, disk_cache=embedding_cache_dir())
        self._sessions = [s for s in self._sessions if any(s is u for u in in_use)] + [session]
        return session
