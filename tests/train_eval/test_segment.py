"""Zero-shot segmentation: output contract, the class-scoring and background rules, the sliding window."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ovseg import segment
from ovseg.eval.segment import group_class_scores, scaled_size, slide_windows, window_logits


@pytest.mark.parametrize("names", [
    ["background", "cat", "dog"],
    ["cat"],
    ["background"] + [f"class {i}" for i in range(25)],
    [f"thing {i}" for i in range(30)],
])
def test_segment_returns_a_full_map_of_the_input_size(debug_model, names):
    rgb = np.random.default_rng(0).integers(0, 256, (375, 500, 3), dtype=np.uint8)
    labels = segment(debug_model, rgb, names)
    assert labels.shape == (375, 500) and labels.dtype == np.int64
    assert labels.min() >= 0 and labels.max() < len(names)


def test_segment_paper_protocol_on_a_pil_image(debug_model):
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (375, 500, 3), dtype=np.uint8))
    labels = segment(debug_model, img, ["background", "cat", "dog"], short_side=448, crop_size=448, stride=224)
    assert labels.shape == (375, 500)


def test_segment_rejects_bad_input(debug_model):
    with pytest.raises(ValueError, match="uint8"):
        segment(debug_model, np.zeros((10, 10, 3), dtype=np.float32), ["cat"])
    with pytest.raises(ValueError, match="besides 'background'"):
        segment(debug_model, np.zeros((10, 10, 3), dtype=np.uint8), ["background"])


def test_text_bank_is_reused_by_its_caller_and_never_outlives_the_weights(debug_model):
    import copy

    from ovseg.eval.textbank import TextBank, text_bank

    m = copy.deepcopy(debug_model).eval()  # its weights are changed below
    calls = []
    original = m.encode_text
    m.encode_text = lambda *a: calls.append(1) or original(*a)
    try:
        rgb = np.zeros((64, 64, 3), dtype=np.uint8)
        bank = TextBank()
        first = segment(m, rgb, ["background", "bus", "cow"], bank=bank)
        segment(m, rgb, ["background", "bus", "cow"], bank=bank)
        assert len(calls) == 1  # one bank, one computation
        segment(m, rgb, ["background", "bus", "cow"])
        assert len(calls) == 2  # no bank given: nothing is cached on the model
        m.train()
        m.eval()
        segment(m, rgb, ["background", "bus", "cow"], bank=bank)
        assert len(calls) == 2  # switching modes changes no weight
        with torch.no_grad():  # an in-place change of any text weight (an optimizer step, set_tensors...)
            next(m.text_projector.parameters()).add_(1.0)
        again = bank(m, ["bus", "cow"], ("a photo of a {}.",))
        assert len(calls) == 3
        fresh = text_bank(m, ["bus", "cow"], ("a photo of a {}.",))
        assert torch.equal(again, fresh)
        m.load_state_dict(debug_model.state_dict())
        bank(m, ["bus", "cow"], ("a photo of a {}.",))
        assert len(calls) == 5  # load_state_dict copies in place: the bank is recomputed (and text_bank above)
        assert first.shape == rgb.shape[:2]
    finally:
        m.encode_text = original


def test_group_class_scores_match_a_hand_loop():
    torch.manual_seed(2)
    G, C, E, s, k = 3, 7, 6, 10.0, 5
    g = F.normalize(torch.randn(1, G, E), dim=-1)
    e = F.normalize(torch.randn(1, E), dim=-1)
    bank = F.normalize(torch.randn(C, E), dim=-1)
    got = group_class_scores(g, e, bank, torch.tensor(s), top_k=k)[0]
    img = [s * float(e[0] @ bank[c]) for c in range(C)]
    top = sorted(range(C), key=lambda c: -img[c])[:k]
    for gi in range(G):
        a = [s * float(g[0, gi] @ bank[c]) for c in range(C)]
        z_all = sum(math.exp(v) for v in a)
        z_top = sum(math.exp(a[c]) for c in top)
        for c in range(C):
            restricted = math.exp(a[c]) / z_top if c in top else 0.0
            assert abs(float(got[gi, c]) - restricted * math.exp(a[c]) / z_all) < 1e-5


def test_background_threshold_rule_against_a_pixel_loop():
    torch.manual_seed(4)
    G, C, h, w = 4, 3, 6, 5
    assign = torch.rand(1, G, 3, 3).softmax(1)
    img_emb, grp_emb = F.normalize(torch.randn(1, 8), dim=-1), F.normalize(torch.randn(1, G, 8), dim=-1)
    bank = F.normalize(torch.randn(C, 8), dim=-1)
    fake = SimpleNamespace(encode_image=lambda x: (img_emb, grp_emb, assign), scale=lambda: torch.tensor(20.0))
    S = group_class_scores(grp_emb, img_emb, bank, torch.tensor(20.0))[0]  # checked by the test above
    up = F.interpolate(assign, size=(h, w), mode="bilinear", align_corners=False)[0]
    for bg_thresh in (0.2, 0.95):
        out = window_logits(fake, torch.zeros(1, 3, h, w), bank, True, bg_thresh, top_k=5)[0]
        thr = min(bg_thresh, float(S.max()))
        n_bg = 0
        for y in range(h):
            for x in range(w):
                fg = S[int(up[:, y, x].argmax())]  # each pixel takes its argmax group's class scores
                assert torch.allclose(out[1:, y, x], fg)
                is_bg = float(fg.max()) < thr
                n_bg += is_bg
                assert float(out[0, y, x]) == (1.0 if is_bg else 0.0)
        # worked out for this seed: group maxima are 0.30, 0.94, 0.37, 0.89. At 0.2 nothing is background;
        # at 0.95 the threshold drops to the best score, 0.94, so only group 1's pixels stay foreground
        assert n_bg == (0 if bg_thresh == 0.2 else int((up.argmax(0) != 1).sum()))


def test_slide_windows_follow_the_mmseg_grid():
    # short side 448, long side 597: 1 row and (597 - 448 + 223) // 224 + 1 = 2 columns, the last flush right
    assert slide_windows(448, 597, 448, 224) == [(0, 0, 448, 448), (0, 149, 448, 597)]
    boxes = slide_windows(700, 1000, 448, 224)
    cover = np.zeros((700, 1000), dtype=int)
    for y1, x1, y2, x2 in boxes:
        assert (y2 - y1, x2 - x1) == (448, 448)
        cover[y1:y2, x1:x2] += 1
    assert cover.min() >= 1 and len(boxes) == 3 * 4  # rows (700-448+223)//224+1, cols (1000-448+223)//224+1
    assert slide_windows(40, 30, 448, 224) == [(0, 0, 40, 30)]


@pytest.mark.parametrize("hw,expected", [
    ((375, 500), (448, 597)),     # VOC-like: the short side sets the factor, 500 * 448 / 375 = 597.33 -> 597
    ((100, 700), (293, 2048)),    # 7 : 1: the long side caps it, factor 2048 / 700, 100 * 2.9257 = 292.57 -> 293
    ((448, 2048), (448, 2048)),   # exactly at the cap
    ((300, 301), (448, 449)),     # 301 * 448 / 300 = 449.49 -> 449
])
def test_images_are_read_at_the_mmseg_keep_ratio_size(hw, expected):
    assert scaled_size(*hw, 448, 2048) == expected
    assert scaled_size(100, 700, 448, None) == (448, 3136)  # no cap: the short side alone
    assert scaled_size(2, 5, 64, None) == (64, 160)
    assert scaled_size(10, 25, 4, None) == (4, 10)  # 25 * 0.4 = 10.0
    assert scaled_size(8, 3, 2, None) == (5, 2)  # 8 * 2 / 3 = 5.33 -> 5
    assert scaled_size(7, 2, 5, None) == (18, 5)  # 7 * 2.5 = 17.5 rounds half up -> 18 (round() would give 18 too)
    assert scaled_size(5, 2, 5, None) == (13, 5)  # 12.5 -> 13 where Python's round() gives 12


@pytest.mark.parametrize("hw,crop,stride,sizes", [
    ((1, 20), 32, 16, (5, 16)),  # a strip: no long-side cap, read at 32 x 640, 39 windows in one row
    ((50, 70), 16, 8, (2, 4)),   # a grid of windows: read at 32 x 45, 3 rows x 5 columns
])
def test_windows_in_batches_give_the_all_at_once_scores(debug_model, hw, crop, stride, sizes):
    from ovseg.config import EvalConfig
    from ovseg.eval.segment import segment_logits
    from ovseg.eval.textbank import TextBank

    proto = EvalConfig(short_side=32, long_side=0, crop_size=crop, stride=stride, bg_thresh=0.5)  # 0: no cap
    bank = TextBank()  # the class embeddings once
    rgb = np.random.default_rng(3).integers(0, 256, (*hw, 3), dtype=np.uint8)
    names = ["background", "cat", "dog"]
    batches = []
    original = debug_model.encode_image
    debug_model.encode_image = lambda x: batches.append(x.shape[0]) or original(x)
    try:
        whole = segment_logits(debug_model, rgb, names, protocol=proto, bank=bank, window_batch=10**6)
        n = batches.pop()
        assert batches == [] and n == len(slide_windows(*scaled_size(*hw, 32, None), crop, stride)) > 10
        for batch in sizes:
            chunked = segment_logits(debug_model, rgb, names, protocol=proto, bank=bank, window_batch=batch)
            assert batches == [batch] * (n // batch) + ([n % batch] if n % batch else [])
            batches.clear()
            assert chunked.shape == (3, *hw)
            torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)
    finally:
        debug_model.encode_image = original


def test_the_window_batch_comes_from_the_protocol_and_must_be_positive(debug_model):
    from ovseg.config import EvalConfig
    from ovseg.eval.protocols import resolve

    proto = resolve(EvalConfig())  # the keys left None take the protocol's values
    assert (proto.short_side, proto.crop_size, proto.stride, proto.long_side, proto.window_batch) == \
        (448, 448, 224, 2048, 16)  # the paper protocol; the batch only bounds memory
    seen = []
    original = debug_model.encode_image
    debug_model.encode_image = lambda x: seen.append(x.shape[0]) or original(x)
    try:
        rgb = np.zeros((20, 90, 3), dtype=np.uint8)  # read at 32 x 144: 8 windows of 32 x 32 at stride 16
        segment(debug_model, rgb, ["cat", "dog"], protocol=EvalConfig(short_side=32, crop_size=32, stride=16,
                                                                      window_batch=3))
        assert seen == [3, 3, 2]
    finally:
        debug_model.encode_image = original
    with pytest.raises(ValueError, match="window batch"):
        segment(debug_model, rgb, ["cat"], window_batch=0)
