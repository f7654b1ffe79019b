"""Segment images into any class names with a trained checkpoint: a label-map PNG and an overlay per image.

    python platform/predict.py runs/tiny-20261101-120000 photo.jpg street.png --classes "cat,dog,sky" --out preds
    python platform/predict.py ckpt.safetensors img.jpg --classes "road,car,tree,sky" --no-background --device cuda

For ``photo.jpg`` it writes ``preds/photo.label.png`` (a palette PNG of the input's size whose pixel values are
class indices: 0 = background, then the classes in the order given) and ``preds/photo.overlay.png`` (the image
blended with the class colours, with a legend). ``--background`` (the default) adds a background class by the
protocol's threshold (``--bg-thresh``, default the checkpoint's eval.bg_thresh, else 0.95); ``--no-background``
labels every pixel with one of the given classes. An image that cannot be read (corrupt, or a header declaring
more pixels than ``ovseg.data.codecs.MAX_PIXELS``, refused before decoding) or segmented is reported by name
and skipped, the images after it are still written; the exit code is then 1.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads slow shared CPUs (see pretrain.py)

import argparse
import sys
from pathlib import Path

from ovseg.cli import add_debug, command, fail


def _class_names(text: str, background: bool) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if background and names and names[0].lower() == "background":
        names = names[1:]
    if not names:
        raise ValueError(f"--classes {text!r} names no class")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"--classes names {dupes} more than once")
    names = ["background", *names] if background else names
    if len(names) > 255:
        raise ValueError(f"{len(names)} classes do not fit a palette PNG (at most 255)")
    return names


def _read_rgb(path: Path):
    from ovseg.data.codecs import read_rgb_file

    return read_rgb_file(path, upright=True)  # the orientation a viewer shows; a huge header is refused unread


@command("predict")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a checkpoint file, or a run folder (its newest checkpoint_*)")
    p.add_argument("images", nargs="+")
    p.add_argument("--classes", required=True, help='comma-separated class names, e.g. "cat,dog,sky"')
    p.add_argument("--out", default="predictions", help="output folder (created)")
    p.add_argument("--background", action=argparse.BooleanOptionalAction, default=True,
                   help="add a thresholded background class (default: on)")
    p.add_argument("--bg-thresh", type=float, default=None)
    p.add_argument("--alpha", type=float, default=0.5, help="weight of the class colours in the overlay")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    args = add_debug(p).parse_args(argv)

    import numpy as np
    import torch

    from ovseg.checkpoint import find_checkpoint, model_from_checkpoint, read_checkpoint
    from ovseg.data.shardio import atomic_write_bytes
    from ovseg.eval.segment import segment
    from ovseg.eval.textbank import TextBank
    from ovseg.eval.visualize import label_image, overlay_with_legend, png_bytes

    try:
        names = _class_names(args.classes, args.background)
        path = find_checkpoint(args.checkpoint)
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        ckpt = read_checkpoint(path)
        model = model_from_checkpoint(ckpt).to(device)
    except (FileNotFoundError, ValueError, RuntimeError) as e:  # RuntimeError: a --device torch cannot use
        return fail("predict", e, args.debug)
    print(f"[ovseg] checkpoint {path} (step {ckpt.step}) on {device}; classes {names}", flush=True)
    out, used, failed, bank = Path(args.out), set(), 0, TextBank()
    for image_path in map(Path, args.images):
        try:
            rgb = _read_rgb(image_path)
            labels = segment(model, rgb, names, protocol=ckpt.config.eval, bank=bank, background=args.background,
                             bg_thresh=args.bg_thresh)
        except (ValueError, RuntimeError) as e:  # unreadable, too many pixels, too thin for the model's windows
            why = e if isinstance(e, ValueError) else f"cannot be segmented ({e.__class__.__name__}: {e})"
            print(f"error: {image_path}: {why}; skipped", file=sys.stderr, flush=True)
            failed += 1
            continue
        stem, k = image_path.stem, 1
        while stem in used:  # two inputs with the same name from different folders
            stem, k = f"{image_path.stem}-{k}", k + 1
        used.add(stem)
        label_file, overlay_file = out / f"{stem}.label.png", out / f"{stem}.overlay.png"
        atomic_write_bytes(label_file, png_bytes(label_image(labels)))
        atomic_write_bytes(overlay_file, png_bytes(overlay_with_legend(rgb, labels, names, args.alpha)))
        shares = np.bincount(labels.ravel(), minlength=len(names)) / labels.size
        top = ", ".join(f"{names[i]} {shares[i]:.0%}" for i in np.argsort(-shares)[:4] if shares[i] > 0)
        print(f"{image_path} -> {label_file}, {overlay_file} ({top})", flush=True)
    if failed:
        print(f"error: {failed} of {len(args.images)} image(s) failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
