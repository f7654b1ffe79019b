"""The named protocols: each one's values against its cited sources, today's scores under groupvit, TCL's
background rule, PAMR in the window scores, and which value wins when a config sets one."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ovseg.config import Config, ConfigError, EvalConfig, from_dict, merge_dicts, parse_overrides, to_dict
from ovseg.config.tree import EVAL_PROTOCOLS
from ovseg.data.benchmarks.protocol_names import READER_CLASSES
from ovseg.eval.pamr import pamr
from ovseg.eval.protocols import GOVERNED, PROTOCOLS, prompt_names, protocol_overrides, resolve
from ovseg.eval.segment import constant_background, group_class_scores, segment_logits, window_logits
from ovseg.eval.textbank import text_bank

EIGHT = ("voc", "context60", "coco_object", "voc20", "context59", "coco_stuff", "cityscapes", "ade20k")


def test_groupvit_values_are_the_released_configs():
    from ovseg.data.benchmarks.registry import BG_THRESH

    assert set(PROTOCOLS) == set(EVAL_PROTOCOLS) == {"groupvit", "tcl"}
    # reference/ovsegmentor.md s7: "a photo of a {}.", img_scale=(2048, 448), slide 448 / 224, top-5 filter,
    # background below min(thr, max S) with VOC 0.95, Context 0.35, COCO-Object 0.9 (OVSegmentor), else 0.95
    for name, thr in (("voc", 0.95), ("context60", 0.35), ("coco_object", 0.9), (None, 0.95)):
        s = resolve(EvalConfig(), name)
        assert (s.protocol, s.templates, s.short_side, s.long_side, s.crop_size, s.stride, s.top_k) == \
            ("groupvit", ("a photo of a {}.",), 448, 2048, 448, 224, 5)
        assert (s.background, s.bg_thresh, s.pamr) == ("threshold", thr, False)
        if name:
            assert BG_THRESH[name] == thr  # the benchmark readers declare the same thresholds
    assert resolve(EvalConfig(), "site", 0.3).bg_thresh == 0.3  # a dataset it does not list: its own value
    assert resolve(EvalConfig(pamr=True), "voc").bg_thresh == 0.95  # TCL's PAMR adjustment is TCL's


def test_tcl_values_are_its_configs():
    # kakaobrain/tcl@bc2b551 datasets/templates.py: custom = sub_imagenet_template + two more, verbatim
    custom = ["itap of a {}.", "a bad photo of a {}.", "a origami {}.", "a photo of the large {}.",
              "a {} in a video game.", "art of the {}.", "a photo of the small {}.", "a photo of many {}.",
              "a photo of {}s."]
    for name in (*EIGHT, None):
        for pamr_on, thr in ((False, 0.5), (True, 0.4)):  # README / configs/eval.yml: 0.5 without PAMR, 0.4 with
            s = resolve(EvalConfig(protocol="tcl", pamr=pamr_on), name, bench_bg_thresh=0.95)
            assert list(s.templates) == custom
            # segmentation/configs/_base_/datasets/*.py: img_scale=(2048, 448), slide crop 448 stride 224
            assert (s.short_side, s.long_side, s.crop_size, s.stride) == (448, 2048, 448, 224)
            assert (s.background, s.bg_thresh, s.pamr) == ("constant", thr, pamr_on)  # whatever the bench says
    assert set(PROTOCOLS["tcl"].readings) == set(EIGHT)  # one entry per dataset config of configs/eval.yml
    # segmentation/datasets/pascal_voc.py PascalVOCDataset20.CLASSES, verbatim: TCL prompts mmseg's names
    tcl_voc20 = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
                 "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]
    reader = list(READER_CLASSES["voc20"])
    assert prompt_names("tcl", "voc20", reader) == tcl_voc20 and prompt_names("groupvit", "voc20", reader) == reader
    renamed = ["airliner", *reader[1:]]  # a benchmark scored under names the user gave keeps them
    assert prompt_names("tcl", "voc20", renamed) == renamed


def test_set_values_win_over_the_protocol_and_none_means_its_value():
    assert all(getattr(EvalConfig(), k) is None for k in GOVERNED)  # unset: the protocol's
    s = resolve(EvalConfig(protocol="tcl", pamr=True, bg_thresh=0.3, short_side=64, templates=("a {}.",),
                           long_side=0), "voc")
    assert (s.bg_thresh, s.short_side, s.templates, s.long_side, s.crop_size) == (0.3, 64, ("a {}.",), None, 448)
    with pytest.raises(ConfigError, match="groupvit protocol's values for the keys not set they are 224 and 32"):
        EvalConfig(crop_size=32)  # the protocol's stride does not fit the window set here: refused at once
    # a checkpoint written before the protocols stored every value; --protocol tcl resets them unless the
    # same command line sets them
    old = merge_dicts(to_dict(Config()), {"eval": {"templates": ["a photo of a {}."], "short_side": 448,
                                                   "long_side": 2048, "bg_thresh": 0.95, "top_k": 5}})
    over = protocol_overrides("tcl", ["eval.short_side=32", "eval.crop_size=32", "eval.stride=16"])
    assert over[0] == "eval.protocol=tcl" and "eval.short_side=null" not in over
    assert {f"eval.{k}=null" for k in GOVERNED} - set(over) == {"eval.short_side=null", "eval.crop_size=null",
                                                                 "eval.stride=null"}
    cfg = from_dict(Config, merge_dicts(old, parse_overrides(over)))
    s = resolve(cfg.eval, "voc")
    assert (s.protocol, len(s.templates), s.bg_thresh, s.short_side, s.crop_size, s.stride) == \
        ("tcl", 9, 0.5, 32, 32, 16)
    assert protocol_overrides(None, ["eval.stride=8"]) == ["eval.stride=8"]  # no --protocol: the stored one


def _reference_groupvit(model, rgb, names, short, crop, stride, thr):
    """Today's pipeline written out: keep-ratio resize (short side, long side <= 2048, half up), ImageNet
    normalisation, the mmseg slide grid, each window's threshold-rule scores (test_segment checks them),
    averaged, resized back."""
    H, W = rgb.shape[:2]
    f = min(short / min(H, W), 2048 / max(H, W))
    h, w = int(H * f + 0.5), int(W * f + 0.5)
    bank = text_bank(model, names[1:], ("a photo of a {}.",))
    x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255
    x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    x = (x - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    total, count = torch.zeros(1, len(names), h, w), torch.zeros(1, 1, h, w)
    for r in range((max(h - crop, 0) + stride - 1) // stride + 1):
        for c in range((max(w - crop, 0) + stride - 1) // stride + 1):
            y2, x2 = min(r * stride + crop, h), min(c * stride + crop, w)
            y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
            total[..., y1:y2, x1:x2] += window_logits(model, x[..., y1:y2, x1:x2], bank, True, thr, 5)
            count[..., y1:y2, x1:x2] += 1
    return F.interpolate(total / count, size=(H, W), mode="bilinear", align_corners=False)[0]


@torch.no_grad()
def test_groupvit_gives_todays_scores(debug_model):
    rgb = np.random.default_rng(5).integers(0, 256, (20, 21, 3), dtype=np.uint8)
    names = ["background", "cat", "dog"]
    model = debug_model.eval()
    ref = _reference_groupvit(model, rgb, names, 448, 448, 224, 0.95)  # the defaults: read at 448 x 470
    got = segment_logits(model, rgb, names, protocol=EvalConfig(protocol="groupvit"), dataset="voc")
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)  # windows batched: float rounding only
    small = EvalConfig(short_side=32, crop_size=32, stride=16, bg_thresh=0.5)  # the debug config's section
    rgb = np.random.default_rng(6).integers(0, 256, (30, 50, 3), dtype=np.uint8)  # 32 x 53: 3 windows
    ref = _reference_groupvit(model, rgb, names, 32, 32, 16, 0.5)
    torch.testing.assert_close(segment_logits(model, rgb, names, protocol=small), ref, rtol=1e-5, atol=1e-6)


def test_tcl_background_is_a_constant_that_competes_with_the_class_scores():
    fg = torch.tensor([[[0.7, 0.2], [0.5, 0.1]],     # class 0
                       [[0.1, 0.45], [0.3, 0.0]]])[None]  # class 1: (1, 2, 2, 2), pixels (row, column)
    out = constant_background(fg, 0.5)
    assert out.shape == (1, 3, 2, 2) and torch.equal(out[:, 1:], fg) and (out[:, 0] == 0.5).all()
    # by hand: (0,0) class 0 scores 0.7 > 0.5; (0,1) best 0.45 < 0.5: background; (1,0) 0.5 ties the
    # constant: background (argmax takes the first, as TCL's torch argmax); (1,1) best 0.1: background
    assert out.argmax(1).tolist() == [[[1, 0], [0, 0]]]
    assert constant_background(fg, 0.4).argmax(1).tolist() == [[[1, 2], [1, 0]]]


def _fake_model(G=3, C=2, seed=4):
    g = torch.Generator().manual_seed(seed)
    assign = torch.rand(1, G, 2, 2, generator=g).softmax(1)
    img = F.normalize(torch.randn(1, 8, generator=g), dim=-1)
    grp = F.normalize(torch.randn(1, G, 8, generator=g), dim=-1)
    bank = F.normalize(torch.randn(C, 8, generator=g), dim=-1)
    fake = SimpleNamespace(encode_image=lambda x: (img, grp, assign), scale=lambda: torch.tensor(20.0))
    return fake, bank, group_class_scores(grp, img, bank, torch.tensor(20.0))[0], assign


def test_window_scores_under_tcl_and_with_pamr():
    fake, bank, S, assign = _fake_model()
    windows = torch.rand(1, 3, 6, 5, generator=torch.Generator().manual_seed(1))
    up = F.interpolate(assign, size=(6, 5), mode="bilinear", align_corners=False)[0].argmax(0)
    fg = S[up].permute(2, 0, 1)[None]  # each pixel its argmax group's class scores
    out = window_logits(fake, windows, bank, True, 0.4, 5, "constant")
    assert torch.allclose(out[:, 1:], fg) and (out[:, 0] == 0.4).all()
    refined = window_logits(fake, windows, bank, True, 0.4, 5, "constant", refine=True)
    torch.testing.assert_close(refined[:, 1:], pamr(windows, fg))  # PAMR on the class maps, then the constant
    assert (refined[:, 0] == 0.4).all()
    thr = window_logits(fake, windows, bank, True, 0.95, 5, "threshold", refine=True)
    torch.testing.assert_close(thr[:, 1:], pamr(windows, fg))
    cut = min(0.95, float(S.max()))
    assert torch.equal(thr[:, 0], (pamr(windows, fg).amax(1) < cut).float())


def test_segment_under_tcl_prompts_nine_templates_and_averages_the_constant(debug_model):
    seen = []

    class Bank:
        def __call__(self, model, names, templates):
            seen.append(templates)
            return text_bank(model, names, templates)

    rgb = np.random.default_rng(2).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    cfg = EvalConfig(protocol="tcl", short_side=32, crop_size=32, stride=16)
    logits = segment_logits(debug_model, rgb, ["background", "cat", "dog"], protocol=cfg, bank=Bank())
    assert len(seen) == 1 and len(seen[0]) == 9
    torch.testing.assert_close(logits[0], torch.full((24, 40), 0.5))  # every window's constant, averaged
    refined = segment_logits(debug_model, rgb, ["background", "cat", "dog"], protocol=cfg, pamr=True)
    torch.testing.assert_close(refined[0], torch.full((24, 40), 0.4))  # TCL's threshold with PAMR
    assert not torch.allclose(refined[1:], logits[1:])
