"""Every named configuration (each YAML file in ovseg/configs/, found on disk) builds and trains: at a reduced
size, one forward and backward pass of a stage-2 training batch gives a finite loss and finite gradients.

The reduction keeps each file's structure (its number of grouping stages, its stem, patch norm, assignment
switches, its loss weights) and shrinks only the sizes, so even the paper's ViT-B/16 runs in a second or two
on the CPU. Pretrained weight paths are switched off (and the configs that require them are told not to):
nothing is downloaded in tests. A CLIP text tower gets a tiny CLIP tokenizer written for the test.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from clip_fixtures import write_clip_tokenizer

import ovseg
from ovseg import build_model
from ovseg.config import available_configs, load_config

try:  # the task layer of the training loop holds the losses; older trees keep them in ovseg.losses
    from ovseg.train.task import compute_losses
except ImportError:  # pragma: no cover - depends on the tree's layout
    from ovseg.losses import compute_losses

CONFIG_FILES = sorted((Path(ovseg.__file__).parent / "configs").glob("*.yaml"))
IMG, PATCH, WIDTH, TEXT, EMBED = 32, 8, 32, 32, 32


def reduced(name: str, tmp_path: Path | None = None) -> list[str]:
    """Dotted overrides that shrink a named config while keeping its number of stages."""
    cfg = load_config(name)
    stages = len(cfg.model.vision.depths)
    tokenizer = "null"
    if cfg.model.text.kind == "clip":  # CLIP's BPE tokenizer: a tiny one in the test's folder
        tokenizer = str(write_clip_tokenizer(tmp_path / "clip-tokenizer"))
    tokens = [8 >> i for i in range(stages - 1)] + [0]  # 8 group tokens, then 4, ...; none in the last stage
    groups = [t // 2 for t in tokens[:-1]]
    return [f"model.vision.img_size={IMG}", f"model.vision.patch_size={PATCH}", f"model.vision.embed_dim={WIDTH}",
            f"model.vision.depths={[1] * stages}", f"model.vision.num_heads={[2] * stages}",
            f"model.vision.num_group_tokens={tokens}", f"model.vision.num_output_groups={groups}",
            "model.vision.pretrained=null", "model.vision.pretrained_kind=auto", "model.vision.drop_path_rate=0.0",
            "model.text.pretrained_dir=null", "model.text.pretrained_required=false",
            f"model.text.tokenizer_dir={tokenizer}", f"model.text.width={TEXT}",
            "model.text.depth=1", "model.text.num_heads=2", f"model.text.mlp_dim={2 * TEXT}",
            "model.text.max_length=16", f"model.embed_dim={EMBED}", f"model.proj_hidden_dim={2 * EMBED}",
            "model.decoder_heads=2", f"loss.mask_size={IMG}"]


def test_the_parametrization_covers_every_named_config():
    assert CONFIG_FILES, "no YAML file in ovseg/configs"
    assert [p.stem for p in CONFIG_FILES] == available_configs()
    for path in CONFIG_FILES:  # each file is a mapping of sections (what load_config merges onto the defaults)
        assert isinstance(yaml.safe_load(path.read_text()) or {}, dict), path


def _batch(model, n=2):
    tok = model.tokenizer
    caps, caps_mask = tok(["a cat on a sofa", "a dog near a car"][:n])
    q, q_mask = tok([f"a {tok.mask_token} on a {tok.mask_token}", f"a {tok.mask_token} near a car"][:n])
    a, a_mask = tok(["a photo of a cat and sofa", "a photo of a dog"][:n])
    e, e_mask = tok(["a photo of a cat.", "a photo of a dog."][:n])
    return {"image": torch.randn(n, 3, IMG, IMG), "caption_ids": caps, "caption_mask": caps_mask,
            "question_ids": q, "question_mask": q_mask, "answer_ids": a, "answer_mask": a_mask,
            "cross_image": torch.randn(n, 3, IMG, IMG), "cross_entity_ids": e, "cross_entity_mask": e_mask}


@pytest.mark.parametrize("path", CONFIG_FILES, ids=[p.stem for p in CONFIG_FILES])
def test_named_config_builds_and_one_training_step_has_finite_loss_and_gradients(path, tmp_path):
    overrides = reduced(path.stem, tmp_path)
    cfg = load_config(path.stem, overrides)
    file_cfg = load_config(path.stem)
    # the reduction kept the file's structure
    assert len(cfg.model.vision.depths) == len(file_cfg.model.vision.depths)
    assert (cfg.model.vision.stem, cfg.model.vision.patch_norm) == (file_cfg.model.vision.stem,
                                                                    file_cfg.model.vision.patch_norm)
    model = build_model(path.stem, overrides).train()
    model.init_momentum()  # stage 2: cross-image mask consistency through the momentum encoder
    out = model(_batch(model))
    groups = cfg.model.vision.num_output_groups[-1]
    assert out["group_emb"].shape == (2, groups, EMBED) and out["image_emb"].shape == (2, EMBED)
    assert out["mask_pred"].shape[:2] == (2, groups)
    total, parts = compute_losses(out, cfg.loss, {})
    assert {"loss_contrast", "loss_entity"} <= set(parts)
    if cfg.loss.mask_weight:
        assert "loss_mask" in parts
    assert total.ndim == 0 and math.isfinite(total.item()), {k: v.item() for k, v in parts.items()}
    total.backward()

    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith("momentum_vision.") for n in trainable)  # the EMA copy never trains
    no_grad = sorted(n for n, p in trainable.items() if p.grad is None)
    # BERT's pooler is never read (the tower's [CLS] state is projected instead); everything else gets a gradient
    assert all(".pooler." in n for n in no_grad), no_grad
    bad = [n for n, p in trainable.items() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, bad
    for prefix in ("vision.", "text.", "img_projector.", "text_projector."):
        grads = [p.grad for n, p in trainable.items() if n.startswith(prefix) and p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), prefix
