"""Few-shot refinement: a linear probe on the localizer's patch features, trained from accepted objects.

Features: the dense tokens of a token-similarity localizer (GEM, raw, MaskCLIP, SCLIP,
ClearCLIP, NACLIP; ``TokenSimilarityLocalizer.tokens``) in CLIP's joint space, L2-normalised,
one per patch of the localizer's working image (single pass, no sliding windows).

Targets: for each class, a patch is positive when at least ``inside`` of its area lies in
objects of that class, negative when none of it lies in any object of that class, and left
out otherwise (boundary patches). One logistic regression per class ("this class vs the
rest", scikit-learn, balanced class weights) gives weights (C, D) and biases (C,).

A probe turns into a localizer (``ProbeLocalizer``): its map for a class is the probe's
probability per patch, so the pipeline (points, SAM) uses it exactly as a CLIP heatmap, on
the next images or slices of the same kind. ``save``/``load``: one small ``.npz`` with the
weights and a JSON record of the model, method, input size and layer it was trained on.
"""

from __future__ import annotations

import hashlib
import json
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .image import to_rgb_uint8
from .localizers.base import MAX_SINGLE_PASS_TOKENS, Localizer, TokenSimilarityLocalizer
from .localizers.prompts import check_prompts
from .options import flag, unit_interval
from .paths import disk_error, user_path
from .progress import Task, as_task

__all__ = ["PROBE_SUFFIX", "LinearProbe", "ProbeLocalizer", "patch_features", "patch_targets", "probe_path",
           "train_probe", "visual_sample"]

PROBE_SUFFIX = ".probe.npz"
_FORMAT = "napari-clipsam probe 1"


def _require_tokens(localizer) -> None:
    if not isinstance(localizer, TokenSimilarityLocalizer):
        raise ValueError(f"a probe needs patch features: method '{getattr(localizer, 'name', localizer)}' has none; "
                         "use gem, raw, maskclip, sclip, clearclip or naclip")


@torch.no_grad()
def patch_features(localizer, image: np.ndarray, task: Task | None = None) -> np.ndarray:
    """(gh, gw, D) float32 L2-normalised patch tokens of ``image`` at the localizer's working
    size (one pass over the whole working image)."""
    _require_tokens(localizer)
    task = as_task(task)
    rgb = to_rgb_uint8(image)
    work = localizer.working_image(rgb)
    ph, pw = localizer.patch_size
    if (work.shape[0] // ph) * (work.shape[1] // pw) > MAX_SINGLE_PASS_TOKENS:
        raise ValueError(f"a {work.shape[0]}x{work.shape[1]} working image is too many patches for one pass; "
                         "lower the resolution to train a probe")
    task.report("patch features")
    feats, (gh, gw) = localizer.tokens(localizer.normalize(work))
    feats = F.normalize(feats.float(), dim=-1)[0, 1:]
    return feats.reshape(gh, gw, -1).cpu().numpy()


def _block_mean(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(gh, gw) mean of ``mask`` over the pixel blocks of each patch: patch (r, c) covers rows
    floor(r * H / gh) .. floor((r + 1) * H / gh) (the same for columns); every pixel is in one patch."""
    h, w = mask.shape
    if h < grid[0] or w < grid[1]:
        raise ValueError(f"labels {mask.shape} are smaller than the {grid} patch grid")
    rows = (np.arange(grid[0]) * h) // grid[0]
    cols = (np.arange(grid[1]) * w) // grid[1]
    sums = np.add.reduceat(np.add.reduceat(mask.astype(np.float64), rows, axis=0), cols, axis=1)
    counts = np.diff(np.append(rows, h))[:, None] * np.diff(np.append(cols, w))[None, :]
    return sums / counts


def patch_targets(labels: np.ndarray, grid: tuple[int, int], classes: Mapping[int, str], names: Sequence[str],
                  inside: float = 0.5) -> np.ndarray:
    """(C, gh, gw) int8 targets per class: 1 inside objects of that class (covered fraction
    >= ``inside``), 0 outside all of them (fraction 0), -1 left out."""
    labels = np.asarray(labels)
    out = np.full((len(names), *grid), -1, np.int8)
    for c, name in enumerate(names):
        ids = [i for i, p in classes.items() if p == name]
        frac = _block_mean(np.isin(labels, ids), grid)
        out[c][frac >= inside] = 1
        out[c][frac <= 0] = 0
    return out


@dataclass
class LinearProbe:
    """Per-class logistic regressions on normalised patch features.

    classes: the class names (prompts); weight (C, D) float32; bias (C,) float32;
    info: where it comes from (clip model, method, input_size, layer, objects per class...).
    """

    classes: list[str]
    weight: np.ndarray
    bias: np.ndarray
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        self.classes = check_prompts(self.classes)
        self.weight = np.asarray(self.weight, np.float32)
        self.bias = np.asarray(self.bias, np.float32).reshape(-1)
        n = len(self.classes)
        if self.weight.ndim != 2 or self.weight.shape[0] != n or self.bias.shape[0] != n:
            raise ValueError(f"probe weight {self.weight.shape} / bias {self.bias.shape} do not match "
                             f"{len(self.classes)} classes")
        if not (np.isfinite(self.weight).all() and np.isfinite(self.bias).all()):
            raise ValueError("probe weights contain NaN/inf values")

    @property
    def dim(self) -> int:
        return int(self.weight.shape[1])

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """(..., D) features -> (C, ...) probabilities."""
        logits = np.tensordot(features.astype(np.float32), self.weight.T, axes=1) + self.bias
        return np.moveaxis(1.0 / (1.0 + np.exp(-logits)), -1, 0).astype(np.float32)

    def localizer(self, base: Localizer) -> ProbeLocalizer:
        """A localizer whose maps are this probe's probabilities on ``base``'s features."""
        return ProbeLocalizer(base, self)

    def heatmaps(self, image: np.ndarray, base: Localizer, prompts: Sequence[str] | str | None = None,
                 task: Task | None = None) -> np.ndarray:
        """(C, H, W) float32 probabilities at image size (bilinear from the patch grid)."""
        return self.localizer(base).similarity(image, prompts or self.classes, task)

    # -- files --------------------------------------------------------------------------
    def save(self, path, *, overwrite: bool = False) -> Path:
        """Write the probe to ``path`` (``.probe.npz`` added when missing: ``probe_path``);
        returns the path. An existing file is replaced only with ``overwrite=True``; a folder
        never. A system error is an OSError saying "cannot write the probe to <path>: ..."."""
        given = user_path(path)
        overwrite = flag("overwrite", overwrite)
        path = probe_path(given)
        try:
            return self._save(given, path, overwrite)
        except OSError as exc:
            if exc.errno is None:  # ours (FileExistsError, IsADirectoryError): already says what to do
                raise
            raise disk_error("write the probe to", path, exc) from exc

    def _save(self, given: Path, path: Path, overwrite: bool) -> Path:
        for p in (given, path):
            if p.is_dir():
                example = p / ("probe" + PROBE_SUFFIX)
                raise IsADirectoryError(f"{p} is a folder: give the probe a file name, e.g. {example}")
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} already exists: choose another name, or pass overwrite=True to replace it")
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = dict(format=_FORMAT, classes=list(self.classes), info=self.info)
        from .export import atomic_write

        def write(tmp: str) -> None:
            with open(tmp, "wb") as fh:  # a file object: numpy adds no ".npz" to the temporary name
                np.savez_compressed(fh, weight=self.weight, bias=self.bias, meta=np.array(json.dumps(meta)))
        atomic_write(path, write)
        return path

    @classmethod
    def load(cls, path) -> LinearProbe:
        """Read a probe file (``path`` as saved: without ``.probe.npz``, it is added)."""
        path = user_path(path)
        try:
            return cls._load(path)
        except OSError as exc:
            if exc.errno is None:  # ours (no probe file at ...): already says what to do
                raise
            raise disk_error("read the probe from", path, exc) from exc

    @classmethod
    def _load(cls, path: Path) -> LinearProbe:
        if not path.exists() and probe_path(path).is_file():
            path = probe_path(path)
        if not path.exists():
            raise FileNotFoundError(f"no probe file at {path}")
        try:
            with np.load(path, allow_pickle=False) as z:  # a .npy file is no context manager: TypeError
                meta = json.loads(str(z["meta"]))
                weight, bias = z["weight"], z["bias"]
        except Exception as exc:  # noqa: BLE001 - zip, key, JSON and type errors mean the same to the user
            if isinstance(exc, OSError) and exc.errno is not None:  # the system's error: load says it
                raise
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ValueError(f"{path} is not a napari-clipsam probe file, or it is damaged ({first}); "
                             "train the probe again or choose another file") from exc
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise ValueError(f"{path} is not a napari-clipsam probe file (format {found!r})")
        if not isinstance(meta.get("classes"), list):
            raise ValueError(f"{path} is damaged: it lists no classes; train the probe again")
        info = meta.get("info")
        return cls(meta["classes"], weight, bias, info if isinstance(info, dict) else {})

    def check(self, localizer) -> None:
        """Raise ValueError if ``localizer``'s features are not the ones this probe learnt: a
        feature size, an image tower (``visual_sample``) or a method other than its own."""
        _require_tokens(localizer)
        dim = int(localizer.text_features([self.classes[0]]).shape[-1])
        trained_with = f"use the model it was trained with ({self.info.get('clip', 'unknown')})"
        if dim != self.dim:
            raise ValueError(f"the probe was trained on {self.dim}-dim features, this CLIP gives {dim}; {trained_with}")
        recorded = self.info.get("visual_sample")
        if isinstance(recorded, dict) and not _same_visual(recorded, visual_sample(localizer.model)):
            raise ValueError(f"the probe was trained on the features of another CLIP image encoder (other weights "
                             f"or architecture, same feature size); {trained_with}")
        method = self.info.get("method")
        if method and method != localizer.name:
            raise ValueError(f"the probe was trained on '{method}' features; choose method '{method}' "
                             f"(got '{localizer.name}')")


class ProbeLocalizer(TokenSimilarityLocalizer):
    """``base``'s patch tokens scored by a probe: map of class c = sigmoid(w_c . f + b_c).
    Prompts must be classes of the probe. Sliding windows, sizes and templates as ``base``."""

    name = "probe"

    def __init__(self, base: Localizer, probe: LinearProbe):
        probe.check(base)
        super().__init__(base.model, base.tokenizer, templates=base.templates, input_size=base.input_size,
                         window=base.window, stride=base.stride, batch_size=base.batch_size,
                         pos_interpolation=base.pos_interpolation)
        self.base = base
        self.probe = probe

    def tokens(self, pixels):
        return self.base.tokens(pixels)

    @torch.no_grad()
    def patch_maps(self, pixels: torch.Tensor, prompts: Sequence[str] | str) -> torch.Tensor:
        prompts = check_prompts(prompts)
        missing = [p for p in prompts if p not in self.probe.classes]
        if missing:
            raise ValueError(f"the probe knows {self.probe.classes}, not {missing}")
        rows = [self.probe.classes.index(p) for p in prompts]
        w = torch.from_numpy(self.probe.weight[rows]).to(self.device)
        b = torch.from_numpy(self.probe.bias[rows]).to(self.device)
        feats, (gh, gw) = self.base.tokens(pixels.to(self.device, self.dtype))
        feats = F.normalize(feats.float(), dim=-1)[:, 1:]
        prob = torch.sigmoid(feats @ w.T + b)  # (B, N, P)
        return prob.transpose(1, 2).reshape(prob.shape[0], -1, gh, gw)


def probe_path(path) -> Path:
    """Where a probe named ``path`` is stored: ``path`` itself if it ends in .npz, else with
    ``.probe.npz`` added (save and load agree on it)."""
    path = user_path(path)
    return path if path.name.endswith(".npz") else path.with_name(path.name + PROBE_SUFFIX)


#: how many values of each of the image tower's weight tensors ``visual_sample`` records
SAMPLE_VALUES = 4


def visual_sample(model) -> dict:
    """A small record of ``model``'s image tower that tells its weights from another's
    whatever the device or precision: a hash of its tensors' names and shapes, and
    ``SAMPLE_VALUES`` evenly spaced values of every tensor (~600 numbers for ViT-B/16)."""
    params = list(model.visual.named_parameters())
    values = []
    with torch.no_grad():
        for _, t in params:
            flat = t.detach().reshape(-1)
            if flat.numel():
                picked = flat[torch.linspace(0, flat.numel() - 1, SAMPLE_VALUES).long()].float().cpu().tolist()
                values.extend(float(f"{v:.7g}") for v in picked)
    structure = hashlib.sha256(";".join(f"{n}:{tuple(t.shape)}" for n, t in params).encode()).hexdigest()[:16]
    return {"structure": structure, "values": values}


def _same_visual(recorded: Mapping, now: Mapping) -> bool:
    """Equal structure and sampled values equal to half precision (a model loaded in
    float16 or bfloat16 is still the same model)."""
    try:
        if recorded.get("structure") != now["structure"]:
            return False
        a = np.asarray(recorded.get("values"), np.float64)
        b = np.asarray(now["values"], np.float64)
    except (TypeError, ValueError):
        return False  # a hand-damaged record: not the model's
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=1e-2, atol=1e-6))


def train_probe(
    localizer,
    examples: Sequence[tuple[np.ndarray, np.ndarray, Mapping[int, str]]],
    *,
    classes: Sequence[str] | None = None,
    inside: float = 0.5,
    C: float = 1.0,
    info: Mapping | None = None,
    task: Task | None = None,
) -> LinearProbe:
    """Fit a probe from accepted objects.

    examples: (image (H, W[, 3]), labels (H, W) ids, classes {id: prompt}) per image or
        slice; objects of an id missing from its classes are ignored (neither class).
    classes: the classes to learn (default: every prompt in the examples, in first-seen order).
    inside: covered fraction that makes a patch positive; C: inverse L2 strength.
    info: recorded in the probe (clip model label, layer name, ...); method, input size,
        objects per class and patch counts are added.
    """
    from sklearn.linear_model import LogisticRegression

    _require_tokens(localizer)
    task = as_task(task)
    if not examples:
        raise ValueError("no examples: give at least one (image, labels, classes)")
    for i, ex in enumerate(examples):
        if not (isinstance(ex, (tuple, list)) and len(ex) == 3 and isinstance(ex[2], Mapping)):
            raise TypeError(f"example {i} must be (image, labels, classes {{id: prompt}}), got "
                            f"{type(ex).__name__}{f' of {len(ex)}' if isinstance(ex, (tuple, list)) else ''}")
    if classes is None:
        seen: list[str] = []
        for _, _, cls in examples:
            for p in cls.values():
                if p not in seen:
                    seen.append(p)
        classes = seen
    inside = unit_interval("inside", inside)
    if inside == 0:
        raise ValueError("inside must be > 0 (the covered fraction that makes a patch positive; 0 would make "
                         "background patches positive too)")
    if isinstance(C, (bool, np.bool_)) or not isinstance(C, (numbers.Real, np.number)) or not 0 < float(C) < np.inf:
        raise ValueError(f"C (the inverse regularisation strength) must be a finite number > 0, got {C!r}")
    names = check_prompts(classes) if classes else []  # a string is one class, not its letters
    if not names:
        raise ValueError("the examples have no classified objects (classes {id: prompt} are empty)")
    feats, targets = [], []
    counts = dict.fromkeys(names, 0)
    for n, (image, labels, cls) in enumerate(examples):
        labels = np.asarray(labels)
        rgb = to_rgb_uint8(image)
        if labels.shape != rgb.shape[:2]:
            raise ValueError(f"example {n}: labels {labels.shape} and image {rgb.shape[:2]} differ in size")
        present = set(np.unique(labels).tolist()) - {0}
        cls = {int(k): str(v) for k, v in cls.items() if int(k) in present}
        for p in cls.values():
            if p in counts:
                counts[p] += 1
        f = patch_features(localizer, rgb, task.within(f"example {n + 1}/{len(examples)}", (n, len(examples))))
        feats.append(f.reshape(-1, f.shape[-1]))
        targets.append(patch_targets(labels, f.shape[:2], cls, names, inside).reshape(len(names), -1))
    x = np.concatenate(feats)
    y = np.concatenate(targets, axis=1)
    weight, bias = [], []
    for c, name in enumerate(names):
        task.report("fitting", c, len(names), "classes")
        keep = y[c] >= 0
        pos, neg = int((y[c] == 1).sum()), int((y[c] == 0).sum())
        if pos == 0 or neg == 0:
            raise ValueError(f"class '{name}' has {pos} patches inside and {neg} outside its objects; "
                             "a probe needs both (objects larger than a patch, and some background)")
        model = LogisticRegression(C=float(C), class_weight="balanced", max_iter=2000)
        model.fit(x[keep], y[c][keep])
        weight.append(model.coef_[0])
        bias.append(model.intercept_[0])
    task.report("fitting", len(names), len(names), "classes")
    record = dict(info or {})
    record.update(method=localizer.name, input_size=localizer.input_size, templates=list(localizer.templates),
                  objects=counts, patches=int(x.shape[0]), dim=int(x.shape[1]),
                  visual_sample=visual_sample(localizer.model))
    return LinearProbe(names, np.stack(weight), np.array(bias), record)
