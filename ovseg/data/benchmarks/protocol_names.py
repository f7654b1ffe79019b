"""The class names each published protocol prompts with, per benchmark, aligned with the readers' class lists.

The readers carry one list per benchmark (``classes``: GroupViT's/OVSegmentor's prompt-friendly names where that
protocol has them, mmseg's otherwise). The TCL and SCLIP protocols prompt with other names for a few classes;
``protocol_class_names(protocol, benchmark)`` gives them, one tuple per reader class in the reader's label
order (the background row included where the reader has one), so a scorer can prompt with them and map the
scores back to the reader's labels. A tuple of several names is SCLIP's: each name is prompted and the class
scores the best of them (wangf3014/SCLIP README: "each category can have multiple class names ... separated
by commas").

* ``groupvit``: the readers' own names.
* ``tcl``: kakaobrain/tcl prompts with each mmseg dataset's CLASSES verbatim (mmsegmentation 0.27.0, its
  README): PascalVOCDataset / TCL ``segmentation/datasets/pascal_voc.py`` PascalVOCDataset20 use VOC's
  ``diningtable``, ``pottedplant``, ``tvmonitor``; PascalContextDataset(59) ``aeroplane``, ``pottedplant``,
  ``tvmonitor``; COCO-Object (TCL ``segmentation/datasets/coco_object.py``), COCO-Stuff, Cityscapes and ADE20K
  are the readers' names. TCL never prompts its background row (``segmentation/evaluation/builder.py``).
* ``sclip``: wangf3014/SCLIP ``configs/cls_<dataset>.txt`` (voc21, voc20, context60, context59, coco_object,
  coco_stuff, city_scapes, ade20k), one line per class: the exceptions below, every other name the reader's,
  with its spaces removed in the COCO-Stuff, Cityscapes and ADE20K files (``trafficlight``, ``chestofdrawers``,
  ADE's ``bed`` without its trailing space).
"""

from __future__ import annotations

from ovseg.data.benchmarks.classes import (
    ADE20K_CLASSES,
    CITYSCAPES_CLASSES,
    COCO_OBJECT_CLASSES,
    COCO_STUFF_CLASSES,
    CONTEXT59_CLASSES,
    VOC20_CLASSES,
)

# the reader's class list of each benchmark of the eight-benchmark table (tests check them against the readers)
READER_CLASSES: dict[str, list[str]] = {
    "voc": ["background"] + VOC20_CLASSES, "voc20": list(VOC20_CLASSES),
    "context60": ["background"] + CONTEXT59_CLASSES, "context59": list(CONTEXT59_CLASSES),
    "coco_object": ["background"] + COCO_OBJECT_CLASSES, "coco_stuff": list(COCO_STUFF_CLASSES),
    "cityscapes": list(CITYSCAPES_CLASSES), "ade20k": list(ADE20K_CLASSES),
}

_VOC_TCL = {"table": "diningtable", "plant": "pottedplant", "monitor": "tvmonitor"}
_CONTEXT_TCL = {"airplane": "aeroplane", "plant": "pottedplant", "monitor": "tvmonitor"}
TCL_RENAMES: dict[str, dict[str, str]] = {"voc": _VOC_TCL, "voc20": _VOC_TCL, "context60": _CONTEXT_TCL,
                                          "context59": _CONTEXT_TCL}

# SCLIP configs/cls_voc21.txt and cls_coco_object.txt, line 1: the background row is a list of stuff words
SCLIP_BACKGROUND = ("sky", "wall", "tree", "wood", "grass", "road", "sea", "river", "mountain", "sands", "desk",
                    "bed", "building", "cloud", "lamp", "door", "window", "wardrobe", "ceiling", "shelf", "curtain",
                    "stair", "floor", "hill", "rail", "fence")
_PERSON = ("person", "person in shirt", "person in jeans", "person in dress", "person in sweater",
           "person in skirt", "person in jacket")
_VOC_SCLIP = {"background": SCLIP_BACKGROUND, "boat": ("ship",), "person": _PERSON, "plant": ("pottedplant",),
              "monitor": ("television monitor", "tv monitor", "monitor", "television", "screen")}
_CONTEXT_SCLIP = {name: (new,) for name, new in _CONTEXT_TCL.items()}  # cls_context60.txt keeps 'background'
SCLIP_OVERRIDES: dict[str, dict[str, tuple[str, ...]]] = {
    "voc": _VOC_SCLIP, "voc20": _VOC_SCLIP, "context60": _CONTEXT_SCLIP, "context59": _CONTEXT_SCLIP,
    "coco_object": {"background": SCLIP_BACKGROUND, "person": _PERSON + ("body",)},
}

# the files that write every name without its spaces (cls_coco_object.txt keeps them: 'traffic light')
SCLIP_WITHOUT_SPACES = ("coco_stuff", "cityscapes", "ade20k")

PROTOCOLS = ("groupvit", "tcl", "sclip")


def protocol_class_names(protocol: str, benchmark: str) -> list[tuple[str, ...]]:
    """The names ``protocol`` prompts each class of ``benchmark`` with, in the reader's label order."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if benchmark not in READER_CLASSES:
        raise ValueError(f"no {protocol} class names for benchmark {benchmark!r}; known: {', '.join(READER_CLASSES)}")
    names = READER_CLASSES[benchmark]
    if protocol == "groupvit":
        return [(n,) for n in names]
    if protocol == "tcl":
        renames = TCL_RENAMES.get(benchmark, {})
        return [(renames.get(n, n),) for n in names]
    overrides = SCLIP_OVERRIDES.get(benchmark, {})
    squeeze = benchmark in SCLIP_WITHOUT_SPACES
    return [overrides.get(n, (n.replace(" ", "") if squeeze else n,)) for n in names]
