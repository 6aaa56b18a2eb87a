"""Text features of sentences, encoded once: trimmed, batched, cached in memory and on disk.

CLIP's tokenizer pads every sentence to the context length (77), but with a causal mask a
token only sees the tokens before it, so the features at the end-of-text token do not depend
on the padding after it. ``encode_tokens`` therefore runs the text tower only up to the
longest real sentence of a batch (token embedding, positional embedding and causal mask
sliced to that length); everything else is open_clip's own ``encode_text``. Models where
that does not hold (no causal mask, pooling other than at the end token, an overridden
``encode_text``) go through ``model.encode_text`` unchanged.

``TextFeatureCache`` keeps one L2-normalised float32 vector per (model, sentence):

* the model is identified by ``model_fingerprint``: a hash of the text tower's structure
  (names, shapes, dtypes, device type) and contents (for every tensor, up to 4096 evenly
  spaced values and its last one). It is computed once per model object (a few ms for
  ViT-B-16's text tower on a CPU) and recomputed only when a tensor of that tower is replaced
  or modified in place (its storage or version counter changes, e.g. ``load_state_dict``).
  Two weight files (other checkpoints, fine-tunes) practically never agree on every sampled
  value of every tensor; hashing every byte costs ~0.6 s per model, a float64 sum per tensor
  1.2 s (and depends on the thread count). An edit of a few single weights between samples
  would go unseen: call ``TextFeatureCache.clear_memory`` and use another folder for that.
* the sentence is identified by its token ids (so template + prompt, and the tokenizer too).

Entries live in an LRU dict in memory (``max_entries``) and, unless disabled, in small
``.npz`` shards under ``<weights cache>/text-features-v1/<fingerprint>/`` (written
atomically; unreadable or inconsistent shards are deleted and their sentences re-encoded;
oldest shards removed beyond ``max_disk_bytes``). Set ``NAPARI_CLIPSAM_TEXT_CACHE=0`` to keep
the process-wide cache (``shared_cache``) in memory only.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .progress import Task, as_task

__all__ = ["ENV_TEXT_CACHE", "TextFeatureCache", "can_trim", "encode_tokens", "model_fingerprint", "shared_cache"]

ENV_TEXT_CACHE = "NAPARI_CLIPSAM_TEXT_CACHE"
DISK_FORMAT = "text-features-v1"
_DEFAULT = object()
#: sentences per forward pass of the text tower
BATCH = 256
#: evenly spaced values per tensor that enter ``model_fingerprint``
SAMPLES = 4096


# ----------------------------------------------------------------------------- model identity
def _text_tensors(model) -> list[tuple[str, torch.Tensor]]:
    """The tensors the text features depend on: everything but the image tower and logit scale/bias."""
    skip = ("visual.", "logit_scale", "logit_bias")
    named = list(model.named_parameters()) + list(model.named_buffers())
    return [(n, t) for n, t in named if not n.startswith(skip)]


def _state(tensors) -> tuple:
    return tuple((t.data_ptr(), t._version, t.device.type) for _, t in tensors)


_fingerprints: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_fp_lock = threading.Lock()


@torch.no_grad()
def model_fingerprint(model) -> str:
    """A 32-hex-digit identity of ``model``'s text tower (structure, weights, dtype, device
    type); see the module docstring for what is hashed and when it is recomputed."""
    tensors = _text_tensors(model)
    state = _state(tensors)
    with _fp_lock:
        memo = _fingerprints.get(model)
    if memo is not None and memo[0] == state:
        return memo[1]
    h = hashlib.blake2b(digest_size=16)
    h.update(type(model).__qualname__.encode())
    for attr in ("context_length", "vocab_size", "text_pool_type", "text_eos_id"):
        h.update(f"{attr}={getattr(model, attr, None)!r};".encode())
    for name, t in tensors:
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}:{t.device.type};".encode())
        flat = t.detach().reshape(-1)
        if flat.numel():
            step = max(1, flat.numel() // SAMPLES)
            h.update(flat[::step][:SAMPLES].float().cpu().numpy().tobytes())
            h.update(flat[-1:].float().cpu().numpy().tobytes())
    digest = h.hexdigest()
    with _fp_lock:
        _fingerprints[model] = (state, digest)
    return digest


# ----------------------------------------------------------------------------- encoding
def can_trim(model) -> bool:
    """Whether ``encode_tokens`` may cut the padding: open_clip's own ``CLIP.encode_text``
    (not overridden), a causal mask, and pooling at the end-of-text token."""
    try:
        from open_clip.model import CLIP
    except ImportError:  # pragma: no cover - open_clip is a dependency
        return False
    return (
        isinstance(model, CLIP)
        and "encode_text" not in vars(model)
        and type(model).encode_text is CLIP.encode_text
        and getattr(model, "attn_mask", None) is not None
        and getattr(model, "text_pool_type", "argmax") in ("argmax", "eos")
    )


def _end_positions(model, tokens: torch.Tensor) -> torch.Tensor:
    if getattr(model, "text_pool_type", "argmax") == "eos":
        return (tokens == model.text_eos_id).int().argmax(dim=-1)
    return tokens.argmax(dim=-1)


@torch.no_grad()
def encode_tokens(model, tokens: torch.Tensor, trim: bool = True) -> torch.Tensor:
    """(T, context) token ids -> (T, D) float32 L2-normalised text features, on the model's
    device. With ``trim`` (and ``can_trim(model)``) only the first ``max end position + 1``
    tokens go through the tower; otherwise this is ``model.encode_text(tokens)``."""
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be (T, context_length), got shape {tuple(tokens.shape)}")
    if not (trim and can_trim(model)):
        return F.normalize(model.encode_text(tokens).float(), dim=-1)
    ends = _end_positions(model, tokens)
    n = int(ends.max()) + 1 if len(tokens) else 1
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens[:, :n]).to(cast)
    x = x + model.positional_embedding[:n].to(cast)
    x = model.transformer(x, attn_mask=model.attn_mask[:n, :n])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), ends]
    proj = model.text_projection
    if proj is not None:
        x = proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj
    return F.normalize(x.float(), dim=-1)


def _token_key(row: np.ndarray) -> str:
    nz = np.flatnonzero(row)
    row = row[: (nz[-1] + 1) if len(nz) else 0]
    return hashlib.blake2b(row.astype(np.int64).tobytes(), digest_size=16).hexdigest()


# ----------------------------------------------------------------------------- the cache
class TextFeatureCache:
    """Per (model, sentence) text features in memory (LRU) and on disk.

    directory: a folder for the on-disk shards, None for memory only, or (default) the
        weights cache's ``text-features-v1`` folder unless ``NAPARI_CLIPSAM_TEXT_CACHE=0``
        (looked up at each use, so it follows ``NAPARI_CLIPSAM_CACHE``).
    max_entries: vectors kept in memory (16384 x 512 floats = 32 MB).
    max_disk_bytes: the disk folder is trimmed to this size, oldest shards first.
    """

    def __init__(self, directory: str | os.PathLike | None = _DEFAULT, *,  # type: ignore[assignment]
                 max_entries: int = 16384, max_disk_bytes: int = 128 * 2**20):
        if int(max_entries) < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        if int(max_disk_bytes) < 0:
            raise ValueError(f"max_disk_bytes must be >= 0, got {max_disk_bytes}")
        self._directory = directory if directory is _DEFAULT or directory is None else Path(directory)
        self.max_entries, self.max_disk_bytes = int(max_entries), int(max_disk_bytes)
        self._mem: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        self._seen_shards: dict[Path, set[str]] = {}
        self._lock = threading.RLock()
        #: counters: sentences served from memory, loaded from disk, encoded; forward passes
        self.stats = {"memory_hits": 0, "disk_hits": 0, "encoded": 0, "batches": 0}

    @property
    def directory(self) -> Path | None:
        """The folder shards are read from and written to, or None (memory only)."""
        if self._directory is not _DEFAULT:
            return self._directory
        if os.environ.get(ENV_TEXT_CACHE, "").strip().lower() in {"0", "false", "no", "off"}:
            return None
        from .weights import cache_dir

        return cache_dir() / DISK_FORMAT

    def clear_memory(self) -> None:
        """Forget the in-memory entries (the disk shards stay)."""
        with self._lock:
            self._mem.clear()
            self._seen_shards.clear()

    def __len__(self) -> int:
        return len(self._mem)

    # -- lookup -----------------------------------------------------------------------
    def sentence_features(self, model, tokenizer, sentences: Sequence[str], task: Task | None = None
                          ) -> torch.Tensor:
        """(T, D) float32 L2-normalised features of ``sentences`` (on the CPU), encoding only
        the ones not cached, all in one batched, trimmed pass (chunks of ``BATCH``).
        ``task`` gets "text features" reports (sentences encoded) and can cancel between chunks."""
        sentences = [str(s) for s in sentences]
        if not sentences:
            raise ValueError("no sentences to encode")
        fp = model_fingerprint(model)
        tokens = tokenizer(sentences)
        tokens = tokens if isinstance(tokens, torch.Tensor) else torch.as_tensor(np.asarray(tokens))
        full = (tokens[:, -1] != 0).nonzero().flatten().tolist()  # the tokenizer cut these at its length
        if full:
            import warnings

            warnings.warn(f"{len(full)} prompt sentence(s) are longer than CLIP's {tokens.shape[1]} tokens and were "
                          f"cut, e.g. {sentences[full[0]][:80]!r}; shorten the prompt (its end is not read)",
                          stacklevel=2)
        keys = [_token_key(r) for r in tokens.cpu().numpy()]
        out: list[torch.Tensor | None] = [None] * len(keys)
        with self._lock:
            missing = self._from_memory(fp, keys, out)
        if missing:
            self._load_disk(fp)
            with self._lock:
                before = len(missing)
                missing = self._from_memory(fp, keys, out, missing)
                self.stats["disk_hits"] += before - len(missing)
                self.stats["memory_hits"] -= before - len(missing)
        if missing:
            self._encode(model, tokens, keys, missing, out, fp, as_task(task))
        return torch.stack(out)  # type: ignore[arg-type]

    def _from_memory(self, fp, keys, out, which=None) -> list[int]:
        missing = []
        for i in range(len(keys)) if which is None else which:
            hit = self._mem.get((fp, keys[i]))
            if hit is None:
                missing.append(i)
            else:
                self._mem.move_to_end((fp, keys[i]))
                out[i] = hit
                self.stats["memory_hits"] += 1
        return missing

    def _remember(self, fp: str, key: str, feat: torch.Tensor) -> None:
        self._mem[(fp, key)] = feat
        self._mem.move_to_end((fp, key))
        while len(self._mem) > self.max_entries:
            self._mem.popitem(last=False)

    def _encode(self, model, tokens, keys, missing, out, fp, task: Task) -> None:
        device = next(model.parameters()).device
        uniq = list(dict.fromkeys(keys[i] for i in missing))
        first = {k: i for i, k in reversed(list(enumerate(keys)))}
        rows = [first[k] for k in uniq]
        ends = _end_positions(model, tokens[rows]) if can_trim(model) else torch.zeros(len(rows), dtype=torch.long)
        order = [rows[j] for j in torch.argsort(ends, stable=True).tolist()]  # similar lengths together
        new: dict[str, torch.Tensor] = {}
        task.report("text features", 0, len(order), "sentences")
        for b0 in range(0, len(order), BATCH):
            chunk = order[b0:b0 + BATCH]
            feats = encode_tokens(model, tokens[chunk].to(device)).cpu()
            for i, f in zip(chunk, feats):
                new[keys[i]] = f.clone()
            self.stats["batches"] += 1
            task.report("text features", min(b0 + BATCH, len(order)), len(order), "sentences")
        with self._lock:
            self.stats["encoded"] += len(new)
            for k, f in new.items():
                self._remember(fp, k, f)
        for i in missing:
            out[i] = new[keys[i]]
        self._write_disk(fp, new)

    # -- disk -------------------------------------------------------------------------
    def _load_disk(self, fp: str) -> None:
        folder = self.directory
        if folder is None:
            return
        folder = folder / fp
        try:
            names = sorted(p.name for p in folder.iterdir() if p.suffix == ".npz")
        except OSError:
            return
        with self._lock:
            seen = self._seen_shards.setdefault(folder, set())
            todo = [n for n in names if n not in seen]
            seen.update(todo)
        for name in todo:
            path = folder / name
            try:
                with np.load(path, allow_pickle=False) as z:
                    keys, feats = z["keys"], z["features"]
                if (keys.ndim != 1 or feats.ndim != 2 or len(keys) != len(feats) or feats.dtype != np.float32
                        or not np.isfinite(feats).all()):
                    raise ValueError("inconsistent shard")
            except Exception:  # noqa: BLE001 - any unreadable shard is dropped and rebuilt
                try:
                    path.unlink()
                except OSError:
                    pass
                continue
            with self._lock:
                for k, f in zip(keys.tolist(), torch.from_numpy(feats.copy())):
                    self._remember(fp, k.decode() if isinstance(k, bytes) else str(k), f)

    def _write_disk(self, fp: str, new: dict[str, torch.Tensor]) -> None:
        folder = self.directory
        if folder is None or not new or self.max_disk_bytes == 0:
            return
        try:
            (folder / fp).mkdir(parents=True, exist_ok=True)
            keys = np.array(sorted(new), dtype="S32")
            feats = torch.stack([new[k.decode()] for k in keys]).numpy().astype(np.float32)
            name = hashlib.blake2b(keys.tobytes(), digest_size=12).hexdigest() + ".npz"
            fd, tmp = tempfile.mkstemp(dir=folder / fp, suffix=".tmp")
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, keys=keys, features=feats)
            os.replace(tmp, folder / fp / name)
            with self._lock:
                self._seen_shards.setdefault(folder / fp, set()).add(name)
            self._trim_disk(folder)
        except OSError:
            return  # a read-only or full disk only costs the next process a re-encode

    def _trim_disk(self, folder: Path) -> None:
        shards = []
        for p in folder.glob("*/*"):
            try:
                st = p.stat()
            except OSError:
                continue
            shards.append((st.st_mtime, st.st_size, p))
        total = sum(s for _, s, _ in shards)
        for _, size, path in sorted(shards):
            if total <= self.max_disk_bytes:
                break
            try:
                path.unlink()
                total -= size
            except OSError:
                pass

    def disk_bytes(self) -> int:
        """Bytes the shards take on disk now (0 without a folder)."""
        folder = self.directory
        if folder is None or not folder.exists():
            return 0
        return sum(p.stat().st_size for p in folder.glob("*/*") if p.is_file())


_shared: TextFeatureCache | None = None
_shared_lock = threading.Lock()


def shared_cache() -> TextFeatureCache:
    """The process-wide cache every localizer uses by default."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = TextFeatureCache()
        return _shared
