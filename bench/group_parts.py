"""What a checkpoint's groups are made of, and how its class prompts differ between training and evaluation.

    python bench/group_parts.py runs/<run>/step-00000400/checkpoint.safetensors [more checkpoints ...]

For each checkpoint, on the first 128 val images of its synthetic world (``--images``), prints one JSON line:
- ``pooled_norm`` / ``query_norm``: the mean norm of the two parts GroupViT's grouping block adds up for each
  group (its assigned tokens' projected mean, before ``pooled_norm``'s LayerNorm if any, and its cross-attended
  query), and their mean ratio: a group whose query dominates means what the whole image shows, not what its
  tokens show;
- ``prompt_cos_train_eval``: per class, the cosine between its prompt embedding with the text projector's
  BatchNorm in training mode on the batch of all class prompts (what the multi-label term reads with
  ``model.class_prompt_norms=batch``) and in evaluation mode (what zero-shot segmentation reads), and the mean
  cosine between different classes' prompts in each mode;
- how the last grouping block assigns the patches: ``assign_margin`` (median over patches of the gap between
  the best and the second-best group's assignment logit), ``train_eval_agreement`` (the share of patches that
  the training assignment, hard with Gumbel noise, gives the group the noise-free argmax of evaluation gives
  them; 1/G when the groups' logits tie on every patch and the training assignment is a random draw),
  ``eval_shares`` (each group's share of the patches at evaluation, sorted, mean over images);
- grouping against labelling: ``miou`` (the checkpoint's zero-shot mIoU on these images, ``ovseg.eval.evaluate``
  with the checkpoint's protocol) and ``oracle_miou`` (its groups at evaluation, one window per 64-pixel image,
  each labelled with the majority ground-truth label of its pixels): an oracle near the all-background level
  means the groups do not follow the scene at all.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--images", type=int, default=128)
    args = p.parse_args(argv)

    import torch

    from ovseg import load_checkpoint
    from ovseg.data.benchmarks.registry import build_benchmark
    from ovseg.data.captions.transforms import IMAGENET_MEAN, IMAGENET_STD
    from ovseg.data.synthetic.world import ensure_synthetic_world
    from ovseg.eval.evaluate import evaluate
    from ovseg.eval.metrics import ConfusionMatrix
    from ovseg.models.grouping import gumbel_softmax

    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    for path in args.checkpoints:
        model, cfg = load_checkpoint(path)
        model.eval()
        bench = build_benchmark("synthetic", ensure_synthetic_world(cfg) / "val")
        x = torch.stack([(torch.as_tensor(bench[i][0]).permute(2, 0, 1).float() / 255 - mean) / std
                         for i in range(min(args.images, len(bench)))])
        block = model.vision.layers[-2].downsample  # the last grouping block
        parts = {}
        hooks = [block.assign.register_forward_hook(lambda m, i, o: parts.update(pooled=o[0], logits=m.logits(*i)[0])),
                 block.pre_assign_attn.register_forward_hook(lambda m, i, o: parts.__setitem__("query", o))]
        names = list(bench.class_names[1:])
        ids, mask = model.tokenizer([f"a photo of a {n}." for n in names])
        with torch.no_grad():
            _, _, assign = model.encode_image(x)
            at_eval = model.encode_text(ids, mask)
            model.text_projector.train()  # BatchNorm on the batch of prompts, as the multi-label term reads them
            in_training = model.encode_text(ids, mask)
            model.text_projector.eval()
        for h in hooks:
            h.remove()
        pooled, query = parts["pooled"].norm(dim=-1), parts["query"].norm(dim=-1)
        C = len(names)
        logits = parts["logits"]  # (B, G, N) the last block's assignment logits
        G = logits.shape[1]
        top2 = logits.topk(2, dim=1).values
        torch.manual_seed(0)
        drawn = gumbel_softmax(logits, block.assign.gumbel_tau, hard=True, dim=1).argmax(1)
        agreement = (drawn == logits.argmax(1)).float().mean().item()
        # evaluation's group of each pixel (upsampled as ovseg.eval.segment.window_logits does)
        groups = torch.nn.functional.interpolate(assign, size=x.shape[-2:], mode="bilinear",
                                                 align_corners=False).argmax(1)
        shares = torch.stack([(groups == g).float().flatten(1).mean(1) for g in range(G)], 1)
        truth = torch.stack([torch.as_tensor(bench[i][1]).long() for i in range(len(x))])
        K = len(bench.class_names)
        oracle = ConfusionMatrix(K)
        for i in range(len(x)):
            g, t = groups[i].flatten(), truth[i].flatten()
            label = torch.zeros(G, dtype=torch.long)
            for k in range(G):
                if (g == k).any():
                    label[k] = torch.bincount(t[g == k], minlength=K).argmax()
            oracle.update(label[g].view(truth[i].shape).numpy(), truth[i].numpy())

        def off_diagonal(e):
            return round(((e @ e.t()).sum().item() - C) / (C * (C - 1)), 3)

        print(json.dumps({
            "checkpoint": str(path), "pooled_norm": round(pooled.mean().item(), 2),
            "query_norm": round(query.mean().item(), 2), "ratio": round((pooled / query).mean().item(), 3),
            "assign_margin": round((top2[:, 0] - top2[:, 1]).median().item(), 3),
            "train_eval_agreement": round(agreement, 3),
            "eval_shares": [round(v, 3) for v in shares.sort(1, descending=True).values.mean(0).tolist()],
            "miou": round(evaluate(model, bench, protocol=cfg.eval, max_images=len(x)).miou, 4),
            "oracle_miou": round(oracle.miou(), 4),
            "prompt_cos_train_eval": dict(zip(names, [round(v, 3) for v in (at_eval * in_training).sum(-1).tolist()])),
            "prompt_pair_cos": {"eval": off_diagonal(at_eval), "train": off_diagonal(in_training)}}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
