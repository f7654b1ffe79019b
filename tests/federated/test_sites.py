"""Partner sites: segmentation batches, the non-IID site split, a site's folder and its round, the commands
that make sites and simulate a federation."""

from __future__ import annotations

import json
import math
import random
import tarfile

import numpy as np
import pytest
import torch

from ovseg.config import load_config
from ovseg.federated import (
    Site,
    build_site_model,
    exchange_keys,
    get_tensors,
    local_train,
    site_evaluate,
)

# ---------------------------------------------------------------------------------------------- seg batches


def test_crop_moves_image_and_label_together():
    from ovseg.data.segmentation.batches import random_resized_crop

    h, w = 48, 80
    label = np.zeros((h, w), np.int64)
    label[:, 40:] = 1
    label[30:, :20] = 2
    colours = np.array([[0, 0, 0], [255, 0, 0], [0, 0, 255]], np.uint8)
    image = colours[label]
    rng = random.Random(3)
    for _ in range(20):
        img, lab = random_resized_crop(image, label, 32, rng)
        assert img.shape == (32, 32, 3) and lab.shape == (32, 32)
        # away from class edges the bilinear image shows the nearest-neighbour label's colour
        interior = np.ones_like(lab, bool)
        for dy in range(-2, 3):  # the antialiased bilinear filter reaches 1-2 output pixels
            for dx in range(-2, 3):
                interior &= np.roll(lab, (dy, dx), axis=(0, 1)) == lab
        interior[:2, :] = interior[-2:, :] = interior[:, :2] = interior[:, -2:] = False
        assert interior.sum() > 200
        assert np.array_equal(img[interior], colours[lab[interior]])


def test_collate_maps_each_sites_classes_into_the_batch_vocabulary(debug_model):
    from ovseg.data.segmentation.batches import PROMPT, SegBatchLoader, caption_from_classes

    loader = SegBatchLoader.__new__(SegBatchLoader)  # collate needs only the tokenizer cache
    from ovseg.data.captions.sample import SampleBuilder

    loader.builder = SampleBuilder(debug_model.tokenizer.hf, image_size=8, stage=2, max_length=16)
    loader._prompt_cache = {}
    rng, flags = random.Random(0), {}
    from collections import Counter

    def ex(classes, lab, caption):
        text = loader.builder.text_fields(caption or "background", None, rng, Counter())
        return {"image": torch.zeros(3, 2, 2), "label": np.array(lab), "classes": classes, "caption": caption, **text}

    a = ex(["background", "cat", "dog"], [[0, 1], [2, 255]], "a photo of a cat and a dog.")
    b = ex(["background", "dog", "sky"], [[2, 1], [0, 0]], "a photo of a sky and a dog.")
    c = ex(["background", "cat", "dog"], [[1, 1], [2, 0]], "a photo of a cat and a dog.")
    batch = loader.collate([a, b, c])
    # vocabulary in order of appearance: background, cat, dog, sky
    assert batch["label"].tolist() == [[[0, 1], [2, 255]], [[3, 2], [0, 0]], [[1, 1], [2, 0]]]
    ids = batch["class_ids"]
    assert ids.shape[0] == 4
    expect = loader.builder.tokenize(PROMPT.format("sky"))["input_ids"]
    assert ids[3].tolist() == expect[: ids.shape[1]] and not any(expect[ids.shape[1]:])  # trimmed padding only
    assert batch["caption_valid"].tolist() == [True, True, False]  # the repeated caption leaves the contrast
    assert int(batch["background_class"]) == 0  # where the background term applies
    d = ex(["cat", "dog"], [[0, 1], [1, 0]], "a photo of a cat and a dog.")
    assert int(loader.collate([d])["background_class"]) == -1  # no class of this batch is background
    assert caption_from_classes(["cat", "dog"]) == "a photo of a cat and a dog." and caption_from_classes([]) == ""


# ---------------------------------------------------------------------------------------------- sites


@pytest.fixture(scope="module")
def world(make_world):
    return make_world(seed=1, num_train=200, num_val=4, num_seg=100, shard_size=60)


def _keys(folder):
    keys = []
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            keys += sorted({m.name.split(".", 1)[0] for m in tar.getmembers()})
    return keys


def test_split_world_partitions_every_sample_once(world, tmp_path):
    from ovseg.federated.split import split_world

    m = split_world(world, tmp_path / "sites", ["caption", "caption", "segmentation", "segmentation"], alpha=0.3,
                    seed=0, val_fraction=0.2, shard_size=40)
    kinds = [s["kind"] for s in m["sites"]]
    assert kinds == ["caption", "caption", "segmentation", "segmentation"]
    cap = [k for i in (0, 1) for k in _keys(tmp_path / "sites" / f"site-{i:02d}" / "captions")]
    seg = [k for i in (2, 3) for sub in ("seg", "val") for k in _keys(tmp_path / "sites" / f"site-{i:02d}" / sub)]
    assert sorted(cap) == _keys(world / "train") and len(set(cap)) == 200
    assert sorted(seg) == _keys(world / "seg") and len(set(seg)) == 100
    for i, s in enumerate(m["sites"]):
        meta = json.loads((tmp_path / "sites" / f"site-{i:02d}" / "site.json").read_text())
        assert meta == {"kind": s["kind"]}
        assert Site.open(tmp_path / "sites" / f"site-{i:02d}").kind == s["kind"]
    assert all(s["val"] > 0 for s in m["sites"][2:]) and all(s["val"] == 0 for s in m["sites"][:2])
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no partial folder left


def test_overwrite_replaces_only_an_earlier_split(world, tmp_path):
    from ovseg.federated.split import split_world

    out = tmp_path / "sites"
    split_world(world, out, ["caption", "caption"], alpha=1.0, seed=0)
    m = split_world(world, out, ["caption"], alpha=1.0, seed=1, overwrite=True)  # an earlier split: replaced
    assert sorted(p.name for p in out.iterdir()) == ["federation.json", "site-00"] and m["seed"] == 1
    (out / "notes.txt").write_text("mine")  # something the command did not write: refused, nothing deleted
    with pytest.raises(FileExistsError, match="notes.txt"):
        split_world(world, out, ["caption"], alpha=1.0, seed=2, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine" and (out / "site-00" / "site.json").is_file()
    other = tmp_path / "thesis"
    other.mkdir()
    (other / "chapter1.tex").write_text("x")  # any folder that is not a split
    with pytest.raises(FileExistsError, match="no federation.json"):
        split_world(world, other, ["caption"], alpha=1.0, seed=0, overwrite=True)
    assert (other / "chapter1.tex").read_text() == "x"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind


def test_dirichlet_skew_small_alpha_concentrates_classes(world, tmp_path):
    from ovseg.federated.split import split_world

    def skew(alpha):
        m = split_world(world, tmp_path / f"a{alpha}", ["caption"] * 3, alpha=alpha, seed=0)
        per_site = [s["classes"] for s in m["sites"]]
        classes = {c for s in per_site for c in s}
        # mean over classes of the largest share one site holds (1/3 = perfectly even, 1 = one site each)
        return np.mean([max(s.get(c, 0) for s in per_site) / sum(s.get(c, 0) for s in per_site) for c in classes])

    assert skew(0.05) > 0.8 and skew(100.0) < 0.6


def test_site_open_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Site.open(tmp_path / "nope")
    (tmp_path / "s").mkdir()
    with pytest.raises(ValueError, match="data-kind"):
        Site.open(tmp_path / "s")
    (tmp_path / "s" / "site.json").write_text('{"kind": "caption"}')
    with pytest.raises(ValueError, match="says caption"):
        Site.open(tmp_path / "s", "segmentation")
    with pytest.raises(FileNotFoundError, match="no training shards"):
        Site.open(tmp_path / "s")


@pytest.mark.slow  # 26 local optimiser steps
def test_local_training_on_a_segmentation_site_lowers_its_mask_loss(world, tmp_path):
    from ovseg.federated.kinds import KINDS
    from ovseg.train.task import Task

    from ovseg.federated.split import split_world

    split_world(world, tmp_path / "sites", ["segmentation"], alpha=1.0, seed=0, val_fraction=0.1)
    site = Site.open(tmp_path / "sites" / "site-00")
    # the supervised term alone: the text terms of the class-name captions pull elsewhere on a random model
    cfg = load_config("debug", ["fed.local_batch=16", "fed.lr=1e-3", "data.shuffle_buffer=32",
                                "loss.contrast_weight=0", "loss.entity_weight=0", "loss.group_diversity_weight=0",
                                "loss.group_usage_weight=0", "loss.entity_group_weight=0"])
    model, cfg = build_site_model(cfg)
    keys = exchange_keys(model, cfg)
    start = get_tensors(model, keys)
    batches, _ = KINDS["segmentation"].batches(cfg, model, site.train_shards(), seed=9)
    fixed = next(batches)  # one batch, scored in inference mode (no Gumbel draw) before and after the rounds

    def seg_loss():
        model.eval()
        with torch.no_grad():
            return float(Task(model, cfg.loss).losses(model(fixed), fixed)[1]["loss_seg"])

    torch.manual_seed(0)  # the Gumbel draws of the rounds
    before = seg_loss()
    first = local_train(model, cfg, site, steps=3, seed=0)
    local_train(model, cfg, site, steps=30, seed=1)
    assert seg_loss() < 0.9 * before
    assert first["num-examples"] == 48 and first["skipped"] == 0 and first["loss_seg"] > 0
    text_before = {k: v for k, v in build_site_model(cfg)[0].state_dict().items() if k.startswith("text.")}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in text_before.items())  # frozen tower untouched
    moved = [k for k in keys if not torch.equal(get_tensors(model, [k])[k], start[k])]
    assert len(moved) > len(keys) // 2
    # the text projector's norm kept its statistics (fed.frozen_norms); the image projector's moved
    sd = model.state_dict()
    for name, changed in (("text_projector.net.1.running_mean", False), ("img_projector.net.1.running_mean", True)):
        assert torch.equal(sd[name], start[name]) != changed, name
    res = site_evaluate(model, cfg, site)
    assert res is not None and res.num_images == 10 and 0.0 <= res.miou <= 1.0


def test_make_sites_and_simulate_commands(world, tmp_path):  # simulate.py starts a local Ray (conftest.SHARED)
    import subprocess
    import sys

    from services import REPO, env

    out = subprocess.run([sys.executable, str(REPO / "platform" / "make_sites.py"), "--out", str(tmp_path / "s"),
                          "--world", str(world), "--kinds", "caption,segmentation", "--alpha", "2"],
                         capture_output=True, text=True, env=env(), timeout=120)
    assert out.returncode == 0, out.stderr
    assert "site-00: caption" in out.stdout and "site-01: segmentation" in out.stdout
    bad = subprocess.run([sys.executable, str(REPO / "platform" / "make_sites.py"), "--out", str(tmp_path / "t"),
                          "--world", str(world), "--kinds", "caption,images"], capture_output=True, text=True,
                         env=env(), timeout=120)
    assert bad.returncode == 2 and "site kinds" in bad.stderr
    sim = subprocess.run([sys.executable, str(REPO / "platform" / "simulate.py"), "--help"], capture_output=True,
                         text=True, env=env(), timeout=120)
    assert sim.returncode == 0 and "virtual partner sites" in sim.stdout


def test_caption_site_trains_the_configured_multilabel_loss(world, tmp_path):
    from ovseg.federated.split import split_world

    split_world(world, tmp_path / "sites", ["caption"], alpha=1.0, seed=0, val_fraction=0.1)
    site = Site.open(tmp_path / "sites" / "site-00")
    model, cfg = build_site_model(load_config("debug", ["fed.local_batch=8", "data.shuffle_buffer=32"]))
    assert cfg.loss.multilabel_weight > 0
    out = local_train(model, cfg, site, steps=2, seed=0)
    assert math.isfinite(out["loss_multilabel"]) and out["loss_multilabel"] > 0
