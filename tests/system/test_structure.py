"""The seams the layout promises: a site kind is one registered class, a model carries only what its class
declares, one evaluate-and-log path logs exactly what evaluation scored, and its panels are readable."""

import json

import numpy as np
import pytest
import torch

from ovseg import build_model, load_config, save_checkpoint
from ovseg.checkpoint import model_from_checkpoint, read_checkpoint
from ovseg.data.codecs import palette
from ovseg.eval.evaluate import evaluate
from ovseg.eval.report import evaluate_and_log
from ovseg.eval.visualize import comparison_panel
from ovseg.federated.kinds import KINDS, CaptionKind, register
from ovseg.federated.sites import Site
from ovseg.models.ovsegmentor import OVSegmentor
from ovseg.models.text import build_tokenizer


def test_a_new_site_kind_is_one_registered_class(tmp_path):
    from ovseg.data.synthetic.scene import SyntheticConfig
    from ovseg.data.synthetic.world import generate_world
    from ovseg.federated.split import split_world

    @register
    class MirrorKind(CaptionKind):  # caption data kept under another folder name
        name, train_dir = "mirror", "mirrored"

    try:
        world = tmp_path / "w"
        generate_world(world, seed=3, num_train=40, num_val=2, num_seg=0, config=SyntheticConfig(image_size=32))
        m = split_world(world, tmp_path / "sites", ["mirror", "caption"], alpha=1.0, seed=0)
        assert [s["kind"] for s in m["sites"]] == ["mirror", "caption"]
        site = Site.open(tmp_path / "sites" / "site-00")
        assert site.kind == "mirror" and site.train_dir.name == "mirrored" and site.train_shards()
        assert json.loads((tmp_path / "sites" / "site-00" / "site.json").read_text()) == {"kind": "mirror"}
    finally:
        KINDS.pop("mirror")
    with pytest.raises(ValueError, match="data-kind"):
        Site.open(tmp_path / "sites" / "site-00")  # unregistered again


def test_a_model_holds_only_what_its_class_declares(tmp_path):
    cfg = load_config("debug")
    built = build_model(cfg)
    bare = OVSegmentor(cfg.model, build_tokenizer(cfg.model.text))
    assert set(vars(built)) == set(vars(bare))
    path = save_checkpoint(tmp_path / "c.safetensors", built, cfg, step=3)
    loaded = model_from_checkpoint(read_checkpoint(path))
    assert set(vars(loaded)) == set(vars(bare))
    assert not hasattr(built, "config") and built.tokenizer is not None


class _Bench:
    name, class_names = "toy", ["background", "cat", "dog"]

    def __init__(self, n=3):
        g = np.random.default_rng(0)
        self.items = [(g.integers(0, 256, (64, 64, 3), dtype=np.uint8), g.integers(0, 3, (64, 64)), f"i{i}")
                      for i in range(n)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


class _Tracker:
    def __init__(self):
        self.metrics, self.texts, self.images = [], {}, {}

    def log_metrics(self, m, step):
        self.metrics.append((step, dict(m)))

    def log_text(self, text, name):
        self.texts[name] = text

    def log_image(self, img, name):
        self.images[name] = img


def test_evaluate_and_log_logs_what_evaluate_scores(debug_model, capsys):
    import dataclasses

    protocol = dataclasses.replace(load_config("debug").eval, num_overlays=2)
    expect = evaluate(debug_model, _Bench(), protocol=protocol, bg_thresh=protocol.bg_thresh)
    tracker = _Tracker()
    metrics, results = evaluate_and_log(debug_model, [_Bench()], tracker, 40, protocol, label="round0040",
                                        where="round 40")
    assert metrics == expect.metrics() and tracker.metrics == [(40, metrics)]
    assert np.array_equal(results[0].confusion.matrix, expect.confusion.matrix)
    assert set(tracker.texts) == {"eval/toy/iou_round0040.csv"} and tracker.texts["eval/toy/iou_round0040.csv"] == \
        expect.table()
    assert set(tracker.images) == {"eval/toy/round0040_0.png", "eval/toy/round0040_1.png"}
    assert f"round 40: zero-shot toy mIoU {expect.miou:.4f} (3 images)" in capsys.readouterr().out
    plain = _Tracker()
    evaluate_and_log(debug_model, [_Bench(1)], plain, 0, protocol)
    assert set(plain.texts) == {"eval/toy/iou.csv"} and set(plain.images) == {"eval/toy/overlay_0.png"}


def test_comparison_panel_is_enlarged_and_names_the_colours_present():
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    label = np.zeros((64, 64), dtype=np.int64)
    label[:32] = 1
    pred = np.full((64, 64), 2)
    panel = np.asarray(comparison_panel(image, label, pred, ["background", "cat", "dog", "bird"]))
    assert panel.shape[1] >= 3 * 256 and panel.shape[0] >= 256
    pal = palette(256)
    colours = {tuple(c) for c in panel.reshape(-1, 3)}
    for cls in (0, 1, 2):  # present in the ground truth or the prediction: drawn, and swatched in the legend
        assert tuple(pal[cls]) in colours
    assert tuple(pal[3]) not in colours  # "bird" is absent from both maps: no legend row
    # the ground-truth panel is the label map enlarged by nearest neighbour, 4x per side for 64 -> 256: its
    # 2,048 "cat" pixels become 32,768 (plus the legend's swatch)
    cat_pixels = int((panel.reshape(-1, 3) == pal[1]).all(1).sum())
    assert 32768 <= cat_pixels < 32768 + 40 * 40


@pytest.mark.parametrize("k", [1, 2])
def test_text_bank_key_tracks_every_weight(debug_model, k):
    import copy

    from ovseg.eval.textbank import weights_version

    m = copy.deepcopy(debug_model)
    before = weights_version(m)
    with torch.no_grad():
        list(m.parameters())[-k].mul_(1.0)  # in place, even with the same values
    assert weights_version(m) != before
