"""``napari-clipsam``: open napari with the plugin docked, optionally on a sample image.

``napari-clipsam batch ...``: annotate a folder, glob or list of images headless (see
``napari-clipsam batch --help`` and docs/batch.md).
"""

from __future__ import annotations

import argparse
import sys


def _launcher(argv) -> None:
    parser = argparse.ArgumentParser(prog="napari-clipsam", description=__doc__.replace("``", ""),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="*", help="image files to open")
    parser.add_argument("--sample", choices=["chelsea", "immunohistochemistry"], default=None,
                        help="open one of the plugin's sample images")
    args = parser.parse_args(argv)
    import glob
    import os
    from pathlib import Path

    from .core.paths import user_path

    images = [os.fspath(user_path(p)) for p in args.images]  # '~/x.tif' quoted: the shell left the ~
    missing = [p for p in images if not Path(p).exists() and not glob.has_magic(p)]
    if missing:
        hint = ("; to annotate images headless, the subcommand is 'napari-clipsam batch ...'"
                if missing[0] == images[0] and not Path(missing[0]).suffix else "")
        parser.error(f"no such file or folder: {', '.join(missing)}{hint}")

    print("napari-clipsam: starting napari and the plugin (the first start takes a while: torch, napari and "
          "the models' code load)…", file=sys.stderr, flush=True)
    import napari
    from qtpy.QtCore import QTimer

    viewer = napari.Viewer()
    viewer.window.add_plugin_dock_widget("napari-clipsam", "Annotate from words")
    if args.sample:
        viewer.open_sample("napari-clipsam", args.sample)
    for path in images:
        viewer.open(path)
    # the view was fitted to the canvas before the dock took its share of the window: fit it
    # again once the window is laid out (else the image opens cropped at the sides)
    QTimer.singleShot(0, viewer.reset_view)
    napari.run()


def _factory(spec: str):
    """'module:function' -> the function (a model factory returning (clip, tokenizer, sam))."""
    import importlib

    module, _, name = spec.partition(":")
    if not module or not name:
        raise argparse.ArgumentTypeError(f"--models-factory takes 'module:function', got {spec!r}")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise argparse.ArgumentTypeError(f"cannot import {spec!r}: {exc}") from None


def batch_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="napari-clipsam batch",
        description="Annotate images headless with the widget's pipeline (CLIP heatmaps -> points -> SAM masks) "
                    "and write label exports with provenance sidecars. Runs on a local Dask cluster or an "
                    "existing scheduler; finished images are skipped when run again (resume).")
    p.add_argument("inputs", nargs="+", help="image files, folders or glob patterns ('data/*.tif')")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("-p", "--prompts", nargs="+", required=True, help="classes, e.g. cell 'mitotic cell; mitosis'")
    g = p.add_argument_group("localizer")
    g.add_argument("--method", default="gem", help="localizer (gem, raw, maskclip, sclip, clearclip, naclip, "
                                                   "attention, surgery, gradcam); default gem")
    g.add_argument("--templates", default=None,
                   help="template set (single, imagenet, imagenet-simple, surgery) or templates with {} "
                        "separated by '|'; default: the method's")
    g.add_argument("--background", nargs="*", default=[], help="background prompts")
    g.add_argument("--input-size", type=int, default=448, help="longer side of the working image (0: native)")
    g.add_argument("--window", type=int, default=None, help="sliding-window side in working pixels")
    g.add_argument("--stride", type=int, default=None, help="sliding-window step")
    g = p.add_argument_group("points and absence")
    g.add_argument("--threshold", type=float, default=0.6, help="heatmap value a peak needs (0..1)")
    g.add_argument("--max-objects", type=int, default=None, help="at most this many objects per prompt")
    g.add_argument("--negatives", type=int, default=None, help="negative points per prompt")
    g.add_argument("--one-object-per-prompt", action="store_true", help="semantic mode: one object per prompt")
    g.add_argument("--absence-floor", choices=["none", "absolute", "quantile", "otsu"], default=None,
                   help="raw-similarity floor a positive point must reach")
    g.add_argument("--absence-value", type=float, default=None, help="the floor's value (absolute / quantile)")
    g.add_argument("--min-presence", type=float, default=0.0, help="image-level probability a prompt needs")
    g = p.add_argument_group("images")
    g.add_argument("--channel-axis", type=int, default=None, help="axis of the channels of multichannel images")
    g.add_argument("--channels", type=int, nargs="+", default=None, help="channels to blend (default: all)")
    g = p.add_argument_group("models")
    g.add_argument("--clip-model", default="ViT-B-16", help="open_clip model name")
    g.add_argument("--clip-weights", default="openai", help="open_clip pretrained tag or a local checkpoint file")
    g.add_argument("--sam-kind", default=None,
                   help="SAM kind (vit_b, vit_l, vit_h, sam2.1_tiny, ...); default: the widget's (SAM 2.1 tiny "
                        "on a CPU where sam2 is installed, else vit_b)")
    g.add_argument("--sam-checkpoint", default=None, help="local SAM checkpoint (default: official, cached)")
    g.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    g.add_argument("--models-factory", type=_factory, default=None, metavar="MODULE:FUNCTION",
                   help="a function returning (clip, tokenizer, sam), importable on the workers "
                        "(overrides the model options)")
    g = p.add_argument_group("outputs")
    g.add_argument("-f", "--format", dest="formats", nargs="+", default=[".tif"],
                   help="label exports: .tif .png .npy .json (COCO) .zarr/.ome.zarr (OME-Zarr); default .tif")
    g.add_argument("--points", action="store_true", help="also write each image's points as napari CSV")
    g.add_argument("--no-resume", action="store_true", help="redo images whose outputs already match")
    g.add_argument("--overwrite", action="store_true",
                   help="replace files at the output paths that napari-clipsam did not write (its own earlier "
                        "outputs are replaced anyway; input images never)")
    g = p.add_argument_group("dask")
    g.add_argument("--scheduler", default=None, help="address of a running Dask scheduler (tcp://host:8786); "
                                                     "default: a local cluster")
    g.add_argument("--workers", type=int, default=None, help="local cluster: number of workers")
    g.add_argument("--threads", type=int, default=None, help="torch threads per worker")
    g.add_argument("--in-process", action="store_true",
                   help="local cluster of threads in this process instead of worker processes")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def batch(argv) -> int:
    """Run ``napari-clipsam batch``; returns the exit code (0 all good, 1 an image failed,
    2 bad options, 130 interrupted)."""
    parser = batch_parser()
    args = parser.parse_args(argv)

    from .core.absence import AbsenceRule
    from .core.batch import BatchOptions, ModelSpec, ModelsUnavailable, run_batch
    from .core.progress import Cancelled
    from .core.weights import WeightsError

    point_params = {k: v for k, v in (("max_objects", args.max_objects), ("negatives", args.negatives))
                    if v is not None}
    if args.one_object_per_prompt:
        point_params["one_object_per_prompt"] = True
    templates = args.templates
    if templates is not None and "|" in templates:
        templates = tuple(t for t in templates.split("|") if t)
    try:
        if args.absence_value is not None and args.absence_floor is None:
            raise ValueError("--absence-value is the value of an absence floor: give --absence-floor too "
                             "(absolute or quantile)")
        for flag, value in (("--workers", args.workers), ("--threads", args.threads)):
            if value is not None and value < 1:
                raise ValueError(f"{flag} must be 1 or more, got {value}")
        if not str(args.output).strip():
            raise ValueError("--output is empty: give the folder the exports go to")
        absence = None
        if args.absence_floor is not None or args.min_presence:
            absence = AbsenceRule(floor=args.absence_floor or "none", value=args.absence_value,
                                  min_presence=args.min_presence)
        models = args.models_factory or ModelSpec(args.clip_model, args.clip_weights, args.sam_kind,
                                                  args.sam_checkpoint, args.device)
        options = BatchOptions(
            prompts=tuple(args.prompts), method=args.method, templates=templates, background=tuple(args.background),
            input_size=args.input_size or None, window=args.window, stride=args.stride, threshold=args.threshold,
            absence=absence, point_params=point_params, channel_axis=args.channel_axis,
            channels=tuple(args.channels) if args.channels else None, formats=tuple(args.formats),
            points=args.points, models=models)
    except (TypeError, ValueError, ImportError, FileNotFoundError) as exc:
        parser.error(str(exc))
    try:
        result = run_batch(args.inputs, args.output, options, scheduler=args.scheduler, n_workers=args.workers,
                           threads_per_worker=args.threads, processes=not args.in_process,
                           resume=not args.no_resume, overwrite=args.overwrite, progress=not args.no_progress)
    except (Cancelled, KeyboardInterrupt):
        print("napari-clipsam batch: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError, WeightsError, ModelsUnavailable) as exc:
        print(f"napari-clipsam batch: {exc}", file=sys.stderr)
        return 2
    import pandas as pd

    table = result.table()
    table["error"] = [e if len(e) <= 60 else e[:59] + "…" for e in table["error"]]  # in full below
    with pd.option_context("display.max_colwidth", 80, "display.width", 200):
        print(table.to_string(index=False))
    failed = len(result.failed)
    if failed:
        print("\nerrors:")
        for r in result.failed:
            print(f"  {r['image']}: {r['error']}")
    if result.left_out:  # inputs that are not images: said, never dropped unseen
        print(f"\nleft out ({len(result.left_out)}):")
        for d in result.left_out[:5]:
            print(f"  {d['path']}: {d['reason']}")
        if len(result.left_out) > 5:
            print(f"  and {len(result.left_out) - 5} more")
    counts = {s: sum(r["status"] == s for r in result.rows) for s in ("done", "skipped", "failed")}
    print(f"{counts['done']} done, {counts['skipped']} skipped (already up to date), {failed} failed; "
          f"outputs in {args.output}")
    return 1 if failed else 0


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "batch":
        sys.exit(batch(argv[1:]))
    _launcher(argv)


if __name__ == "__main__":
    main()
