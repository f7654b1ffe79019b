"""Image augmentation of caption training, per stage (paper section 4.1; reference 5.5).

Stage 1 = timm's DeiT recipe (RandomResizedCrop 0.08-1, RandAugment m9, random erasing 0.25); stage 2 =
RandomResizedCrop(0.4-1) + horizontal flip; ``"flip"`` = resize + flip only. ImageNet mean/std throughout
(also used by the segmentation batches, which normalise the same way).
"""

from __future__ import annotations

from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

AUGMENTS = ("paper", "light", "flip")


def transform_kind(augment: str, stage: int) -> int | str:
    """What ``data.augment`` means for a training stage: the ``build_image_transform`` argument."""
    if augment not in AUGMENTS:
        raise ValueError(f"data.augment must be one of {AUGMENTS}, got {augment!r}")
    if augment == "flip":
        return "flip"
    return 2 if (stage == 2 or augment == "light") else 1


def build_image_transform(stage: int | str, size: int):
    """The training augmentation of ``stage`` 1 (DeiT / RandAugment) or 2 (crop + flip only); ``"flip"``:
    resize to ``size`` and a horizontal flip, nothing else (for small synthetic images, where a crop can cut
    away an object that the caption names)."""
    if stage == "flip":
        from torchvision import transforms as T

        return T.Compose([T.Resize((size, size), interpolation=T.InterpolationMode.BILINEAR),
                          T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    if stage == 1:
        from timm.data import create_transform
        from timm.data.auto_augment import RandAugment

        transform = create_transform(size, is_training=True, auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25,
                                     re_mode="pixel", re_count=1, interpolation="bilinear",
                                     mean=IMAGENET_MEAN, std=IMAGENET_STD)
        for t in transform.transforms:
            if isinstance(t, RandAugment):
                for op in t.ops:
                    if op.name.startswith("Posterize"):
                        op.aug_fn = _posterize
        return transform
    if stage == 2:
        from torchvision import transforms as T

        return T.Compose([
            T.RandomResizedCrop(size, scale=(0.4, 1.0), interpolation=T.InterpolationMode.BILINEAR),
            T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    raise ValueError(f"stage must be 1 or 2, got {stage!r}")


def _posterize(img: Image.Image, bits_to_keep: int, **_) -> Image.Image:
    """timm's posterize, for any bit count. At magnitude 10 (reachable with mstd0.5) "PosterizeIncreasing"
    keeps 0 bits: Pillow >= 10 raises on that (a crash in about 1 of 300 samples); the Pillow the paper
    used returned a black image, which is what this does."""
    from PIL import ImageOps

    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)
