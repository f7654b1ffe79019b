"""Zero-shot segmentation benchmarks read from their usual (mmsegmentation) folder layouts.

OVSegmentor (paper §4, eval protocol inherited from GroupViT) reports mIoU on PASCAL VOC 2012, PASCAL Context
and COCO-Object, and the CVPR version adds ADE20K; TCL, SCLIP and the papers after them compare on eight:
VOC21, Context60, COCO-Object (with background), VOC20, Context59, COCO-Stuff-171, Cityscapes, ADE20K-150
(without; the suite ``eight``). They are read without mmseg, with the class names the released code prompts
with (``classes``; other protocols' names in ``protocol_names``) and its background thresholds
(reference/ovsegmentor.md §7), plus the synthetic world's val split. ``registry`` holds the sample interface,
``build_benchmark`` and the suites; each family module registers its benchmarks there, and the converters
from raw downloads (``convert``, ``platform/prepare_benchmark.py``) where the raw layout differs.

Adding a benchmark: write its module with a ``@register(...)`` builder and import it below (the one place).
"""

from ovseg.data.benchmarks import (  # noqa: F401  (each registers its benchmarks and converters)
    ade,
    cityscapes,
    coco_object,
    coco_stuff,
    context,
    voc,
)
