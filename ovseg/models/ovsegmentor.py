"""The two-tower OVSegmentor model (CVPR 2023): GroupViT image tower, BERT (or CLIP) text tower, entity decoder.

Contract used by evaluation, Flower and Tune code (nothing else is read from a model, nothing is attached):
  encode_image(images) -> (image_emb (B,E), group_emb (B,G,E), assign (B,G,h,w))   embeddings L2-normalised
  encode_text(ids, mask) -> text_emb (B,E)                                        L2-normalised
  tokenizer(texts) -> (ids, mask)       the text tower's own tokenizer, given at construction
  scale() / logit_scale                 the (clamped) temperature and its parameter
  forward(batch) -> dict of named tensors, consumed by the loss terms of ``ovseg.train.task``
  load_reports                          what pretrained weights were loaded (text tower, ``load_vision_weights``):
                                        a CLIP text tower and every vision file give a ``LoadReport``
The batch keys a forward understands, each optional but the first two:
  image, caption_ids/caption_mask             image-caption contrast (section 3.1)
  question_ids/question_mask, answer_*        masked entity completion (section 3.2)
  cross_image, cross_entity_ids/mask          cross-image mask consistency, stage 2 (section 3.3)
  class_ids/class_mask                        class-name prompts for supervised masks (segmentation data)
                                              and the entity prompts of the caption-side extra losses
  mosaic_image/mosaic_region (with class_ids)  two-image mosaics of the batch's images (``mosaic.py``)
"""

from __future__ import annotations

import contextlib
import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .decoder import EntityDecoder
from .grouping import flat_assignment
from .layers import ProjectMLP
from .mosaic import per_image
from .pretrained import LoadReport, load_vision_weights
from .text import TextTower, Tokenizer
from .vision import GroupViT, VisionOutput


@contextlib.contextmanager
def running_norms(module: nn.Module, on: bool = True):
    """Within the block, the BatchNorm layers of ``module`` normalise with their running statistics and leave
    them unchanged (their scale and shift still get gradients); their mode is restored afterwards."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training] if on else []
    for m in norms:
        m.eval()
    try:
        yield
    finally:
        for m in norms:
            m.train()


class OVSegmentor(nn.Module):
    def __init__(self, cfg: ModelConfig, tokenizer: Tokenizer, text_hf_config: dict | None = None):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer  # not a module: never saved with the weights
        self.vision = GroupViT(cfg.vision)
        self.text = TextTower(cfg.text, tokenizer.vocab_size, hf_config=text_hf_config, tokenizer=tokenizer)
        dv, dt = self.vision.embed_dim, self.text.width
        # trainable, outside the tower: freezing the tower (and its cache) leaves the head learning
        self.text_head = nn.Linear(dt, cfg.text.head_dim) if cfg.text.head_dim else None
        dt = cfg.text.head_dim or dt
        self.img_projector = ProjectMLP(dv, cfg.proj_hidden_dim, cfg.embed_dim, cfg.proj_num_layers)
        self.text_projector = ProjectMLP(dt, cfg.proj_hidden_dim, cfg.embed_dim, cfg.proj_num_layers)
        self.bridge_projector = ProjectMLP(dt, cfg.proj_hidden_dim, cfg.embed_dim, cfg.proj_num_layers)
        self.decoder = EntityDecoder(dt, dv, cfg.decoder_heads, cfg.decoder_depth, cfg.vision.norm_eps)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.logit_scale_init)))
        self.momentum_vision: GroupViT | None = None
        self.frozen_norms: tuple[str, ...] = ()  # see set_frozen_norms
        self.load_reports: list = [self.text.load_report] if cfg.text.pretrained_dir and text_hf_config is None else []

    def load_vision_weights(self, path: str, kind: str = "auto") -> LoadReport:
        """Pretrained ViT weights (DINO / timm, DINOv2, CLIP; ``pretrained.py``) into the vision tower; the report
        is kept in load_reports. ``kind`` other than "auto" requires that kind of file."""
        report = load_vision_weights(self.vision, path, kind)
        self.load_reports.append(report)
        return report

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and not any(p.requires_grad for p in self.text.parameters()):
            # a frozen tower runs as at inference (no dropout): its text embeddings are fixed targets, and
            # dropout noise on them only blurs the class prompts the other losses align to
            self.text.eval()
        if mode and self.frozen_norms:
            for name, m in self.named_modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and name.startswith(self.frozen_norms):
                    m.eval()
        return self

    def set_frozen_norms(self, prefixes=()) -> None:
        """BatchNorm layers under these module prefixes (``"text_projector"``...) normalise with their running
        statistics in training too and never update them; their scale and shift still learn. A federated
        site uses it for the text projector: its class-prompt batches (ten near-identical prompts) would
        otherwise be normalised by their own statistics in training and by the caption statistics at
        evaluation, so the class embeddings the supervised loss trains are not the ones zero-shot reads."""
        names = {n for n, _ in self.named_children()}
        bad = [p for p in prefixes if p.split(".")[0] not in names]
        if bad:
            raise ValueError(f"frozen norms: no module {bad} in the model (its modules: {sorted(names)})")
        self.frozen_norms = tuple(prefixes)
        self.train(self.training)

    # ------------------------------------------------------------------ towers
    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=self.cfg.logit_scale_max)

    def encode_image(self, images: torch.Tensor):
        out = self.vision(images)
        image_emb = F.normalize(self.img_projector(out.tokens.mean(1)), dim=-1)
        group_emb = F.normalize(self.img_projector(out.tokens), dim=-1)
        assign = flat_assignment(out.attns, "soft").unflatten(-1, out.grid)  # (B, G, h, w)
        return image_emb, group_emb, assign

    def text_features(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled (B, Dt), tokens (B, L, Dt)): the tower's outputs, through the text head when there is one."""
        pooled, tokens = self.text(ids, mask)
        if self.text_head is not None:
            pooled, tokens = self.text_head(pooled), self.text_head(tokens)
        return pooled, tokens

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_projector(self.text_features(ids, mask)[0]), dim=-1)

    # ------------------------------------------------------------------ training forward
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        vis = self.vision(batch["image"])
        group_emb = F.normalize(self.img_projector(vis.tokens), dim=-1)  # (B, G, E)
        out = {
            "image_emb": F.normalize(self.img_projector(vis.tokens.mean(1)), dim=-1),
            "group_emb": group_emb,
            "text_emb": self.encode_text(batch["caption_ids"], batch["caption_mask"]),
            "logit_scale": self.scale(),
            "assign": flat_assignment(vis.attns, "soft").unflatten(-1, vis.grid),  # (B, G, h, w)
            # the one-hot assignment the groups were pooled with (Gumbel in training), straight-through gradients
            "assign_hard": flat_assignment(vis.attns, "hard").unflatten(-1, vis.grid),
        }
        if "question_ids" in batch:
            _, q_tokens = self.text_features(batch["question_ids"], batch["question_mask"])
            decoded = self.decoder(q_tokens, batch["question_mask"], vis.tokens)
            out["entity_emb"] = F.normalize(self.bridge_projector(decoded), dim=-1)
            out["answer_emb"] = self.encode_text(batch["answer_ids"], batch["answer_mask"])
        if "cross_image" in batch:
            out.update(self._cross_image_masks(vis, batch))
        if "class_ids" in batch:
            with running_norms(self.text_projector, self.cfg.class_prompt_norms == "running"):
                class_emb = self.encode_text(batch["class_ids"], batch["class_mask"])  # (C, E)
            out["group_class_logits"] = out["logit_scale"] * group_emb @ class_emb.t()  # (B, G, C)
            out["class_emb"] = class_emb
            if "mosaic_image" in batch:
                out["mosaic_logits"] = self._mosaic_logits(batch["mosaic_image"], batch["mosaic_region"], class_emb,
                                                           out["logit_scale"])
        return out

    def _mosaic_logits(self, mosaics: torch.Tensor, region: torch.Tensor, class_emb: torch.Tensor,
                       scale: torch.Tensor) -> torch.Tensor:
        """(2M, N, C) scaled prompt similarity of each mosaic patch, read through its groups, per source image.

        A patch's score for prompt c is the soft-assignment-weighted mean of its groups' scores, the map that
        zero-shot segmentation takes the argmax of; row i holds the patches that show image i, -inf elsewhere
        (``mosaic.per_image``).
        """
        vis = self.vision(mosaics)
        group_logits = scale * F.normalize(self.img_projector(vis.tokens), dim=-1) @ class_emb.t()  # (M, G, C)
        patch_logits = torch.einsum("bgn,bgc->bnc", flat_assignment(vis.attns, "soft"), group_logits)
        return per_image(patch_logits, region)

    def _cross_image_masks(self, vis: VisionOutput, batch) -> dict[str, torch.Tensor]:
        """Masks of this image's groups read on the paired image, and the paired image's own masks.

        Both are group-query x patch-key logits of the last grouping block (keys and the target queries from
        the momentum encoder, no gradient); with several grouping stages the keys are earlier groups, mapped
        back to patches through the momentum encoder's earlier soft assignments.
        """
        if self.momentum_vision is None:
            raise RuntimeError("cross-image mask consistency needs the momentum encoder: call init_momentum()")
        q_online = vis.attns[-1].q  # (B, G, D)
        with torch.no_grad():
            mom = self.momentum_vision(batch["cross_image"])
            k, q_mom = mom.attns[-1].k, mom.attns[-1].q  # (B, N, D), (B, G, D)
            to_patches = flat_assignment(mom.attns[:-1], "soft") if len(mom.attns) > 1 else None
            target = q_mom @ k.transpose(1, 2) * k.shape[-1] ** -0.5
            # entity relevance of each online group: projected (unnormalised) group feature . entity prompt
            entity = self.text_projector(self.text_features(batch["cross_entity_ids"], batch["cross_entity_mask"])[0])
            relevance = torch.einsum("bge,be->bg", self.img_projector(vis.tokens.detach()), entity)
        pred = q_online @ k.transpose(1, 2) * k.shape[-1] ** -0.5  # (B, G, N)
        if to_patches is not None:
            pred, target = pred @ to_patches, target @ to_patches
        return {"mask_pred": pred.unflatten(-1, mom.grid), "mask_target": target.unflatten(-1, mom.grid),
                "mask_relevance": relevance}

    # ------------------------------------------------------------------ stage 2 helpers
    def init_momentum(self) -> None:
        """Start the EMA image encoder as a frozen copy of the online one (stage 2)."""
        self.momentum_vision = copy.deepcopy(self.vision)
        self.momentum_vision.requires_grad_(False)

    @torch.no_grad()
    def momentum_update(self) -> None:
        """theta_m <- m * theta_m + (1 - m) * theta, after every optimizer step."""
        if self.momentum_vision is None:
            raise RuntimeError("no momentum encoder: call init_momentum() first")
        m = self.cfg.momentum
        online = list(self.vision.parameters()) + list(self.vision.buffers())
        target = list(self.momentum_vision.parameters()) + list(self.momentum_vision.buffers())
        for t, o in zip(target, online):
            if t.dtype.is_floating_point:
                t.lerp_(o, 1.0 - m)

    def set_text_trainable(self, trainable: bool) -> None:
        """Stage 2 freezes the text encoder; its projector stays trainable (reference section 6)."""
        self.text.requires_grad_(trainable)
        self.train(self.training)
