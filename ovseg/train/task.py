"""What a training run optimises: a model bound to a table of named, weighted loss terms.

Each ``LossTerm`` names itself (its metric is ``loss_<name>``: ``train/loss_<name>`` in MLflow, the same key in
a federated site's reply), the ``LossConfig`` field that weights it, and a function of the model's outputs and
the batch that returns the unweighted term, or ``None`` when this batch or model output does not carry its
inputs. A term with weight 0 is off. The total is the weighted sum in table order.

Adding a loss term: one function in ``ovseg.losses``, one entry in ``LOSS_TERMS`` (and its weight's field in
``LossConfig``, where every tunable default lives). Metric names, MLflow keys and the federated metric keys all
derive from the table (``metric_names``).

Paper sections: contrast 3.1, entity completion 3.2, mask consistency 3.3; multi-label, entity-group, mosaic and
group diversity are this project's additions for small models trained from scratch (README, differences from
the paper);
``seg`` is the supervised mask loss of segmentation sites in a hybrid federation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..config import LossConfig
from ..models.mosaic import compose
from ..losses import (
    Gather,
    contrastive_loss,
    entity_group_loss,
    group_diversity_loss,
    group_confidence_loss,
    group_usage_loss,
    mask_consistency_loss,
    mosaic_loss,
    multilabel_group_loss,
    supervised_mask_loss,
)

Outputs = dict[str, torch.Tensor]


@dataclass(frozen=True)
class LossContext:
    cfg: LossConfig
    gather: Gather | None = None
    rank: int = 0


@dataclass(frozen=True)
class LossTerm:
    name: str
    weight: str  # the LossConfig field that weights it ("" = weight 1, always on)
    compute: Callable[[Outputs, dict, LossContext], torch.Tensor | None]

    @property
    def metric(self) -> str:
        return f"loss_{self.name}"


def _contrast(out, batch, ctx):
    # segmentation batches leave out repeated class-name captions (``caption_valid``): false negatives otherwise
    return contrastive_loss(out["image_emb"], out["text_emb"], out["logit_scale"], ctx.gather, ctx.rank,
                            valid=batch.get("caption_valid"))


def _entity(out, batch, ctx):
    if "entity_emb" not in out:
        return None
    return contrastive_loss(out["entity_emb"], out["answer_emb"], out["logit_scale"], ctx.gather, ctx.rank,
                            valid=batch.get("has_entity"))


def _mask(out, batch, ctx):
    if "mask_pred" not in out:
        return None
    rows = batch.get("has_pair")  # rows whose paired image shares an entity
    if rows is None:
        rows = torch.ones(out["mask_pred"].shape[0], dtype=torch.bool, device=out["mask_pred"].device)
    if not rows.any():
        return out["mask_pred"].sum() * 0.0
    c = ctx.cfg
    return mask_consistency_loss(out["mask_pred"][rows], out["mask_target"][rows], out["mask_relevance"][rows],
                                 size=c.mask_size, threshold=c.mask_threshold, group_ratio=c.group_ratio)


def _multilabel(out, batch, ctx):
    if "group_class_logits" not in out or batch.get("entity_targets") is None:
        return None
    return multilabel_group_loss(out["group_class_logits"], batch["entity_targets"])


def _entity_group(out, batch, ctx):
    if "group_class_logits" not in out or batch.get("entity_targets") is None:
        return None
    return entity_group_loss(out["group_class_logits"], batch["entity_targets"])


def _mosaic(out, batch, ctx):
    if "mosaic_logits" not in out or batch.get("entity_targets") is None:
        return None
    return mosaic_loss(out["mosaic_logits"], batch["entity_targets"])


def _diversity(out, batch, ctx):
    return group_diversity_loss(out["group_emb"]) if "group_emb" in out else None


def _usage(out, batch, ctx):
    # "hard": the shares of the one-hot assignment the groups were pooled with (soft shares can also be made
    # even by leaving every patch undecided); "soft": the softmax over groups
    key = "assign_hard" if ctx.cfg.group_usage_on == "hard" else "assign"
    return group_usage_loss(out[key]) if key in out else None


def _confidence(out, batch, ctx):
    return group_confidence_loss(out["assign"]) if "assign" in out else None


def _seg(out, batch, ctx):
    if "group_class_logits" not in out or batch.get("label") is None:
        return None
    bg = batch.get("background_class")  # index of "background" in the batch's classes, -1 when none
    assign = out["assign_hard"] if ctx.cfg.seg_assignment == "hard" else out["assign"]
    return supervised_mask_loss(assign, out["group_class_logits"], batch["label"],
                                background_class=None if bg is None or int(bg) < 0 else int(bg),
                                background_weight=ctx.cfg.seg_background_weight)


LOSS_TERMS: tuple[LossTerm, ...] = (
    LossTerm("contrast", "contrast_weight", _contrast),
    LossTerm("entity", "entity_weight", _entity),
    LossTerm("mask", "mask_weight", _mask),
    LossTerm("multilabel", "multilabel_weight", _multilabel),
    LossTerm("entity_group", "entity_group_weight", _entity_group),
    LossTerm("mosaic", "mosaic_weight", _mosaic),
    LossTerm("diversity", "group_diversity_weight", _diversity),
    LossTerm("usage", "group_usage_weight", _usage),
    LossTerm("confidence", "group_confidence_weight", _confidence),
    LossTerm("seg", "seg_weight", _seg),
)


PROXIMAL = "proximal"


def proximal_term(model: torch.nn.Module, global_tensors: dict[str, torch.Tensor], mu: float) -> LossTerm:
    """FedProx as a loss term: mu / 2 * sum ||w - w_global||^2 over the trainable tensors of ``global_tensors``."""
    named = dict(model.named_parameters())
    pairs = [(named[k], g.to(named[k].device)) for k, g in global_tensors.items()
             if k in named and named[k].requires_grad]

    def compute(_out, _batch, _ctx):
        return 0.5 * mu * sum(((p - g) ** 2).sum() for p, g in pairs)

    return LossTerm(PROXIMAL, "", compute)


def metric_names(terms: tuple[LossTerm, ...] = LOSS_TERMS) -> tuple[str, ...]:
    """The per-step loss metrics a task with ``terms`` can report: the total, then each term."""
    return ("loss", *(t.metric for t in terms))


def compute_losses(out: Outputs, cfg: LossConfig, batch: dict | None = None, gather: Gather | None = None,
                   rank: int = 0, terms: tuple[LossTerm, ...] = LOSS_TERMS
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted total of the terms that are on and have their inputs, and each of them (unweighted)."""
    ctx, batch = LossContext(cfg, gather, rank), batch or {}
    total, parts = None, {}
    for term in terms:
        weight = getattr(cfg, term.weight) if term.weight else 1.0
        if not weight:
            continue
        value = term.compute(out, batch, ctx)
        if value is None:
            continue
        parts[term.metric] = value
        total = weight * value if total is None else total + weight * value
    if total is None:
        raise ValueError(f"no loss term applies: every weight is 0 or the outputs lack their inputs "
                         f"(terms {[t.name for t in terms]}, outputs {sorted(out)})")
    return total, parts


@dataclass
class Task:
    """A model (possibly DDP-wrapped) and the loss terms it trains; ``engine.train_step`` runs it."""

    model: torch.nn.Module
    loss: LossConfig
    terms: tuple[LossTerm, ...] = LOSS_TERMS
    gather: Gather | None = None
    rank: int = 0
    extra_terms: tuple[LossTerm, ...] = field(default=())

    @property
    def core(self) -> torch.nn.Module:
        return getattr(self.model, "module", self.model)  # DDP wraps the model

    @property
    def all_terms(self) -> tuple[LossTerm, ...]:
        return self.terms + self.extra_terms

    def prepare(self, batch: dict) -> dict:
        """The model inputs that the loss terms derive from the batch itself: the mosaics of the mosaic term
        when it is on and the batch carries entity prompts (a new dict; ``batch`` is not changed). Paste
        positions come from torch's global generator (seeded per rank by the trainer)."""
        if self.loss.mosaic_weight and "entity_targets" in batch and "mosaic_image" not in batch \
                and batch["image"].shape[0] >= 2:
            mosaics, region = compose(batch["image"], self.core.vision.patch_size, self.loss.mosaic_layout)
            return {**batch, "mosaic_image": mosaics, "mosaic_region": region}
        return batch

    def losses(self, out: Outputs, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return compute_losses(out, self.loss, batch, self.gather, self.rank, self.all_terms)

    def after_update(self) -> None:
        """After each optimizer step: the momentum encoder's EMA, when the model has one (stage 2)."""
        if getattr(self.core, "momentum_vision", None) is not None:
            self.core.momentum_update()
