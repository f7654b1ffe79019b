"""The task contract and the one loop: the loss table drives the total, the metric names and the site replies;
train_steps draws only what it trains on, runs hooks in order and stops when a hook says so."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from ovseg.config import LossConfig
from ovseg.federated.sites import site_metric_names
from ovseg.losses import contrastive_loss, group_diversity_loss
from ovseg.train.engine import train_steps
from ovseg.train.task import LOSS_TERMS, LossTerm, Task, compute_losses, metric_names, proximal_term


def _outputs(seed=0, B=4, G=3, E=8):
    g = torch.Generator().manual_seed(seed)
    return {"image_emb": F.normalize(torch.randn(B, E, generator=g), dim=-1),
            "text_emb": F.normalize(torch.randn(B, E, generator=g), dim=-1),
            "group_emb": F.normalize(torch.randn(B, G, E, generator=g), dim=-1),
            "logit_scale": torch.tensor(10.0)}


def test_total_is_the_weighted_sum_of_the_terms_that_are_on():
    out = _outputs()
    cfg = LossConfig(contrast_weight=0.7, group_diversity_weight=0.25)
    total, parts = compute_losses(out, cfg)
    contrast = contrastive_loss(out["image_emb"], out["text_emb"], out["logit_scale"])
    diversity = group_diversity_loss(out["group_emb"])
    assert set(parts) == {"loss_contrast", "loss_diversity"}  # the outputs have no entity, mask or class inputs
    assert torch.allclose(total, 0.7 * contrast + 0.25 * diversity)
    _, off = compute_losses(out, dataclasses.replace(cfg, group_diversity_weight=0.0))
    assert set(off) == {"loss_contrast"}  # weight 0 = off


def test_a_new_term_is_one_function_and_one_table_entry():
    out = _outputs()
    norm = LossTerm("norm", "", lambda o, b, ctx: o["image_emb"].pow(2).sum(-1).mean())  # weight 1
    terms = LOSS_TERMS + (norm,)
    total, parts = compute_losses(out, LossConfig(), terms=terms)
    base, _ = compute_losses(out, LossConfig())
    assert parts["loss_norm"].item() == pytest.approx(1.0)  # unit vectors
    assert total.item() == pytest.approx(base.item() + 1.0)
    assert metric_names(terms)[-1] == "loss_norm" and metric_names(terms)[0] == "loss"


def test_no_applicable_term_is_an_error():
    with pytest.raises(ValueError, match="no loss term applies"):
        compute_losses(_outputs(), LossConfig(contrast_weight=0.0, entity_weight=0.0, mask_weight=0.0))


def test_every_table_term_has_its_weight_in_the_config_and_reaches_the_site_replies():
    fields = {f.name for f in dataclasses.fields(LossConfig)}
    for term in LOSS_TERMS:
        assert term.weight in fields, term
        assert term.metric in site_metric_names()  # e.g. loss_diversity, which the hand-kept list missed
    assert "loss_proximal" in site_metric_names()


def test_proximal_term_is_a_term_of_the_task():
    net = torch.nn.Linear(2, 1)
    glob = {n: p.detach() + 1.0 for n, p in net.named_parameters()}
    term = proximal_term(net, glob, mu=0.5)
    assert term.compute({}, {}, None).item() == pytest.approx(0.5 * 0.5 * 3)  # 3 values, each 1 away


class _Toy(torch.nn.Module):
    """A two-tower stand-in with the model contract's forward outputs, so the engine can be run exactly."""

    def __init__(self):
        super().__init__()
        self.img, self.txt = torch.nn.Linear(3, 4), torch.nn.Linear(3, 4)
        self.logit_scale = torch.nn.Parameter(torch.tensor(2.0))
        self.momentum_vision, self.ema_calls = None, 0

    def forward(self, batch):
        return {"image_emb": F.normalize(self.img(batch["image"]), dim=-1),
                "text_emb": F.normalize(self.txt(batch["text"]), dim=-1), "logit_scale": self.logit_scale.exp()}


def _batches(n, drawn):
    g = torch.Generator().manual_seed(1)
    for i in range(n):
        drawn.append(i)
        yield {"image": torch.randn(4, 3, generator=g), "text": torch.randn(4, 3, generator=g)}


def test_train_steps_draws_only_the_batches_it_trains_on_and_runs_hooks_in_order():
    model, drawn, seen = _Toy(), [], []

    class Probe:
        def before_step(self, step):
            seen.append(("before", step))

        def after_step(self, step, metrics):
            seen.append(("after", step, "loss_contrast" in metrics))

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    end = train_steps(Task(model, LossConfig()), _batches(10, drawn), opt, 3, hooks=[Probe()], start_step=5)
    assert end == 8 and drawn == [0, 1, 2]
    assert seen == [("before", 5), ("after", 6, True), ("before", 6), ("after", 7, True), ("before", 7),
                    ("after", 8, True)]


def test_a_hook_that_returns_true_stops_the_loop_and_a_short_stream_ends_it():
    model, drawn = _Toy(), []
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    end = train_steps(Task(model, LossConfig()), _batches(10, drawn), opt, 9, hooks=[lambda s, m: s == 2])
    assert end == 2 and drawn == [0, 1]
    end = train_steps(Task(model, LossConfig()), _batches(2, []), opt, 9)
    assert end == 2  # the data ran out first


def test_one_step_equals_a_hand_written_step():
    torch.manual_seed(0)
    a, b = _Toy(), _Toy()
    b.load_state_dict(a.state_dict())
    batch = next(_batches(1, []))
    opt_a, opt_b = torch.optim.SGD(a.parameters(), lr=0.1), torch.optim.SGD(b.parameters(), lr=0.1)
    train_steps(Task(a, LossConfig()), iter([batch]), opt_a, 1, clip_grad=None)
    out = b(batch)
    loss = contrastive_loss(out["image_emb"], out["text_emb"], out["logit_scale"])
    opt_b.zero_grad()
    loss.backward()
    opt_b.step()
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(va, vb), k
