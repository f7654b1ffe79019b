"""Zero-shot segmentation benchmarks read from their usual (mmsegmentation) folder layouts.

OVSegmentor (paper §4, eval protocol inherited from GroupViT) reports mIoU on PASCAL VOC 2012, PASCAL Context
and COCO-Object, and the CVPR version adds ADE20K. They are read without mmseg, with the class names the
released code prompts with (``classes``) and its background thresholds (reference/ovsegmentor.md §7), plus the
synthetic world's val split. ``registry`` holds the sample interface and ``build_benchmark``; each family module
registers its benchmarks there.

Adding a benchmark: write its module with a ``@register(...)`` builder and import it below (the one place).
"""

from ovseg.data.benchmarks import ade, coco_object, context, voc  # noqa: F401  (each registers its benchmarks)
