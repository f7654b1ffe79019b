"""The two named zero-shot protocols (``eval.protocol``), each the complete set of its values, in one place.

``groupvit``  GroupViT's protocol as OVSegmentor inherited it (OVSegmentor, CVPR 2023, and GroupViT, CVPR 2022:
              reference/ovsegmentor.md section 7; anchors.md section 1c): one prompt, the threshold background
              rule of ``segment.window_logits`` with per-dataset thresholds: the scores ovseg gave before
              the protocols were named, to the bit.
``tcl``       TCL's unified protocol (Cha et al., CVPR 2023, kakaobrain/tcl@bc2b551; anchors.md section 2.1), the
              one the eight-benchmark table of later papers is computed under: nine prompts and a constant
              background score that competes with the class scores (0.5, or 0.4 with PAMR refinement).

Precedence (``resolve``): a keyword of ``segment_logits`` > a value set in the config's ``eval`` section (every
protocol-governed key defaults to None = "the protocol's value") > the protocol's value for the dataset > the
protocol's default. PAMR (``eval.pamr``, ``ovseg.eval.pamr``) is an option of both protocols.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

BACKGROUND_RULES = ("threshold", "constant")
# the keys of EvalConfig whose None means "the protocol's value"; ``platform/evaluate.py --protocol`` resets them
GOVERNED = ("templates", "short_side", "long_side", "crop_size", "stride", "top_k", "bg_thresh")


@dataclass(frozen=True)
class Reading:
    """How one dataset's images are read: keep-ratio resize, then sliding windows (MMSegmentation's ``slide``)."""

    short_side: int
    long_side: int | None  # the long side at most this (``img_scale=(long, short)``); None: no cap
    crop_size: int
    stride: int


# every dataset config of both codebases has img_scale=(2048, 448) and test_cfg slide crop 448 stride 224
MMSEG_448 = Reading(short_side=448, long_side=2048, crop_size=448, stride=224)


@dataclass(frozen=True)
class Protocol:
    name: str
    title: str
    templates: tuple[str, ...]
    background: str  # "threshold" (GroupViT) or "constant" (TCL): see segment.window_logits
    top_k: int  # the image-level class filter of this model's group -> class scores (see docs/evaluation.md)
    reading: Reading  # datasets not listed in ``readings``
    readings: dict[str, Reading] = field(default_factory=dict)
    # thresholds per dataset; False: ``default_bg_thresh`` for every dataset, whatever a benchmark declares
    per_dataset_bg: bool = True
    bg_thresh: dict[str, float] = field(default_factory=dict)
    default_bg_thresh: float = 0.95
    pamr_bg_thresh: float | None = None  # the threshold when PAMR refines the scores (None: the same)
    # the names classes are prompted with: ovseg.data.benchmarks.protocol_names (the readers' own for groupvit)
    class_names: str = "groupvit"

    def reading_for(self, dataset: str | None) -> Reading:
        return self.readings.get(dataset or "", self.reading)

    def bg_thresh_for(self, dataset: str | None, pamr: bool, bench_value: float | None = None) -> float:
        """The background threshold: the dataset's, else the benchmark's declared one, else the default."""
        if pamr and self.pamr_bg_thresh is not None:
            return self.pamr_bg_thresh
        if not self.per_dataset_bg:
            return self.default_bg_thresh
        if dataset in self.bg_thresh:
            return self.bg_thresh[dataset]
        return bench_value if bench_value is not None else self.default_bg_thresh


GROUPVIT = Protocol(
    name="groupvit",
    title="GroupViT/OVSegmentor",
    # GroupViT configs/default.yml evaluate.seg.template "simple"; OVSegmentor keeps it (ovsegmentor.md s7 Prompts)
    templates=("a photo of a {}.",),
    # pixels whose best class score is below min(bg_thresh, the window's best group score) (group_vit_seg.py
    # encode_decode; ovsegmentor.md s7 "Group -> pixel masks", step 5)
    background="threshold",
    # group_vit_seg.py: softmax over the image's top-5 classes times softmax over all (ovsegmentor.md s7 step 3)
    top_k=5,
    # Resize img_scale=(2048, 448) keep_ratio, slide crop 448 stride 224: OVSegmentor@cfcbc3a and GroupViT
    # segmentation/configs/_base_/datasets/{pascal_voc12,pascal_context,coco,ade20k}.py (ovsegmentor.md s7)
    reading=MMSEG_448,
    readings={name: MMSEG_448 for name in ("voc", "context60", "coco_object", "ade20k")},
    # OVSegmentor@cfcbc3a segmentation/configs: VOC 0.95, Context 0.35, COCO-Object 0.9 (GroupViT: 0.95);
    # ADE20K has no background class (ovsegmentor.md s7 table). The registry's readers declare the same values
    # (ovseg/data/benchmarks: a test checks they agree).
    bg_thresh={"voc": 0.95, "context60": 0.35, "coco_object": 0.9},
    default_bg_thresh=0.95,  # GroupViT's own value for VOC and COCO, used where a dataset declares none
)

TCL = Protocol(
    name="tcl",
    title="TCL",
    # kakaobrain/tcl configs/eval.yml "template: custom"; datasets/templates.py: custom = sub_imagenet_template
    # (7) + ["a photo of many {}.", "a photo of {}s."]
    templates=("itap of a {}.", "a bad photo of a {}.", "a origami {}.", "a photo of the large {}.",
               "a {} in a video game.", "art of the {}.", "a photo of the small {}.",
               "a photo of many {}.", "a photo of {}s."),
    # segmentation/evaluation/tcl_seg.py encode_decode: a channel torch.full(bg_thresh) is concatenated in
    # front of the class masks of datasets whose CLASSES[0] == "background" (builder.py with_bg)
    background="constant",
    # mmseg's CLASSES verbatim (segmentation/datasets/pascal_voc.py PascalVOCDataset20: 'diningtable',
    # 'pottedplant', 'tvmonitor'; Context's 'aeroplane'): ovseg/data/benchmarks/protocol_names.py, cited there
    class_names="tcl",
    top_k=5,  # not a TCL value: TCL has no image-level filter; this model's scores keep theirs (docs/evaluation.md)
    reading=MMSEG_448,
    # one entry per dataset config of configs/eval.yml, each segmentation/configs/_base_/datasets/<file>.py:
    # MultiScaleFlipAug img_scale=(2048, 448) keep_ratio, flip=False; test_cfg slide stride 224 crop 448
    readings={
        "voc": MMSEG_448,          # pascal_voc12.py
        "voc20": MMSEG_448,        # pascal_voc12_20.py
        "context60": MMSEG_448,    # pascal_context.py
        "context59": MMSEG_448,    # pascal_context59.py
        "coco_stuff": MMSEG_448,   # stuff.py
        "coco_object": MMSEG_448,  # coco.py
        "cityscapes": MMSEG_448,   # cityscapes.py
        "ade20k": MMSEG_448,       # ade20k.py
    },
    per_dataset_bg=False,  # one bg_thresh for all datasets (configs/eval.yml evaluate.bg_thresh)
    # TCLSegInference(bg_thresh=0.5) default and README ("Evaluation without PAMR": evaluate.bg_thresh=0.5);
    # configs/eval.yml pamr: true, bg_thresh: 0.4 ("PAMR tends to reduce the foreground area", README)
    default_bg_thresh=0.5,
    pamr_bg_thresh=0.4,
)

PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (GROUPVIT, TCL)}


@dataclass(frozen=True)
class Settings:
    """Every value one benchmark's images are scored with (``resolve``); what ``segment_logits`` runs."""

    protocol: str
    templates: tuple[str, ...]
    short_side: int
    long_side: int | None  # None: no cap
    crop_size: int
    stride: int
    top_k: int
    background: str
    bg_thresh: float
    pamr: bool
    window_batch: int

    def replace(self, **values) -> Settings:
        """A copy with the given values (None values are ignored: "not given")."""
        return dataclasses.replace(self, **{k: v for k, v in values.items() if v is not None})

    def describe(self, class_names: list[str]) -> str:
        """One line naming the protocol and every value it applies to ``class_names``."""
        from .pamr import DILATIONS, ITERATIONS  # torch: this module stays importable without it (config checks)

        has_bg = bool(class_names) and class_names[0].strip().lower() == "background"
        if not has_bg:
            bg = "no background class"
        elif self.background == "constant":
            bg = f"background where every class scores below the constant {self.bg_thresh}"
        else:
            bg = f"background below min({self.bg_thresh}, best group score)"
        cap = f" (long side at most {self.long_side})" if self.long_side else ""
        refine = f", PAMR ({ITERATIONS} iterations, dilations {list(DILATIONS)})" if self.pamr else ""
        return (f"{PROTOCOLS[self.protocol].title} zero-shot protocol: short side {self.short_side}{cap}, window "
                f"{self.crop_size} stride {self.stride}, prompts {list(self.templates)}, top-{self.top_k} "
                f"image-level class filter, {bg}{refine}; {len(class_names)} classes")


def resolve(cfg=None, dataset: str | None = None, bench_bg_thresh: float | None = None, *,
            pamr: bool | None = None, check_values: bool = True) -> Settings:
    """The settings of ``cfg`` (an ``EvalConfig``; None: the defaults) for ``dataset`` (a benchmark name).

    A value set in ``cfg`` wins over the protocol's; ``bench_bg_thresh`` is the benchmark's own declared
    threshold, used by the threshold rule for a dataset the protocol does not list. ``cfg.long_side`` 0 means
    no cap. ``pamr`` overrides ``cfg.pamr`` (and so TCL's threshold). ``check_values``: raise a ValueError
    for values that cannot be scored together (``check``).
    """
    if cfg is None:
        from ..config import EvalConfig

        cfg = EvalConfig()
    if cfg.protocol not in PROTOCOLS:
        raise ValueError(f"unknown evaluation protocol {cfg.protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    proto = PROTOCOLS[cfg.protocol]
    read = proto.reading_for(dataset)
    refine = bool(cfg.pamr if pamr is None else pamr)

    def pick(name: str, default):
        value = getattr(cfg, name)
        return default if value is None else value

    long_side = pick("long_side", read.long_side)
    out = Settings(protocol=proto.name, templates=tuple(pick("templates", proto.templates)),
                   short_side=pick("short_side", read.short_side), long_side=long_side or None,
                   crop_size=pick("crop_size", read.crop_size), stride=pick("stride", read.stride),
                   top_k=pick("top_k", proto.top_k), background=proto.background,
                   bg_thresh=pick("bg_thresh", proto.bg_thresh_for(dataset, refine, bench_bg_thresh)),
                   pamr=refine, window_batch=cfg.window_batch)
    if check_values:
        check(out)
    return out


def check(s: Settings) -> None:
    """Values that cannot be scored together (a ValueError naming the keys)."""
    if s.stride > s.crop_size:
        raise ValueError(f"eval.stride ({s.stride}) must be at most eval.crop_size ({s.crop_size}) under the "
                         f"{s.protocol} protocol: the windows must cover the image")
    if s.window_batch < 1:
        raise ValueError(f"the window batch (eval.window_batch) must be at least 1, got {s.window_batch}")
    if s.background not in BACKGROUND_RULES:
        raise ValueError(f"unknown background rule {s.background!r}; choose one of {BACKGROUND_RULES}")


def prompt_names(protocol: str, dataset: str | None, class_names: list[str]) -> list[str]:
    """The names ``protocol`` prompts ``dataset``'s classes with, in its label order: the protocol's list for a
    benchmark of the eight-benchmark table read with its reader's own names, else ``class_names`` unchanged (a
    renamed benchmark, ``--class-names``, keeps the names it was given)."""
    from ..data.benchmarks.protocol_names import READER_CLASSES, protocol_class_names

    names = list(class_names)
    if dataset not in READER_CLASSES or names != list(READER_CLASSES[dataset]):
        return names
    return [alternatives[0] for alternatives in protocol_class_names(PROTOCOLS[protocol].class_names, dataset)]


def protocol_overrides(protocol: str | None, overrides=()) -> list[str]:
    """``--protocol P`` as dotted overrides before the command line's own: ``eval.protocol=P`` and every
    protocol-governed key the command line does not set reset to null (the protocol's value), so values a
    checkpoint stored (written before the protocols existed, or under another one) do not mix into P's set.
    Without a protocol: the overrides unchanged (the checkpoint's stored protocol, as it logged it)."""
    overrides = list(overrides)
    if protocol is None:
        return overrides
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown evaluation protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    given = {o.partition("=")[0].strip() for o in overrides}
    resets = [f"eval.{k}=null" for k in GOVERNED if f"eval.{k}" not in given]
    return [f"eval.protocol={protocol}", *resets, *overrides]
