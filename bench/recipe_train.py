"""Recipe search for the `tiny` config on the synthetic world: in-process training + zero-shot evaluation.

    python bench/recipe_train.py --minutes 3.5 --eval-at 2 3.5 [--lr 2e-3 --batch 128 --mlc 1 --gmil 1 ...]
        [--set model.vision.num_output_groups=[4] ...]

Data: images rendered in memory with ``render_scene`` (world seed --world-seed, default classes, 64 px):
train split indices [0, --ntrain) (cached under /tmp/recipe), dev = split "seg" (--ndev images), val =
split "val" (--nval images; the same images generate_world(seed) puts in its VOC val folder).
The background threshold is chosen on dev (grid) and applied unchanged on val.

Training only ever sees image + caption (+ entity words parsed from the caption by ovseg's EntityMatcher).
Extra (non-paper) losses, both off by default:
  --mlc W   GroupViT-style multi-label contrast: image embedding vs "a photo of a {entity}" prompts of
            the entities in the batch's captions (multi-positive soft targets, both directions).
  --gmil W  the same, but each image scores an entity prompt by its BEST GROUP (max over groups of
            group_emb . prompt), i.e. the quantity the zero-shot protocol reads.
"""

from __future__ import annotations

import os

# On a CPU shared with other jobs, OpenMP threads that spin-wait at barriers make a 2-thread step up to 10x
# slower (measured: 8 s vs 0.8 s per batch of 128); passive waiting avoids it. Must precede the torch import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ovseg import build_model
from ovseg.data.captions.entities import ANSWER_TEMPLATES, EntityMatcher, answer_prompt
from ovseg.data.synthetic.scene import DEFAULT_CLASSES, SyntheticConfig, render_scene
from ovseg.eval.metrics import ConfusionMatrix
from ovseg.eval.segment import IMAGENET_MEAN, IMAGENET_STD, group_class_scores, text_bank
from ovseg.losses import compute_losses

CACHE = Path("/tmp/recipe")
MEAN = torch.tensor(IMAGENET_MEAN)[:, None, None]
STD = torch.tensor(IMAGENET_STD)[:, None, None]
THRESHOLDS = [0.0, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.07, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8,
              0.85, 0.9, 0.95, 1.01]


# ------------------------------------------------------------------------------------------------ data
def render_split(world_seed: int, split: str, n: int, cfg: SyntheticConfig) -> dict:
    CACHE.mkdir(parents=True, exist_ok=True)
    bg = "" if cfg.background == "cluttered" else f"_{cfg.background}"
    if (cfg.min_scale, cfg.max_scale, cfg.max_objects) != (0.3, 0.6, 4):
        bg += f"_sc{cfg.min_scale}-{cfg.max_scale}_o{cfg.max_objects}"
    path = CACHE / f"{split}_s{world_seed}_n{n}_{cfg.image_size}{bg}.npz"
    if path.exists():
        d = np.load(path, allow_pickle=True)
        return {k: d[k] for k in d.files}
    imgs, labels, caps = [], [], []
    for i in range(n):
        s = render_scene(cfg, world_seed, split, i)
        imgs.append(s.image)
        labels.append(s.label)
        caps.append(s.caption)
    d = {"image": np.stack(imgs), "label": np.stack(labels), "caption": np.array(caps, dtype=object)}
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **d)
    os.replace(tmp, path)
    return d


def to_tensor(images_uint8: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float() / 255.0
    return (x - MEAN) / STD


def augment(x: torch.Tensor, kind: str, gen: torch.Generator) -> torch.Tensor:
    """'none', 'flip', or 'rrc' (random resized crop scale (0.5, 1), ratio (3/4, 4/3), + horizontal flip)."""
    if kind == "none":
        return x
    B = x.shape[0]
    flip = (torch.rand(B, generator=gen) < 0.5).float() * 2 - 1  # -1 flips
    if kind == "flip":
        return torch.where(flip[:, None, None, None] < 0, x.flip(-1), x)
    area = torch.empty(B).uniform_(0.5, 1.0, generator=gen)
    logr = torch.empty(B).uniform_(math.log(3 / 4), math.log(4 / 3), generator=gen)
    r = logr.exp()
    w = (area * r).sqrt().clamp(max=1.0)  # fraction of width
    h = (area / r).sqrt().clamp(max=1.0)
    cx = (torch.rand(B, generator=gen) * 2 - 1) * (1 - w)
    cy = (torch.rand(B, generator=gen) * 2 - 1) * (1 - h)
    theta = torch.zeros(B, 2, 3)
    theta[:, 0, 0] = w * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class TrainData:
    def __init__(self, d: dict, tokenizer, seed: int):
        self.images = to_tensor(d["image"])  # (N, 3, S, S) normalised, float32
        caps = [str(c) for c in d["caption"]]
        matcher = EntityMatcher()
        mask_tok = tokenizer.mask_token
        spans = matcher.pipe(caps)
        rng = random.Random(seed)
        questions, answers, ents = [], [], []
        from ovseg.data.captions.entities import mask_spans, unique_entities
        for c, sp in zip(caps, spans):
            e = unique_entities(sp)
            questions.append(mask_spans(c, sp, mask_tok))
            answers.append(answer_prompt(e, rng))
            ents.append(e)
        self.cap_ids, self.cap_mask = tokenizer(caps)
        self.q_ids, self.q_mask = tokenizer(questions)
        self.a_ids, self.a_mask = tokenizer(answers)
        self.vocab = sorted({e for es in ents for e in es})
        self.entity_multi_hot = torch.zeros(len(caps), len(self.vocab))
        for i, es in enumerate(ents):
            for e in es:
                self.entity_multi_hot[i, self.vocab.index(e)] = 1
        self.n = len(caps)
        print(f"train: {self.n} images, entity vocab from captions: {self.vocab}", flush=True)

    def batches(self, batch: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        while True:
            perm = torch.randperm(self.n, generator=g)
            for i in range(0, self.n - batch + 1, batch):
                yield perm[i:i + batch], g


# ------------------------------------------------------------------------------------------------ losses
def multilabel_contrast(emb_scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """emb_scores: (B, C) scaled logits image x entity prompt; targets (B, C) multi-hot (caption entities).

    image -> prompts: soft cross-entropy with the image's caption entities as equal positives;
    prompt -> images: for each entity present in the batch, soft CE over the images whose caption names it.
    """
    t = targets
    has = t.sum(1) > 0
    i2t = -(t[has] / t[has].sum(1, keepdim=True) * emb_scores[has].log_softmax(1)).sum(1).mean()
    col = t.sum(0) > 0
    tt = t[:, col]
    t2i = -(tt / tt.sum(0, keepdim=True) * emb_scores[:, col].log_softmax(0)).sum(0).mean()
    return 0.5 * (i2t + t2i)


# ------------------------------------------------------------------------------------------------ eval
@torch.no_grad()
def eval_split(model, images_uint8, labels, class_names, top_k=5, bs=250):
    """Per-threshold confusion matrices for the GroupViT protocol (64 px image = one 64 px window),
    plus an oracle that names each group by its majority ground-truth class (grouping upper bound)."""
    model.eval()
    C = len(class_names)
    cms = {t: ConfusionMatrix(C) for t in THRESHOLDS}
    oracle = ConfusionMatrix(C)
    top1_hits = top1_total = 0
    bank = text_bank(model, class_names[1:], tuple(model.config.eval.templates))
    for i in range(0, len(images_uint8), bs):
        x = to_tensor(images_uint8[i:i + bs])
        gt = torch.from_numpy(labels[i:i + bs].astype(np.int64))
        image_emb, group_emb, assign = model.encode_image(x)
        scores = group_class_scores(group_emb, image_emb, bank, model.scale(), top_k)  # (B, G, C-1)
        assign = F.interpolate(assign, size=x.shape[-2:], mode="bilinear", align_corners=False)
        gidx = assign.argmax(1)  # (B, h, w)
        onehot = F.one_hot(gidx, assign.shape[1]).to(scores.dtype)
        fg = torch.einsum("bhwg,bgc->bchw", onehot, scores)
        pix_max, pix_arg = fg.max(1)
        gmax = scores.flatten(1).amax(1)[:, None, None]
        for t in THRESHOLDS:
            thr = gmax.clamp(max=t)
            pred = torch.where(pix_max < thr, torch.zeros_like(pix_arg), pix_arg + 1)
            cms[t].update(pred.numpy(), gt.numpy())
        # oracle naming of groups
        G = assign.shape[1]
        lin = gidx.flatten(1) * C + gt.flatten(1)  # (B, P)
        counts = torch.zeros(x.shape[0], G * C).scatter_add_(1, lin, torch.ones_like(lin, dtype=torch.float))
        naming = counts.view(-1, G, C).argmax(-1)  # (B, G)
        oracle.update(naming.gather(1, gidx.flatten(1)).view_as(gidx).numpy(), gt.numpy())
        # recognition: is the image's top-1 class among the present ones?
        top1 = (image_emb @ bank.t()).argmax(1) + 1
        present = F.one_hot(gt.flatten(1), C).amax(1)  # (B, C)
        top1_hits += int(present.gather(1, top1[:, None]).sum())
        top1_total += x.shape[0]
    model.train()
    return {t: cm.miou() for t, cm in cms.items()}, oracle.miou(), top1_hits / max(top1_total, 1)


def all_background_miou(labels, C):
    cm = ConfusionMatrix(C)
    cm.update(np.zeros_like(labels, dtype=np.int64), labels.astype(np.int64))
    return cm.miou()


# ------------------------------------------------------------------------------------------------ main
def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="tiny")
    p.add_argument("--set", nargs="*", default=[], help="dotted config overrides")
    p.add_argument("--minutes", type=float, default=3.5, help="training wall-clock budget (eval excluded)")
    p.add_argument("--eval-at", type=float, nargs="*", default=None, help="minutes of training to evaluate at")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--min-lr", type=float, default=0.0, help="cosine floor as a fraction of --lr")
    p.add_argument("--wd", type=float, default=0.05)
    p.add_argument("--warmup", type=float, default=0.05, help="warmup as a fraction of the time budget")
    p.add_argument("--sched", default="cosine", choices=["cosine", "const"])
    p.add_argument("--aug", default="flip", choices=["none", "flip", "rrc"])
    p.add_argument("--entity", type=int, default=1, help="feed question/answer (entity completion) batches")
    p.add_argument("--mlc", type=float, default=0.0)
    p.add_argument("--gmil", type=float, default=0.0)
    p.add_argument("--ntrain", type=int, default=30000)
    p.add_argument("--nval", type=int, default=500)
    p.add_argument("--ndev", type=int, default=300)
    p.add_argument("--world-seed", type=int, default=0)
    p.add_argument("--background", default="cluttered", help="synthetic world background: cluttered | smooth")
    p.add_argument("--min-scale", type=float, default=None, help="world: smallest object diameter / image side")
    p.add_argument("--max-scale", type=float, default=None, help="world: largest object diameter / image side")
    p.add_argument("--max-objects", type=int, default=None, help="world: most objects per image")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tag", default="")
    p.add_argument("--log-every", type=float, default=30.0, help="seconds of training between log lines")
    p.add_argument("--save", default=None, help="save final state_dict here")
    p.add_argument("--load", default=None, help="start from this state_dict (with --minutes 0: evaluate only)")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    world = {k: v for k, v in (("min_scale", args.min_scale), ("max_scale", args.max_scale),
                                ("max_objects", args.max_objects)) if v is not None}
    wcfg = SyntheticConfig(background=args.background, **world)
    class_names = ["background", *DEFAULT_CLASSES]
    C = len(class_names)

    t0 = time.time()
    model = build_model(args.config, args.set)
    tr = TrainData(render_split(args.world_seed, "train", args.ntrain, wcfg), model.tokenizer, args.seed)
    val = render_split(args.world_seed, "val", args.nval, wcfg)
    dev = render_split(args.world_seed, "seg", args.ndev, wcfg)
    bg_val, bg_dev = all_background_miou(val["label"], C), all_background_miou(dev["label"], C)
    print(f"data ready in {time.time() - t0:.0f}s; all-background mIoU val {bg_val:.4f} dev {bg_dev:.4f}; "
          f"val fg fraction {(val['label'] > 0).mean():.3f}", flush=True)

    if args.load:
        model.load_state_dict(torch.load(args.load, map_location="cpu"))
    loss_cfg = model.config.loss
    n_params = sum(p.numel() for p in model.parameters())
    print(f"config overrides {args.set}; params {n_params / 1e6:.2f}M; loss {loss_cfg}", flush=True)
    from ovseg.train.engine import build_optimizer
    opt = build_optimizer(model, args.lr, args.wd)
    prompts = [f"a photo of a {e}." for e in tr.vocab]
    p_ids, p_mask = model.tokenizer(prompts, padding="longest")
    use_prompts = args.mlc > 0 or args.gmil > 0

    budget = args.minutes * 60
    evals = sorted(args.eval_at or [args.minutes])
    results = []
    train_time, step, seen = 0.0, 0, 0
    last_log = 0.0
    agg: dict[str, float] = {}
    model.train()
    it = tr.batches(args.batch, args.seed)
    while True:
        # ---- scheduled evaluation (excluded from the training time)
        if evals and train_time >= evals[0] * 60 - 1e-6:
            te = time.time()
            dev_m, dev_or, dev_top1 = eval_split(model, dev["image"], dev["label"], class_names)
            best_t = max(dev_m, key=lambda t: dev_m[t])
            val_m, val_or, val_top1 = eval_split(model, val["image"], val["label"], class_names)
            r = {"tag": args.tag, "train_min": round(train_time / 60, 2), "steps": step, "images": seen,
                 "img_per_s": round(seen / max(train_time, 1e-9), 1), "dev_bg_thresh": best_t,
                 "dev_miou": round(dev_m[best_t], 4), "val_miou": round(val_m[best_t], 4),
                 "val_miou_thr0.95": round(val_m[0.95], 4), "val_oracle_best_thr": max(val_m, key=lambda t: val_m[t]),
                 "val_oracle_miou": round(max(val_m.values()), 4), "val_group_oracle": round(val_or, 4),
                 "val_top1_present": round(val_top1, 3), "bg_baseline_val": round(bg_val, 4),
                 "logit_scale": round(float(model.scale()), 2)}
            print("EVAL " + json.dumps(r), flush=True)
            print("  dev mIoU by thr: " + " ".join(f"{t}:{m:.3f}" for t, m in dev_m.items()), flush=True)
            results.append(r)
            evals.pop(0)
            print(f"  (eval took {time.time() - te:.1f}s)", flush=True)
        if train_time >= budget:
            break
        ts = time.time()
        frac = train_time / budget
        if frac < args.warmup:
            lr = args.lr * max(frac / args.warmup, 0.01)
        elif args.sched == "cosine":
            q = (frac - args.warmup) / max(1 - args.warmup, 1e-9)
            lr = args.lr * (args.min_lr + (1 - args.min_lr) * 0.5 * (1 + math.cos(math.pi * min(q, 1.0))))
        else:
            lr = args.lr
        for g in opt.param_groups:
            g["lr"] = lr
        idx, gen = next(it)
        batch = {"image": augment(tr.images[idx], args.aug, gen), "caption_ids": tr.cap_ids[idx],
                 "caption_mask": tr.cap_mask[idx]}
        if args.entity and loss_cfg.entity_weight:
            batch.update(question_ids=tr.q_ids[idx], question_mask=tr.q_mask[idx], answer_ids=tr.a_ids[idx],
                         answer_mask=tr.a_mask[idx])
        if use_prompts:  # the model's class-prompt path gives class and group embeddings for the extra losses
            batch.update(class_ids=p_ids, class_mask=p_mask)
        out = model(batch)
        total, parts = compute_losses(out, loss_cfg)
        targets = tr.entity_multi_hot[idx]
        if args.mlc > 0:
            parts["loss_mlc"] = multilabel_contrast(out["logit_scale"] * out["image_emb"] @ out["class_emb"].t(),
                                                    targets)
            total = total + args.mlc * parts["loss_mlc"]
        if args.gmil > 0:
            parts["loss_gmil"] = multilabel_contrast(out["group_class_logits"].amax(1), targets)
            total = total + args.gmil * parts["loss_gmil"]
        if not torch.isfinite(total):
            raise FloatingPointError(f"non-finite loss at step {step}")
        opt.zero_grad(set_to_none=True)
        total.backward()
        params = [q for g in opt.param_groups for q in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        step += 1
        seen += len(idx)
        train_time += time.time() - ts
        for k, v in {"loss": total, **parts}.items():
            fv = float(v.detach()) if torch.is_tensor(v) else float(v)
            agg[k] = agg[k] * 0.9 + fv * 0.1 if k in agg else fv
        if train_time - last_log >= args.log_every:
            last_log = train_time
            print(f"t={train_time / 60:5.2f}min step {step} {seen / train_time:6.1f} img/s lr {lr:.2e} "
                  + " ".join(f"{k} {v:.3f}" for k, v in agg.items()) + f" scale {float(model.scale()):.1f}",
                  flush=True)
    print("FINAL " + json.dumps({"args": vars(args), "results": results}), flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "results.jsonl", "a") as f:
        f.write(json.dumps({"args": vars(args), "results": results}) + "\n")
    if args.save:
        torch.save(model.state_dict(), args.save)
    return 0


if __name__ == "__main__":
    sys.exit(main())
