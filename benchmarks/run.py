"""Issue 14's table, each row beside its reference in the same process.

    python benchmarks/run.py [--rows text,gem,methods,sam] [--repeats 5] [--sam-repeats 3]
                             [--out benchmarks/results/latest.json] [--merge other.json ...]

Models: random-weight full-size models built from the real classes (no weights can be
downloaded here): open_clip ``create_model("ViT-B-16", pretrained=None)`` and
segment-anything ``sam_model_registry["vit_b"](checkpoint=None)`` with its zero-initialised
relative-position tables given small random values (as trained weights have), so the
relative-position bias is really exercised. Speed does not depend on the weights' values.

Every measured variant of a row runs interleaved with the others, ``repeats`` times, after
one warm-up; a row reports median, min and max seconds per variant, the ratios the issue
asks for (medians), the target and whether it is met and by how much. The JSON also holds
torch's thread count, the device, and the load average before and after each row (the
machine is shared; ratios taken in one process are what to compare).

Rows (the widget rows, Run -> labels, point edit -> labels and the Qt event-loop gap, are
measured by ``benchmarks/live_loop.py`` in a real window; pass its JSON with ``--merge`` to
put them into the same table):

* text: text features of 3 prompts x CLIP's 80 templates (and Surgery's 85) vs the image
  forward at 448; before (one untrimmed ``encode_text`` per prompt, no cache), now uncached
  (trimmed, one batch), now from memory (a new localizer on the shared cache: a new Run),
  now from disk (a fresh cache object on the same folder: a new process).
* gem: GEM heatmaps, 3 prompts, 448 x 448, vs a bare ``encode_image`` at 448, now and before
  (unfused attention); the target is 1.1 x GEM's FLOP ratio (counted by torch's
  ``FlopCounterMode`` on the unfused path, whose matmuls it sees).
* methods: MaskCLIP, SCLIP, ClearCLIP, NACLIP and raw heatmaps vs ``encode_image`` (<= 1.05x).
* sam: ``SamSession(sam, accelerate=True).set_image`` (fused attention) vs segment-anything's ``SamPredictor.set_image``
  on a 1024 x 768 image (>= 2x), and their masks (logits within 1e-4) for points and a box.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

PROMPTS = ["cat", "sofa", "remote control"]


def load() -> dict:
    return dict(zip(("1min", "5min", "15min"), (round(v, 2) for v in os.getloadavg())))


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def interleaved(variants: dict, repeats: int, warmup: bool = True) -> dict:
    """{name: fn} -> {name: {median, min, max, runs}} seconds, runs interleaved."""
    if warmup:
        for fn in variants.values():
            fn()
    times = {k: [] for k in variants}
    for _ in range(repeats):
        for k, fn in variants.items():
            times[k].append(timed(fn))
    return {k: {"median": statistics.median(v), "min": min(v), "max": max(v), "runs": len(v)}
            for k, v in times.items()}


def target(name: str, value: float, limit: float, higher_is_better: bool = False) -> dict:
    met = value >= limit if higher_is_better else value <= limit
    by = value / limit if higher_is_better else limit / value
    return {"target": name, "value": round(value, 4), "limit": round(limit, 4), "met": bool(met),
            "margin": f"{'met' if met else 'missed'} by {abs(by - 1) * 100:.0f}%"}


# ----------------------------------------------------------------------------------- CLIP
def clip_model():
    import open_clip
    import torch

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", pretrained=None).eval()
    return model, open_clip.get_tokenizer("ViT-B-16")


def image_448():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (448, 448, 3), dtype=np.uint8)


def row_text(model, tokenizer, repeats: int) -> dict:
    import torch
    from _before import old_text_features

    from napari_clipsam.core.localizers import get_localizer
    from napari_clipsam.core.text_cache import TextFeatureCache

    loc = get_localizer("gem", model, tokenizer, input_size=448)
    pixels = loc.preprocess(image_448())
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, method, templates in [("80 templates (CLIP)", "sclip", "imagenet"),
                                         ("85 templates (Surgery)", "surgery", "surgery")]:
            warm = TextFeatureCache(None)
            disk = Path(tmp) / label.split()[0]
            TextFeatureCache(disk).sentence_features(
                model, tokenizer, [t.format(p) for p in PROMPTS for t in get_localizer(
                    method, model, tokenizer, templates=templates).templates])
            variants = {
                "image forward 448": lambda: torch.no_grad()(loc.encode_image)(pixels),
                "before (untrimmed, per prompt, no cache)": lambda m=method, t=templates: old_text_features(
                    model, tokenizer, PROMPTS, get_localizer(m, model, tokenizer, templates=t).templates),
                "now, uncached (trimmed, one batch)": lambda m=method, t=templates: get_localizer(
                    m, model, tokenizer, templates=t, text_cache=TextFeatureCache(None)).text_features(PROMPTS),
                "now, new Run (memory cache)": lambda m=method, t=templates, w=warm: get_localizer(
                    m, model, tokenizer, templates=t, text_cache=w).text_features(PROMPTS),
                "now, new process (disk cache)": lambda m=method, t=templates, d=disk: get_localizer(
                    m, model, tokenizer, templates=t, text_cache=TextFeatureCache(d)).text_features(PROMPTS),
            }
            before_load = load()
            res = interleaved(variants, repeats)
            img = res["image forward 448"]["median"]
            ratios = {k: round(v["median"] / img, 4) for k, v in res.items()}
            ref = get_localizer(method, model, tokenizer, templates=templates)
            diff = float((old_text_features(model, tokenizer, PROMPTS, ref.templates)
                          - get_localizer(method, model, tokenizer, templates=templates,
                                          text_cache=TextFeatureCache(None)).text_features(PROMPTS)).abs().max())
            out[label] = {
                "seconds": res, "ratio_to_image_forward": ratios, "max_abs_diff_vs_before": diff,
                "targets": [target("cached < 0.3x image forward", ratios["now, new Run (memory cache)"], 0.3),
                            target("new process (disk) < 0.3x image forward",
                                   ratios["now, new process (disk cache)"], 0.3)],
                "load_before": before_load, "load_after": load(),
            }
    return out


def flops(fn) -> int:
    """Matmul FLOPs of ``fn`` as torch's ``FlopCounterMode`` counts them, with every attention
    made visible to it: nn.MultiheadAttention's fused fast path off, and
    ``scaled_dot_product_attention`` (whose CPU kernel the counter does not see) computed as
    its two matmuls for the count."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    def math_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
        logits = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5 if scale is None else scale)
        return (logits if attn_mask is None else logits + attn_mask).softmax(dim=-1) @ v

    fused, enabled = F.scaled_dot_product_attention, torch.backends.mha.get_fastpath_enabled()
    F.scaled_dot_product_attention = math_sdpa
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            fn()
    finally:
        F.scaled_dot_product_attention = fused
        torch.backends.mha.set_fastpath_enabled(enabled)
    return counter.get_total_flops()


def row_gem(model, tokenizer, repeats: int) -> dict:
    import torch
    from _before import old_gem

    from napari_clipsam.core.localizers import get_localizer

    img = image_448()
    loc = get_localizer("gem", model, tokenizer, input_size=448)
    loc.text_features(PROMPTS)  # text is the text row's business: cached here
    pixels = loc.preprocess(img)
    bare = torch.no_grad()(loc.encode_image)

    def before():
        with old_gem():
            return loc.heatmaps(img, PROMPTS)

    flop_ratio = flops(lambda: loc.heatmaps(img, PROMPTS)) / flops(lambda: bare(pixels))
    diff = float(np.abs(before() - loc.heatmaps(img, PROMPTS)).max())
    before_load = load()
    res = interleaved({"encode_image 448": lambda: bare(pixels), "GEM heatmaps, now": lambda: loc.heatmaps(
        img, PROMPTS), "GEM heatmaps, before": before}, repeats)
    base = res["encode_image 448"]["median"]
    now, old = res["GEM heatmaps, now"]["median"] / base, res["GEM heatmaps, before"]["median"] / base
    return {"seconds": res, "ratio_now": round(now, 4), "ratio_before": round(old, 4),
            "flop_ratio": round(flop_ratio, 4), "max_abs_diff_heatmaps_now_vs_before": diff,
            "targets": [target("GEM <= 1.1 x FLOP ratio", now, 1.1 * flop_ratio)],
            "load_before": before_load, "load_after": load()}


def row_methods(model, tokenizer, repeats: int) -> dict:
    import torch

    from napari_clipsam.core.localizers import get_localizer

    img = image_448()
    out = {}
    base_loc = get_localizer("raw", model, tokenizer, input_size=448)
    pixels = base_loc.preprocess(img)
    bare = torch.no_grad()(base_loc.encode_image)
    variants = {"encode_image 448": lambda: bare(pixels)}
    for method in ("maskclip", "sclip", "clearclip", "naclip", "raw", "surgery"):
        loc = get_localizer(method, model, tokenizer, input_size=448)
        loc.text_features(PROMPTS)
        variants[method] = lambda loc=loc: loc.heatmaps(img, PROMPTS)
    before_load = load()
    res = interleaved(variants, repeats)
    base = res["encode_image 448"]["median"]
    for method in variants:
        if method == "encode_image 448":
            continue
        ratio = res[method]["median"] / base
        out[method] = {"ratio": round(ratio, 4)}
        if method != "surgery":  # Surgery runs two streams over 6 blocks: not in this target
            out[method]["target"] = target("<= 1.05x encode_image", ratio, 1.05)
    return {"seconds": res, "methods": out, "load_before": before_load, "load_after": load()}


# ------------------------------------------------------------------------------------ SAM
def row_sam(repeats: int) -> dict:
    import torch
    from segment_anything import SamPredictor, sam_model_registry

    from napari_clipsam.core.sam_speed import is_accelerated
    from napari_clipsam.core.segment import SamSession

    torch.manual_seed(0)
    sam = sam_model_registry["vit_b"](checkpoint=None).eval()
    with torch.no_grad():
        for name, p in sam.image_encoder.named_parameters():
            if "rel_pos" in name:
                p.normal_(0, 0.02)
    rgb = np.random.default_rng(1).integers(0, 256, (768, 1024, 3), dtype=np.uint8)
    ref, session = SamPredictor(sam), SamSession(sam, accelerate=True)
    try:
        half = SamSession(sam, accelerate=True, bf16=True)
    except ValueError as exc:  # an x86 CPU without bf16 units: refused, it would be slower there
        half, bf16_refused = None, str(exc)

    def fast(s=session):
        s._cache.clear()
        s._key = None
        s.set_image(rgb)

    before_load = load()
    variants = {"SamPredictor.set_image": lambda: ref.set_image(rgb), "SamSession.set_image (fused)": fast}
    if half is not None:
        variants["SamSession.set_image (fused, bf16 opt-in)"] = lambda: fast(half)
    res = interleaved(variants, repeats, warmup=False)
    assert not is_accelerated(sam)
    ref.set_image(rgb)
    fast()
    feat_diff = float((ref.features - session.predictor.features).abs().max())
    logit_diff, pixels_differ = 0.0, 0
    prompts = [dict(point_coords=np.array([[500.0, 400.0]]), point_labels=np.array([1]), multimask_output=True),
               dict(point_coords=np.array([[100.0, 100.0], [900.0, 600.0]]), point_labels=np.array([1, 0]),
                    multimask_output=False),
               dict(box=np.array([200.0, 150.0, 700.0, 600.0]), multimask_output=True)]
    for kw in prompts:
        a, _, _ = ref.predict(return_logits=True, **kw)
        b, _, _ = session.predictor.predict(return_logits=True, **kw)
        logit_diff = max(logit_diff, float(np.abs(a - b).max()))
        pixels_differ += int(((a > 0) != (b > 0)).sum())
    bf16 = {"refused": bf16_refused} if half is None else bf16_row(ref, half, prompts, res, fast)
    speedup = res["SamPredictor.set_image"]["median"] / res["SamSession.set_image (fused)"]["median"]
    return {"seconds": res, "speedup": round(speedup, 4), "embedding_max_abs_diff": feat_diff,
            "embedding_max_abs": float(ref.features.abs().max()), "mask_logits_max_abs_diff": logit_diff,
            "mask_pixels_differing": pixels_differ, "bf16_opt_in": bf16,
            "targets": [target(">= 2x SamPredictor", speedup, 2.0, higher_is_better=True),
                        target("mask logits within 1e-4", logit_diff, 1e-4)],
            "load_before": before_load, "load_after": load()}


def bf16_row(ref, half, prompts, res, fast) -> dict:
    fast(half)
    bf16 = {"embedding_max_abs_diff": float((ref.features - half.predictor.features).abs().max())}
    for kw in prompts:
        a, _, _ = ref.predict(return_logits=True, **kw)
        b, _, _ = half.predictor.predict(return_logits=True, **kw)
        bf16["mask_logits_max_abs_diff"] = max(bf16.get("mask_logits_max_abs_diff", 0.0), float(np.abs(a - b).max()))
        bf16["mask_pixels_differing"] = bf16.get("mask_pixels_differing", 0) + int(((a > 0) != (b > 0)).sum())
    bf16["speedup"] = round(res["SamPredictor.set_image"]["median"]
                            / res["SamSession.set_image (fused, bf16 opt-in)"]["median"], 4)
    return bf16


# ---------------------------------------------------------------------------------- table
def table(results: dict) -> str:
    lines = ["| row | reference | now | before | target | result |", "|---|---|---|---|---|---|"]

    def fmt(s):
        return f"{s['median']:.3f} s ({s['min']:.3f}-{s['max']:.3f}, n={s['runs']})"

    rows = results["rows"]
    for label, r in rows.get("text", {}).items():
        s = r["seconds"]
        for t in r["targets"]:
            now_key = "now, new Run (memory cache)" if "cached" in t["target"] else "now, new process (disk cache)"
            lines.append(f"| text {label}, {now_key.split(', ')[1]} | image forward {fmt(s['image forward 448'])} | "
                         f"{fmt(s[now_key])} = {r['ratio_to_image_forward'][now_key]:.3f}x; uncached "
                         f"{r['ratio_to_image_forward']['now, uncached (trimmed, one batch)']:.2f}x | "
                         f"{r['ratio_to_image_forward']['before (untrimmed, per prompt, no cache)']:.2f}x | "
                         f"{t['target']} | {t['margin']} |")
    if "gem" in rows:
        r = rows["gem"]
        t = r["targets"][0]
        lines.append(f"| GEM heatmaps 3 prompts 448 | encode_image {fmt(r['seconds']['encode_image 448'])} | "
                     f"{r['ratio_now']:.2f}x | {r['ratio_before']:.2f}x | {t['target']} ({t['limit']:.2f}x; "
                     f"FLOPs {r['flop_ratio']:.2f}x) | {t['margin']} |")
    if "methods" in rows:
        r = rows["methods"]
        for m, v in r["methods"].items():
            t = v.get("target")
            lines.append(f"| {m} heatmaps 448 | encode_image {fmt(r['seconds']['encode_image 448'])} | "
                         f"{v['ratio']:.2f}x | - | {t['target'] if t else 'none'} | {t['margin'] if t else '-'} |")
    if "sam" in rows:
        r = rows["sam"]
        s = r["seconds"]
        for t in r["targets"]:
            lines.append(f"| SAM vit_b set_image 1024x768 | SamPredictor {fmt(s['SamPredictor.set_image'])} | "
                         f"{fmt(s['SamSession.set_image (fused)'])} = {r['speedup']:.2f}x faster; logits diff "
                         f"{r['mask_logits_max_abs_diff']:.1e} | 1.00x | {t['target']} | {t['margin']} |")
        b = r["bf16_opt_in"]
        if "refused" in b:
            lines.append("| SAM vit_b set_image, bf16 opt-in | SamPredictor | refused on this CPU (no AVX512-BF16/AMX) "
                         "| - | opt-in, not exact | - |")
        else:
            lines.append(f"| SAM vit_b set_image, bf16 opt-in | SamPredictor | "
                         f"{fmt(s['SamSession.set_image (fused, bf16 opt-in)'])} = {b['speedup']:.2f}x faster; logits "
                         f"diff {b['mask_logits_max_abs_diff']:.2g}, {b['mask_pixels_differing']} mask pixels differ | "
                         f"1.00x | opt-in, not exact | - |")
    for name in results.get("merged", {}):
        lines.append(f"| {name} (merged) | see JSON | | | | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="text,gem,methods,sam")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sam-repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "results" / "latest.json"))
    parser.add_argument("--merge", nargs="*", default=[], help="JSON files of other benchmarks to include")
    args = parser.parse_args()

    import torch

    from napari_clipsam.core.sam_speed import cpu_has_bf16_units

    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = set(rows) - {"text", "gem", "methods", "sam"}
    if unknown:
        parser.error(f"unknown rows {sorted(unknown)}; choose from text, gem, methods, sam")
    results = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
               "torch": torch.__version__, "threads": torch.get_num_threads(), "device": "cpu",
               "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_bf16_units": cpu_has_bf16_units(),
               "repeats": args.repeats, "sam_repeats": args.sam_repeats, "load_start": load(), "rows": {}}
    if {"text", "gem", "methods"} & set(rows):
        model, tokenizer = clip_model()
        if "text" in rows:
            results["rows"]["text"] = row_text(model, tokenizer, args.repeats)
        if "gem" in rows:
            results["rows"]["gem"] = row_gem(model, tokenizer, args.repeats)
        if "methods" in rows:
            results["rows"]["methods"] = row_methods(model, tokenizer, args.repeats)
        del model
    if "sam" in rows:
        results["rows"]["sam"] = row_sam(args.sam_repeats)
    results["merged"] = {Path(p).stem: json.loads(Path(p).read_text()) for p in args.merge}
    results["load_end"] = load()
    results["table"] = table(results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))
    print(results["table"], file=sys.stderr)


if __name__ == "__main__":
    main()
