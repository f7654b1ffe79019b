"""The frozen text tower's feature cache: it returns what the tower computes, and never a stale row."""

import dataclasses

import pytest
import torch

from ovseg.config import load_config
from ovseg.models import build_model
from ovseg.models.textcache import TextFeatureCache

TEXTS = ["a cat on a grey field", "a photo of a dog.", "a cat on a grey field", "[MASK] near a boat", ""]


def _frozen(pooling="cls", overrides=()):
    model = build_model("debug", [f"model.text.pooling={pooling}", *overrides])
    model.set_text_trainable(False)
    return model.train()  # a frozen tower runs in eval mode inside a training model: the cache path


def _reference(model, ids, mask):
    """The tower's own forward, row by row on the real tokens only, pooled by hand."""
    pooled, tokens = [], []
    for i in range(ids.shape[0]):
        n = int(mask[i].sum())
        hidden = model.text.model(input_ids=ids[i:i + 1, :n], attention_mask=mask[i:i + 1, :n]).last_hidden_state[0]
        pooled.append(hidden[0] if model.text.pooling == "cls" else hidden.sum(0) / n)
        tokens.append(hidden)
    return pooled, tokens


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_cache_returns_what_the_tower_computes(pooling):
    model = _frozen(pooling)
    ids, mask = model.tokenizer(TEXTS, padding="longest")
    with torch.no_grad():
        direct = model.text.compute(ids, mask)
        first = model.text(ids, mask)   # misses: computed now
        second = model.text(ids, mask)  # hits: from memory
        ref_pooled, ref_tokens = _reference(model, ids, mask)
    cache = model.text.cache
    assert cache.misses == len(set(map(tuple, [r[m.bool()].tolist() for r, m in zip(ids, mask)])))
    assert cache.hits == len(TEXTS) + (len(TEXTS) - cache.misses)
    real = mask.bool()
    for got in (first, second):
        torch.testing.assert_close(got[0], direct[0], rtol=0, atol=1e-6)
        torch.testing.assert_close(got[1][real], direct[1][real], rtol=0, atol=1e-6)
        assert torch.count_nonzero(got[1][~real]) == 0  # padded positions: zeros, attended by nothing
        for i in range(len(TEXTS)):
            torch.testing.assert_close(got[0][i], ref_pooled[i], rtol=0, atol=1e-5)
            torch.testing.assert_close(got[1][i, :int(mask[i].sum())], ref_tokens[i], rtol=0, atol=1e-5)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_cache_only_serves_a_frozen_tower():
    model = build_model("debug").train()  # stage 1: the tower trains, every call runs it
    ids, mask = model.tokenizer(TEXTS[:2], padding="longest")
    model.text(ids, mask)
    assert model.text.cache.hits == model.text.cache.misses == 0


def test_cache_misses_when_the_weights_change():
    model = _frozen()
    ids, mask = model.tokenizer(TEXTS[:2], padding="longest")
    with torch.no_grad():
        before = model.text(ids, mask)[0]
        fp = model.text.cache.fingerprint
        model.text.model.embeddings.word_embeddings.weight.mul_(1.5)  # in place, like an optimizer step
        after = model.text(ids, mask)[0]
        truth = model.text.compute(ids, mask)[0]
    assert model.text.cache.fingerprint != fp
    assert model.text.cache.misses == 4 and model.text.cache.hits == 0
    torch.testing.assert_close(after, truth, rtol=0, atol=1e-6)
    assert not torch.allclose(after, before)
    # load_state_dict replaces the values in place as well
    other = _frozen()
    with torch.no_grad():
        other.text.model.load_state_dict({k: v * 0.5 for k, v in model.text.model.state_dict().items()})
        torch.testing.assert_close(other.text(ids, mask)[0], other.text.compute(ids, mask)[0], rtol=0, atol=1e-6)


def test_cache_on_disk_is_keyed_by_tower_and_tokenizer(tmp_path):
    model = _frozen()
    ids, mask = model.tokenizer(TEXTS, padding="longest")
    model.text.cache.persist_to(tmp_path)
    with torch.no_grad():
        want = model.text(ids, mask)
    path = model.text.cache.save()
    assert path is not None and path.parent == tmp_path and not list(tmp_path.glob(".*tmp"))

    def no_compute(*_):
        raise AssertionError("the tower ran: the stored rows were not used")

    same = TextFeatureCache(model.text.cache.extra.split("vocab=")[1], "cls")
    same.persist_to(tmp_path)
    got = same(model.text, no_compute, ids, mask)  # a new process: every row from the file
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=0)
    assert same.misses == 0

    # another tokenizer (vocabulary), or another pooling, over the same weights: a different fingerprint, no rows
    for cache in (TextFeatureCache("another-vocabulary", "cls"), TextFeatureCache(same.extra.split("vocab=")[1], "mean")):
        cache.persist_to(tmp_path)
        with pytest.raises(AssertionError, match="the tower ran"):
            cache(model.text, no_compute, ids, mask)
        assert cache.fingerprint != same.fingerprint

    # a damaged file is recomputed, never trusted
    path.write_bytes(b"not a safetensors file")
    fresh = TextFeatureCache(same.extra.split("vocab=")[1], "cls")
    fresh.persist_to(tmp_path)
    fresh(model.text, model.text.compute, ids, mask)
    assert fresh.misses > 0


def test_training_with_the_cache_matches_training_without(debug_cfg):
    """A frozen tower's loss and gradients are the same whether its features come from the cache or not."""
    from ovseg.train.task import Task

    cfg = load_config("debug", ["model.text.freeze=true"])
    results = []
    for use_cache in (True, False):
        cfg_i = dataclasses.replace(cfg, model=dataclasses.replace(
            cfg.model, text=dataclasses.replace(cfg.model.text, cache=use_cache)))
        torch.manual_seed(0)
        model = build_model(cfg_i)
        model.set_text_trainable(False)
        model.train()
        assert (model.text.cache is not None) == use_cache
        texts = ["a cat and a dog", "a boat", "a photo of a cat"]
        ids, mask = model.tokenizer(texts, padding="longest")
        q_ids, q_mask = model.tokenizer(["a [MASK] and a [MASK]", "a [MASK]", "a photo of a [MASK]"], padding="longest")
        a_ids, a_mask = model.tokenizer(["a photo of cat and dog.", "a photo of boat.", "a photo of cat."],
                                        padding="longest")
        torch.manual_seed(1)
        batch = {"image": torch.randn(3, 3, 32, 32), "caption_ids": ids, "caption_mask": mask,
                 "question_ids": q_ids, "question_mask": q_mask, "answer_ids": a_ids, "answer_mask": a_mask}
        for _ in range(2):  # the second pass is served from the cache
            torch.manual_seed(2)
            model.zero_grad()
            loss, _ = Task(model, cfg_i.loss).losses(model(batch), batch)
            loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((loss.detach(), grads))
    (l1, g1), (l2, g2) = results
    torch.testing.assert_close(l1, l2, rtol=0, atol=1e-5)
    assert g1.keys() == g2.keys()
    for name in g1:
        torch.testing.assert_close(g1[name], g2[name], rtol=1e-4, atol=1e-5, msg=name)


def test_a_full_cache_still_answers_every_row():
    model = _frozen(overrides=["model.text.cache_rows=2"])
    ids, mask = model.tokenizer(TEXTS, padding="longest")
    with torch.no_grad():
        got = model.text(ids, mask)
        want = model.text.compute(ids, mask)
    assert len(model.text.cache.rows) == 2
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-6)


def test_text_head_maps_the_cached_features_and_trains_over_a_frozen_tower():
    model = _frozen("mean", ["model.text.head_dim=16"])
    head = model.text_head
    assert head.in_features == model.text.width and head.out_features == 16
    assert model.decoder.norm_text.normalized_shape == (16,) and model.text_projector.net[0].in_features == 16
    ids, mask = model.tokenizer(TEXTS, padding="longest")
    with torch.no_grad():
        pooled, tokens = model.text.compute(ids, mask)
    got_pooled, got_tokens = model.text_features(ids, mask)
    torch.testing.assert_close(got_pooled, pooled @ head.weight.t() + head.bias, rtol=0, atol=1e-5)
    real = mask.bool()  # the cache keeps no padded positions (zeros): compare the real tokens
    torch.testing.assert_close(got_tokens[real], (tokens @ head.weight.t() + head.bias)[real], rtol=0, atol=1e-5)
    model.encode_text(ids, mask).sum().backward()
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0  # the head learns...
    assert all(p.grad is None for p in model.text.parameters())  # ... the tower does not
    assert model.text.cache.misses > 0  # and its features came through the cache


def test_pre_pass_foresees_every_text_of_the_batches_and_fills_the_cache(make_world):
    """shard_texts lists every text a stage-2 batch can hold; after fill, those batches never miss."""
    from ovseg.data.captions.loader import build_caption_loader, shard_texts

    world = make_world()
    urls = sorted(str(p) for p in (world / "train").glob("*.tar"))
    model = _frozen("mean")
    loader = build_caption_loader(urls, model.tokenizer.hf, batch_size=8, image_size=32, stage=2, pairs=True,
                                  max_length=24, entity_prompts=True, epoch_length=4, pair_pool=64)
    rows = shard_texts(urls, loader.dataset.builder)
    assert len(rows) == len({tuple(r) for r in rows})  # each text once
    assert model.tokenizer.hf("")["input_ids"] in rows  # the cross prompt of an unpaired sample
    cache = model.text.cache
    assert cache.fill(model.text, model.text.compute, rows, batch_size=7) == len(rows)
    assert cache.fill(model.text, model.text.compute, rows) == 0  # nothing left to compute
    assert cache.hits == cache.misses == 0  # the pre-pass is neither
    loader.set_epoch(0)
    seen = 0
    for batch in loader:
        for name in ("caption", "question", "answer", "class", "cross_entity"):
            ids, mask = batch[f"{name}_ids"], batch[f"{name}_mask"]
            keep = mask.sum(1) > 0  # unpaired samples carry an empty cross prompt ([CLS] [SEP] is still a text)
            with torch.no_grad():
                got = model.text(ids[keep], mask[keep])
                want = model.text.compute(ids[keep], mask[keep])
            torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-5)
            seen += int(keep.sum())
    assert seen > 0 and cache.misses == 0 and cache.hits == seen
