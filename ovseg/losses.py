"""OVSegmentor's losses as pure functions on tensors (paper section 3; reference section 4).

- ``contrastive_loss``: symmetric image-caption InfoNCE over the global batch (section 3.1). The same
  function scores masked entity completion: the decoded masked caption must retrieve its answer prompt.
- ``mask_consistency_loss``: cross-image mask consistency (section 3.3): Hungarian-matched Dice between the
  masks this image's groups draw on a paired image and the paired image's own (momentum) masks.
- ``multilabel_group_loss``: optional (``loss.multilabel_weight``, 0 in the paper's configs): GroupViT's
  multi-label contrast between images and prompts of their captions' entities, read at each image's best group.
- ``mosaic_loss``: optional (``loss.mosaic_weight``): the same multi-label contrast for the patches of each
  image of a two-image mosaic, read at its best patch (``models.mosaic``).
- ``supervised_mask_loss``: for labelled segmentation shards (federated partner sites): per-pixel class
  logits from the group assignment, cross-entropy + Dice against the ground truth.

Distributed training passes ``gather`` (an all-gather that keeps gradients, concatenating ranks in order)
and ``rank``; nothing here touches torch.distributed itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

Gather = Callable[[torch.Tensor], torch.Tensor]


def contrastive_loss(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor, gather: Gather | None = None,
                     rank: int = 0, valid: torch.Tensor | None = None) -> torch.Tensor:
    """0.5 * (CE(s a B^T, i) + CE(s b A^T, i)) with the other ranks' samples as extra negatives.

    a, b: (B, E) L2-normalised; row i of ``a`` matches row i of ``b``. ``valid`` (B,) bool leaves rows out
    both as anchors and as negatives (e.g. captions with no entity, whose answer prompts all coincide).
    """
    a_all, b_all = (gather(a), gather(b)) if gather is not None else (a, b)
    labels = torch.arange(a.shape[0], device=a.device) + a.shape[0] * rank
    logits_ab, logits_ba = logit_scale * a @ b_all.t(), logit_scale * b @ a_all.t()
    if valid is None:
        return 0.5 * (F.cross_entropy(logits_ab, labels) + F.cross_entropy(logits_ba, labels))
    valid_all = (gather(valid.float()) if gather is not None else valid.float()).bool()
    if not valid.any():
        return logits_ab.sum() * 0.0  # no usable row here: no signal, but keep the graph for DDP
    cols = ~valid_all[None, :]
    loss_ab = F.cross_entropy(logits_ab.masked_fill(cols, float("-inf"))[valid], labels[valid])
    loss_ba = F.cross_entropy(logits_ba.masked_fill(cols, float("-inf"))[valid], labels[valid])
    return 0.5 * (loss_ab + loss_ba)


def hungarian_match(cost: torch.Tensor) -> torch.Tensor:
    """(B, G, G) costs -> (B, G) column chosen for each row, minimising each image's total cost.

    One device-to-host copy for the whole batch; each G x G problem is solved by scipy.
    """
    host = cost.detach().float().cpu().numpy()
    cols = np.stack([linear_sum_assignment(c)[1] for c in host])
    return torch.as_tensor(cols, device=cost.device, dtype=torch.long)


def dice_loss(pred: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Per-mask Dice loss 1 - (2|P.T| + s) / (|P| + |T| + s); pred, target (M, P) -> (M,)."""
    inter = (pred * target).sum(-1)
    return 1.0 - (2.0 * inter + smooth) / (pred.sum(-1) + target.sum(-1) + smooth)


def mask_consistency_loss(pred: torch.Tensor, target: torch.Tensor, relevance: torch.Tensor, *, size: int = 224,
                          threshold: float = 0.6, group_ratio: float = 0.5, eps: float = 1e-6) -> torch.Tensor:
    """Cross-image mask consistency.

    pred: (B, G, h, w) logits of this image's group queries against the paired image's patch keys.
    target: (B, G, h, w) the paired image's own group logits (momentum encoder, no gradient).
    relevance: (B, G) how well each group matches the shared entity; the ``int(G * group_ratio)`` least
    relevant groups still take part in the matching and the loss but pass no gradient.
    The loss is the mean Dice over all B * G matched masks (the released code sums per image over the
    batch and divides by G, so its scale grew with the batch).
    """
    B, G = pred.shape[:2]
    n_frozen = int(G * group_ratio)
    if n_frozen:
        frozen = torch.zeros(B, G, dtype=torch.bool, device=pred.device)
        frozen.scatter_(1, relevance.argsort(dim=1)[:, :n_frozen], True)
        pred = torch.where(frozen[:, :, None, None], pred.detach(), pred)
    pred = F.interpolate(pred.float(), size=(size, size), mode="bilinear", align_corners=True).flatten(2)
    with torch.no_grad():
        target = F.interpolate(target.float(), size=(size, size), mode="bilinear", align_corners=True).flatten(2)
        cost = torch.cdist(F.normalize(pred, dim=-1), F.normalize(target, dim=-1))  # (B, G, G) L2
        cols = hungarian_match(cost)
        target = target.gather(1, cols[:, :, None].expand_as(target)).sigmoid()
        target = (target >= threshold * target.amax(-1, keepdim=True)).float()
    lo, hi = pred.amin(-1, keepdim=True), pred.amax(-1, keepdim=True)
    pred = (pred - lo) / (hi - lo + eps)
    return dice_loss(pred.flatten(0, 1), target.flatten(0, 1)).mean()


def supervised_mask_loss(assign: torch.Tensor, group_class_logits: torch.Tensor, labels: torch.Tensor, *,
                         ignore_index: int = 255, dice_weight: float = 1.0, background_class: int | None = None,
                         background_weight: float = 0.0) -> torch.Tensor:
    """Cross-entropy + Dice of per-pixel class logits against a label map, plus a background term.

    assign: (B, G, h, w) assignment of patches to groups (soft, or the straight-through one-hot that the
    training default reads: ``loss.seg_assignment``); group_class_logits: (B, G, C) scaled
    group-class similarities; labels: (B, H, W) class indices, ``ignore_index`` for unlabelled pixels.
    Pixel logits are the assignment-weighted group logits, upsampled to the label size. Dice is averaged
    per mask: over every (image, class) pair whose class occurs in that image.

    Background term (``background_class`` the index of the "background" class, weight > 0): zero-shot
    evaluation has no background prompt; a pixel is background where its group's best probability over the
    named classes is low. So on background pixels the term is ``-log(1 - max_c q_c)``, with q the
    assignment-weighted mixture of the groups' softmax over the other classes: a background group must not
    look like any class, which the cross-entropy alone does not ask (it only asks that the "background"
    prompt win).
    """
    B, C = group_class_logits.shape[0], group_class_logits.shape[-1]
    valid = labels != ignore_index
    if ((labels[valid] < 0) | (labels[valid] >= C)).any():
        raise ValueError(f"label values must lie in [0, {C}) or equal ignore_index {ignore_index}")
    assign = F.interpolate(assign.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
    logits = torch.einsum("bghw,bgc->bchw", assign, group_class_logits.float())
    if not valid.any():
        return logits.sum() * 0.0  # nothing labelled: no signal, but keep the graph for DDP
    ce = F.cross_entropy(logits, labels.long(), ignore_index=ignore_index)
    probs = logits.softmax(1) * valid[:, None]
    onehot = F.one_hot(labels.long().clamp(0, C - 1), C).permute(0, 3, 1, 2).float() * valid[:, None]
    per_mask = dice_loss(probs.flatten(2).flatten(0, 1), onehot.flatten(2).flatten(0, 1))  # (B*C,)
    present = onehot.flatten(2).sum(-1).flatten() > 0
    total = ce + dice_weight * per_mask[present].mean()
    if background_weight and background_class is not None and 0 <= background_class < C and C > 1:
        bg = valid & (labels == background_class)
        if bg.any():
            named = [c for c in range(C) if c != background_class]
            q = torch.einsum("bghw,bgc->bchw", assign, group_class_logits[..., named].float().softmax(-1))
            best = q.amax(1)[bg]  # (n_bg,)
            total = total + background_weight * -torch.log1p(-best.clamp(max=1 - 1e-6)).mean()
    return total


def multilabel_group_loss(group_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """GroupViT's multi-label image-text contrast, scored by each image's best group (an option, not the paper's).

    group_logits: (B, G, C) scaled similarities of every group to the prompt "a photo of a {entity}." of each
    of the C entities named anywhere in the batch; targets: (B, C) 1 where the image's caption names the entity.
    An image scores an entity by its best group (max over G), the same quantity zero-shot segmentation reads.
    Image -> entities: cross-entropy against the caption's entities as equal positives; entity -> images: for
    every entity in the batch, cross-entropy against the images that name it as equal positives; the mean of
    the two. Rows (images) naming nothing and columns naming no image are left out.
    """
    scores = group_logits.float().amax(1)  # (B, C)
    t = targets.float()
    rows, cols = t.sum(1) > 0, t.sum(0) > 0
    if not rows.any():
        return scores.sum() * 0.0  # no entity in the batch: no signal, but keep the graph for DDP
    i2t = -(t[rows] / t[rows].sum(1, keepdim=True) * scores[rows].log_softmax(1)).sum(1).mean()
    tc, sc = t[:, cols], scores[:, cols]
    t2i = -(tc / tc.sum(0, keepdim=True) * sc.log_softmax(0)).sum(0).mean()
    return 0.5 * (i2t + t2i)


def entity_group_loss(group_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Each entity picks out its images' best groups among ALL the batch's groups (an option, not the paper's).

    group_logits: (B, G, C) scaled similarities of every group to the prompt of each of the C entities named in
    the batch; targets: (B, C) 1 where the image's caption names the entity. For entity c, a softmax over the
    B * G groups of the batch, with the best group (argmax, no gradient through the choice) of every image
    naming c as equal positives. Every other group is a negative, the other groups of the same image included:
    unlike an image-level or best-group contrast, it cannot be met by all of an image's groups carrying the
    image's meaning, which is how the runs that fail to localise fail. Columns naming no image are left out.
    """
    B, G, C = group_logits.shape
    t = targets.float()
    cols = t.sum(0) > 0
    if not cols.any():
        return group_logits.sum() * 0.0  # no entity in the batch: no signal, but keep the graph for DDP
    logits = group_logits.float()[:, :, cols]  # (B, G, C')
    best = logits.detach().argmax(1)  # (B, C')
    pos = torch.zeros_like(logits).scatter_(1, best.unsqueeze(1), 1.0) * t[:, cols].unsqueeze(1)  # (B, G, C')
    logp = logits.flatten(0, 1).log_softmax(0)  # (B*G, C'): softmax over every group of the batch
    pos = pos.flatten(0, 1)
    return -((pos * logp).sum(0) / pos.sum(0)).mean()


def mosaic_loss(image_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The patches of each image of a two-image mosaic must name its entities (an option, not the paper's).

    image_logits: (2M, N, C) scaled prompt similarities of the mosaic patches that show image i (row i), -inf on
    the others (``models.mosaic.per_image``); targets: (B, C) the batch's caption entities, B >= 2M. An image
    scores an entity by its best patch in the mosaic; the multi-label contrast of ``multilabel_group_loss`` then
    runs over these. The other image of the same mosaic is a negative like any other, so a group that spreads
    over both, or carries the meaning of the image it does not cover, is penalised: the signal the image-level
    losses lack, which cannot be met by every group carrying the image's meaning.
    """
    if image_logits.shape[0] > targets.shape[0]:
        raise ValueError(f"mosaic patches of {image_logits.shape[0]} images but targets for only {targets.shape[0]}")
    return multilabel_group_loss(image_logits, targets[: image_logits.shape[0]])


def group_usage_loss(assign: torch.Tensor) -> torch.Tensor:
    """How far each image's use of its groups is from even (an option, not the paper's).

    assign: (B, G, h, w) assignment of every patch over the G groups (sums to 1 over G; soft or straight-through
    one-hot, ``loss.group_usage_on``). For each image the
    share of group g is the mean of its assignment over the patches, p_g; the loss is KL(p || uniform) =
    sum_g p_g log(G p_g), 0 when every group holds 1/G of the image, log G when one group holds it all. The
    runs that fail to localise fail with one group over most of the image, the object and its background.
    """
    share = assign.float().flatten(2).mean(-1)  # (B, G)
    G = share.shape[1]
    return (share * (share.clamp(min=1e-12) * G).log()).sum(1).mean()


def group_confidence_loss(assign: torch.Tensor) -> torch.Tensor:
    """Mean entropy of each patch's assignment over the groups, divided by log G (an option, not the paper's).

    assign: (B, G, h, w) softmax over the G groups. 0 when every patch is certain of its group, 1 when every patch
    is even over all groups. For one image, ``group_usage_loss`` (KL of the shares from uniform) + log G x this term
    = log G - I(patch; group), the mutual information between a patch and its group: the shares alone can be made
    even by leaving every patch undecided, and then the hard Gumbel assignment pools a random subset of the
    patches into each group in training.
    """
    a = assign.float().flatten(2)  # (B, G, N)
    G = a.shape[1]
    if G < 2:
        return assign.sum() * 0.0
    entropy = -(a * a.clamp(min=1e-12).log()).sum(1)  # (B, N)
    return entropy.mean() / math.log(G)


def group_diversity_loss(group_emb: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity between the different groups of each image (an option, not the paper's).

    group_emb: (B, G, E) L2-normalised. Averaged over the B * G * (G - 1) ordered pairs g != g'; 0 with one group.
    """
    B, G = group_emb.shape[:2]
    if G < 2:
        return group_emb.sum() * 0.0
    gram = group_emb.float() @ group_emb.float().transpose(1, 2)  # (B, G, G)
    off = gram.sum((1, 2)) - gram.diagonal(dim1=1, dim2=2).sum(1)
    return (off / (G * (G - 1))).mean()
