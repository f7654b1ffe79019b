"""Two-image mosaics (models.mosaic) and the mosaic loss (losses.mosaic_loss), against plain loops."""

from __future__ import annotations

import math

import pytest
import torch

from ovseg.config import LossConfig, load_config
from ovseg.losses import mosaic_loss
from ovseg.models.mosaic import compose, per_image
from ovseg.train.task import Task, compute_losses


def _pool2(img, y, x):
    """The mean of the 2x2 pixel block at (2y, 2x) of img (C, H, W)."""
    return img[:, 2 * y:2 * y + 2, 2 * x:2 * x + 2].reshape(img.shape[0], 4).mean(1)


def test_side_layout_matches_a_pixel_loop():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(5, 3, 8, 8, generator=g)  # odd batch: the last image is left out
    out, region = compose(images, patch=2, layout="side")
    assert out.shape == (2, 3, 4, 8) and region.shape == (2, 2, 4)
    for m in range(2):
        for y in range(4):
            for x in range(8):
                src, sx = (2 * m, x) if x < 4 else (2 * m + 1, x - 4)
                assert torch.allclose(out[m, :, y, x], _pool2(images[src], y, sx), atol=1e-6)
        assert region[m].tolist() == [[False, False, True, True]] * 2  # the right half: image 2m + 1


def test_paste_layout_matches_a_pixel_loop_and_moves_the_region():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(40, 3, 8, 8, generator=g)
    out, region = compose(images, patch=2, layout="paste", generator=torch.Generator().manual_seed(1))
    assert out.shape == (20, 3, 8, 8) and region.shape == (20, 4, 4)
    corners = set()
    for m in range(20):
        cells = region[m].nonzero().tolist()
        r0, c0 = min(c[0] for c in cells), min(c[1] for c in cells)
        assert sorted(cells) == [[r0 + i, c0 + j] for i in range(2) for j in range(2)]  # one 2x2 block of patches
        corners.add((r0, c0))
        for y in range(8):
            for x in range(8):
                inside = r0 * 2 <= y < r0 * 2 + 4 and c0 * 2 <= x < c0 * 2 + 4
                want = _pool2(images[2 * m + 1], y - 2 * r0, x - 2 * c0) if inside else images[2 * m, :, y, x]
                assert torch.allclose(out[m, :, y, x], want, atol=1e-6)
    assert len(corners) > 4  # the pasted image does not sit at one place


def test_compose_refuses_what_it_cannot_build():
    with pytest.raises(ValueError, match="at least 2 images"):
        compose(torch.zeros(1, 3, 8, 8), patch=2)
    with pytest.raises(ValueError, match="divisible by 2 x patch"):
        compose(torch.zeros(2, 3, 6, 6), patch=2)
    with pytest.raises(ValueError, match="layout must be one of"):
        compose(torch.zeros(2, 3, 8, 8), patch=2, layout="grid")


def test_per_image_keeps_each_images_patches_only():
    M, N, C = 3, 6, 2
    values = torch.randn(M, N, C)
    region = torch.rand(M, 2, 3) > 0.5
    out = per_image(values, region)
    assert out.shape == (2 * M, N, C)
    for m in range(M):
        for n in range(N):
            inside = bool(region[m].flatten()[n])
            mine, other = (2 * m + 1, 2 * m) if inside else (2 * m, 2 * m + 1)
            assert torch.equal(out[mine, n], values[m, n])
            assert torch.isinf(out[other, n]).all() and (out[other, n] < 0).all()
    with pytest.raises(ValueError, match="does not match"):
        per_image(values, region[:, :1])


def _by_hand(image_logits, targets):
    """Multi-label contrast over the mosaics' images by their best patch, written out entity by entity."""
    best = [[max(float(image_logits[i, p, c]) for p in range(image_logits.shape[1]) if image_logits[i, p, c] > -math.inf)
             for c in range(image_logits.shape[2])] for i in range(image_logits.shape[0])]
    H, C = len(best), len(best[0])

    def lse(xs):
        mx = max(xs)
        return mx + math.log(sum(math.exp(x - mx) for x in xs))

    rows = [i for i in range(H) if any(targets[i])]
    cols = [c for c in range(C) if any(targets[i][c] for i in range(H))]
    i2t = sum(-sum(best[i][c] - lse([best[i][k] for k in cols]) for c in cols if targets[i][c])
              / sum(targets[i][c] for c in cols) for i in rows) / len(rows)
    t2i = sum(-sum(best[i][c] - lse([best[j][c] for j in range(H)]) for i in range(H) if targets[i][c])
              / sum(targets[i][c] for i in range(H)) for c in cols) / len(cols)
    return 0.5 * (i2t + t2i)


def test_mosaic_loss_matches_a_plain_loop_and_uses_only_the_mosaiced_images():
    g = torch.Generator().manual_seed(1)
    image_logits = torch.randn(4, 5, 3, generator=g) * 2
    image_logits[0, :2] = image_logits[3, 4] = float("-inf")  # patches that show the other image of the mosaic
    targets = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 0, 1], [0, 0, 1], [0, 1, 1]], dtype=torch.float)
    got = mosaic_loss(image_logits, targets)  # 5 images, 4 in mosaics: image 4 (the odd one out) is not in the loss
    assert math.isclose(float(got), _by_hand(image_logits, targets[:4].tolist()), rel_tol=1e-5)
    with pytest.raises(ValueError, match="targets for only"):
        mosaic_loss(image_logits, targets[:3])


def test_a_group_spread_over_both_images_costs_more_than_localised_groups():
    # a mosaic of a cat image and a dog image, 2 patches each (the other's patches at -inf), prompts (cat, dog)
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    inf = float("-inf")
    localised = torch.tensor([[[8.0, 0.0], [0.0, 0.0], [inf, inf], [inf, inf]],   # cat image: a patch says cat
                              [[inf, inf], [inf, inf], [0.0, 8.0], [0.0, 0.0]]])  # dog image: a patch says dog
    # one group lies on a patch of each image and carries both meanings; the other patches are background
    spread = torch.tensor([[[8.0, 8.0], [0.0, 0.0], [inf, inf], [inf, inf]],
                           [[inf, inf], [inf, inf], [8.0, 8.0], [0.0, 0.0]]])
    assert float(mosaic_loss(localised, targets)) < 0.01
    # each image then scores cat and dog alike, in both directions of the contrast: log 2
    assert math.isclose(float(mosaic_loss(spread, targets)), math.log(2), rel_tol=1e-4)


def _four_image_batch(model):
    """Four random images with captions naming cat / dog / car / cat and car, and the batch's three prompts."""
    S = model.vision.cfg.img_size
    ids, mask = model.tokenizer(["a cat", "a dog", "a car", "a cat and a car"])
    c_ids, c_mask = model.tokenizer(["a photo of a cat.", "a photo of a dog.", "a photo of a car."])
    return {"image": torch.randn(4, 3, S, S), "caption_ids": ids, "caption_mask": mask, "class_ids": c_ids,
            "class_mask": c_mask,
            "entity_targets": torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1]], dtype=torch.float)}


def test_task_adds_mosaics_only_when_the_term_is_on_and_the_model_scores_them(debug_model):
    S = load_config("debug").model.vision.img_size
    batch = _four_image_batch(debug_model)
    assert "mosaic_image" not in Task(debug_model, LossConfig()).prepare(batch)
    no_targets = {k: v for k, v in batch.items() if k != "entity_targets"}
    assert "mosaic_image" not in Task(debug_model, LossConfig(mosaic_weight=1.0)).prepare(no_targets)
    prepared = Task(debug_model, LossConfig(mosaic_weight=1.0)).prepare(batch)
    assert "mosaic_image" not in batch and prepared["mosaic_image"].shape == (2, 3, S, S)  # paste: full size
    region = prepared["mosaic_region"]
    m = debug_model.eval()
    with torch.no_grad():
        out = m(prepared)
        # a second route to the same numbers: encode_image on the mosaics, groups scored against the prompts
        _, group_emb, assign = m.encode_image(prepared["mosaic_image"])
        scale = m.scale()
    class_emb = out["class_emb"]
    h, w = assign.shape[-2:]
    assert out["mosaic_logits"].shape == (4, h * w, 3)
    for i in range(4):
        mos, pasted = divmod(i, 2)
        for y in range(h):
            for x in range(w):
                got = out["mosaic_logits"][i, y * w + x]
                if bool(region[mos, y, x]) == bool(pasted):  # this patch shows image i
                    want = scale * torch.einsum("g,gc->c", assign[mos, :, y, x], group_emb[mos] @ class_emb.t())
                    assert torch.allclose(got, want, atol=1e-4)
                else:
                    assert torch.isinf(got).all()
    total, parts = compute_losses(out, LossConfig(mosaic_weight=0.5, contrast_weight=0.0), prepared)
    assert torch.isclose(total, 0.5 * parts["loss_mosaic"])
    assert torch.isclose(parts["loss_mosaic"], mosaic_loss(out["mosaic_logits"], prepared["entity_targets"]))


def test_a_training_step_with_the_mosaic_term_trains_through_it(debug_model):
    """One engine step on a real batch dict: the term is reported and its gradient reaches the grouping."""
    import copy

    from ovseg.train.engine import train_step

    model = copy.deepcopy(debug_model).train()
    batch = _four_image_batch(model)
    task = Task(model, LossConfig(mosaic_weight=1.0, contrast_weight=0.0))
    q = model.vision.layers[0].downsample.assign.q_proj.weight
    before = q.detach().clone()
    metrics = train_step(task, batch, torch.optim.SGD(model.parameters(), lr=0.1))
    assert set(metrics) >= {"loss", "loss_mosaic"} and math.isclose(metrics["loss"], metrics["loss_mosaic"])
    assert not torch.equal(q.detach(), before)  # the assignment's queries moved: the term trains the grouping
