"""``napari-clipsam``: open napari with the plugin docked, optionally on a sample image."""

from __future__ import annotations

import argparse


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="napari-clipsam", description=__doc__)
    parser.add_argument("images", nargs="*", help="image files to open")
    parser.add_argument("--sample", choices=["chelsea", "immunohistochemistry"], default=None,
                        help="open one of the plugin's sample images")
    args = parser.parse_args(argv)

    import napari

    viewer = napari.Viewer()
    if args.sample:
        viewer.open_sample("napari-clipsam", args.sample)
    for path in args.images:
        viewer.open(path)
    viewer.window.add_plugin_dock_widget("napari-clipsam", "Annotate from words")
    napari.run()


if __name__ == "__main__":
    main()
