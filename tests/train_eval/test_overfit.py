"""The model, losses and engine can learn: overfitting 8 image-caption pairs halves the total loss."""

import pytest
import torch

from ovseg import build_model
from ovseg.config import LossConfig, load_config
from ovseg.train.engine import train_steps
from ovseg.train.schedule import build_optimizer, param_groups
from ovseg.train.task import Task

_SIZE = load_config("debug").model.vision.img_size
CAPTIONS = ["a cat on a sofa", "a dog in the park", "a red car on the road", "two birds over a boat",
            "a clock above a table", "an umbrella and a bag", "a horse near a house", "a cup beside a bottle"]
QUESTIONS = ["a [MASK] on a [MASK]", "a [MASK] in the park", "a red [MASK] on the road", "two [MASK] over a [MASK]",
             "a [MASK] above a [MASK]", "an [MASK] and a [MASK]", "a [MASK] near a [MASK]",
             "a [MASK] beside a [MASK]"]
ANSWERS = ["a photo of a cat and sofa", "a photo of a dog", "a photo of a car", "a photo of a bird and boat",
           "a photo of a clock and table", "a photo of a umbrella and bag", "a photo of a horse and house",
           "a photo of a cup and bottle"]


def _batch(tok):
    torch.manual_seed(0)
    c, cm = tok(CAPTIONS)
    q, qm = tok(QUESTIONS)
    a, am = tok(ANSWERS)
    size = _SIZE
    return {"image": torch.randn(8, 3, size, size), "caption_ids": c, "caption_mask": cm,
            "question_ids": q, "question_mask": qm, "answer_ids": a, "answer_mask": am}


@pytest.mark.slow  # 100 optimiser steps
def test_overfit_eight_pairs_halves_the_loss():
    model = build_model("debug")
    batch = _batch(model.tokenizer)
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.05)
    losses = []
    train_steps(Task(model, LossConfig()), iter([batch] * 100), opt, 100, hooks=[lambda s, m: losses.append(m["loss"])])
    assert len(losses) == 100
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.5 * first, (first, last)


def test_no_weight_decay_on_norms_biases_temperature_pos_embed_and_group_tokens():
    model = build_model("debug")
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert {"logit_scale", "vision.pos_embed", "vision.layers.0.group_token"} <= no_decay_names
    assert "vision.norm.weight" in no_decay_names and "vision.patch_embed.proj.bias" in no_decay_names
    assert all(names[id(p)].endswith("weight") and p.ndim >= 2 for p in decay["params"])
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
