"""COCO-Object (``coco_object``): its reader, and the converter that makes its labels from COCO-Stuff-164k.

The reader: coco_stuff164k with GroupViT's ``*_instanceTrainIds.png`` labels, background + the 80 thing
classes, background threshold 0.9. The converter, COCO-Stuff-164k labels -> COCO-Object labels:

COCO-Object, the third benchmark of OVSegmentor/GroupViT, is not distributed: it is derived from the
COCO-Stuff pixel maps by GroupViT's ``convert_dataset/convert_coco_object.py``. The mapping (a fact read
from that script, re-implemented here):

* raw COCO-Stuff ids are 0-based; the 80 thing classes use ids 0..90 except the 11 ids COCO never
  assigned (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90), and become labels 1..80 in id order;
* every stuff id (91..181) and the unlabelled value 255 become 0 = background (so COCO-Object has no
  ignore pixels).

GroupViT leaves any other raw value unchanged; such values mean a wrong input file, so here they raise
a ValueError naming the file. Output: ``{stem}_instanceTrainIds.png`` (8-bit) next to the input (or
under ``out_root`` with the same ``annotations/<split>`` layout), written atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ovseg.data.benchmarks.classes import COCO_OBJECT_CLASSES, COCO_THING_IDS
from ovseg.data.benchmarks.registry import SegBenchmark, find, folder_benchmark, identity_lut, register
from ovseg.data.codecs import encode_label_png, label_array
from ovseg.data.shardio import atomic_write_bytes

OUTPUT_SUFFIX = "_instanceTrainIds.png"


@register("coco_object", layout="coco_stuff164k/{images,annotations}/<split>/ with *_instanceTrainIds.png labels",
          bg_thresh=0.9, aliases=("coco",))
def coco_object(root: Path, split: str | None, bg: float | None) -> SegBenchmark:
    return folder_benchmark("coco_object", find(root, "coco_stuff164k"), split or "val2017", OUTPUT_SUFFIX,
                            ["background"] + COCO_OBJECT_CLASSES, identity_lut(81), bg)


def _build_lut() -> np.ndarray:
    lut = np.full(256, -1, dtype=np.int64)
    for train_id, raw in enumerate(COCO_THING_IDS, start=1):
        lut[raw] = train_id
    lut[91:182] = 0   # stuff classes
    lut[255] = 0      # unlabelled
    return lut


_LUT = _build_lut()


def coco_stuff_to_object(raw: np.ndarray, where: str = "label") -> np.ndarray:
    """Map a COCO-Stuff raw label array (values 0..181, 255) to COCO-Object labels (0..80), uint8."""
    raw = np.asarray(raw)
    if raw.size and (raw.min() < 0 or raw.max() > 255):
        raise ValueError(f"{where}: COCO-Stuff labels are 8-bit, got values {raw.min()}..{raw.max()}")
    out = _LUT[raw.astype(np.int64)]
    if (out < 0).any():
        bad = np.unique(raw[out < 0])
        raise ValueError(f"{where}: values {bad[:10].tolist()} are not COCO-Stuff class ids (0..181 or 255)")
    return out.astype(np.uint8)


def convert_coco_object(coco_root: str | Path, splits: tuple[str, ...] = ("val2017",),
                        out_root: str | Path | None = None, overwrite: bool = False) -> dict[str, int]:
    """Convert ``coco_root/annotations/<split>/*.png`` (COCO-Stuff raw maps) to COCO-Object maps.

    Returns the number of files written per split. Existing outputs are kept unless ``overwrite``,
    so an interrupted conversion resumes where it stopped.
    """
    coco_root = Path(coco_root)
    out_root = Path(out_root) if out_root is not None else coco_root
    written: dict[str, int] = {}
    for split in splits:
        src_dir = coco_root / "annotations" / split
        if not src_dir.is_dir():
            raise FileNotFoundError(f"coco_object: COCO-Stuff label folder {src_dir} does not exist")
        sources = sorted(p for p in src_dir.glob("*.png") if "TrainIds" not in p.name)
        if not sources:
            raise ValueError(f"coco_object: no COCO-Stuff label PNGs in {src_dir}")
        count = 0
        for src in sources:
            dst = out_root / "annotations" / split / f"{src.stem}{OUTPUT_SUFFIX}"
            if dst.exists() and not overwrite:
                continue
            with Image.open(src) as img:
                try:
                    raw = label_array(img)
                except ValueError as e:
                    raise ValueError(f"coco_object: {src}: {e}") from None
            atomic_write_bytes(dst, encode_label_png(coco_stuff_to_object(raw, str(src))))
            count += 1
        written[split] = count
    return written
