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
  cosine between different classes' prompts in each mode.
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

    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    for path in args.checkpoints:
        model, cfg = load_checkpoint(path)
        model.eval()
        bench = build_benchmark("synthetic", ensure_synthetic_world(cfg) / "val")
        x = torch.stack([(torch.as_tensor(bench[i][0]).permute(2, 0, 1).float() / 255 - mean) / std
                         for i in range(min(args.images, len(bench)))])
        block = model.vision.layers[-2].downsample  # the last grouping block
        parts = {}
        hooks = [block.assign.register_forward_hook(lambda m, i, o: parts.__setitem__("pooled", o[0])),
                 block.pre_assign_attn.register_forward_hook(lambda m, i, o: parts.__setitem__("query", o))]
        names = list(bench.class_names[1:])
        ids, mask = model.tokenizer([f"a photo of a {n}." for n in names])
        with torch.no_grad():
            model.encode_image(x)
            at_eval = model.encode_text(ids, mask)
            model.text_projector.train()  # BatchNorm on the batch of prompts, as the multi-label term reads them
            in_training = model.encode_text(ids, mask)
            model.text_projector.eval()
        for h in hooks:
            h.remove()
        pooled, query = parts["pooled"].norm(dim=-1), parts["query"].norm(dim=-1)
        C = len(names)

        def off_diagonal(e):
            return round(((e @ e.t()).sum().item() - C) / (C * (C - 1)), 3)

        print(json.dumps({
            "checkpoint": str(path), "pooled_norm": round(pooled.mean().item(), 2),
            "query_norm": round(query.mean().item(), 2), "ratio": round((pooled / query).mean().item(), 3),
            "prompt_cos_train_eval": dict(zip(names, [round(v, 3) for v in (at_eval * in_training).sum(-1).tolist()])),
            "prompt_pair_cos": {"eval": off_diagonal(at_eval), "train": off_diagonal(in_training)}}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
