"""Training-step time of two recipes on the same real batches, interleaved, and what the text cache saves.

    python bench/text_step.py                      # tiny (random 2-layer tower) vs tiny with a frozen, cached MiniLM
    python bench/text_step.py --paper-text         # + stage 2 at the paper's text sizes (BERT-base, frozen)

Part 1 (the embedded default): batches of the synthetic world from the real caption loader are read once into
memory; then ``--steps`` training steps of each recipe run alternately (A, B, A, B, ...) on the same batches,
after one warm-up pass over them (which also fills the text cache, so the timed steps are the steady state of
a run that has met these texts before: the synthetic world has a few thousand distinct texts and a run meets
each many times). Printed: the median and mean step time of each, their ratio and the cache's hit rate.
"random" is ``tiny`` with its random tower (a 2-layer 128-wide BERT trained in stage 1, [CLS] pooling: ``RANDOM``,
which is also ``tiny`` as configured on 1 Dec 2026); "minilm" is ``tiny`` with the packaged MiniLM-L6 frozen in
both stages, mean-pooled, its features cached and mapped to 128 by a trainable head (``MINILM``), plus
``--minilm-extra``.

Part 2 (``--paper-text``): the text side of one stage-2 step at the paper's sizes: BERT-base (12 x 768, random
weights of the same shape: the cost does not depend on the values), 4 texts per sample (caption, masked
question, answer prompt, cross-image entity prompt) of ``--paper-tokens`` tokens, batch ``--paper-batch``;
the tower's forward against the cache's lookup of the same rows.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RANDOM = ["model.text.pretrained_dir=null", "model.text.width=128", "model.text.depth=2", "model.text.num_heads=4",
          "model.text.mlp_dim=512", "model.text.dropout=0.0", "model.text.pooling=cls", "model.text.freeze=false",
          "model.text.head_dim=null"]
MINILM = ["model.text.pretrained_dir=builtin:minilm", "model.text.pooling=mean", "model.text.freeze=true",
          "model.text.head_dim=128"]


def _batches(cfg, n: int):
    from ovseg.data.captions.loader import build_caption_loader
    from ovseg.data.captions.transforms import transform_kind
    from ovseg.data.synthetic.world import ensure_synthetic_world
    from ovseg.models.text import build_tokenizer
    from ovseg.train.pretrain import train_urls

    ensure_synthetic_world(cfg)
    tok = build_tokenizer(cfg.model.text)
    loader = build_caption_loader(train_urls(cfg), tok.hf, batch_size=cfg.train.batch_size,
                                  image_size=cfg.model.vision.img_size, stage=transform_kind(cfg.data.augment, 1),
                                  num_workers=0, seed=cfg.seed, shuffle_buffer=cfg.data.shuffle_buffer,
                                  epoch_length=n, max_length=cfg.model.text.max_length,
                                  entity_prompts=True)
    loader.set_epoch(0)
    return [b for _, b in zip(range(n), loader)]


def step_times(steps: int, batches_n: int, overrides: list[str], extra: list[str] = ()) -> dict:
    import torch

    from ovseg import build_model, load_config
    from ovseg.train.engine import train_step
    from ovseg.train.schedule import build_optimizer
    from ovseg.train.task import Task

    recipes = {"random": load_config("tiny", RANDOM + overrides),
               "minilm": load_config("tiny", MINILM + list(extra) + overrides)}
    batches = _batches(recipes["minilm"], batches_n)
    runs = {}
    for name, cfg in recipes.items():
        torch.manual_seed(0)
        model = build_model(cfg)
        model.set_text_trainable(not cfg.model.text.freeze)
        model.train()
        opt = build_optimizer(model, cfg.train.lr, cfg.train.weight_decay)
        runs[name] = (model, Task(model, cfg.loss), opt)
    times = {name: [] for name in runs}
    for i in range(len(batches) + steps):
        for name, (model, task, opt) in runs.items():
            batch = batches[i % len(batches)]
            t0 = time.perf_counter()
            train_step(task, batch, opt)
            if i >= len(batches):  # the first pass over the batches is the warm-up
                times[name].append(time.perf_counter() - t0)
    out = {name: {"median_s": statistics.median(t), "mean_s": statistics.fmean(t)} for name, t in times.items()}
    out["ratio_minilm_over_random"] = out["minilm"]["median_s"] / out["random"]["median_s"]
    cache = runs["minilm"][0].text.cache
    out["cache_hit_rate_minilm"] = cache.hit_rate if cache else None
    out["cache_rows"] = len(cache.rows) if cache else 0
    return out


def paper_text(batch: int, tokens: int, repeats: int) -> dict:
    import torch

    from ovseg.config import TextConfig
    from ovseg.models.text import TextTower, build_tokenizer

    cfg = TextConfig(max_length=77)
    tok = build_tokenizer(cfg)
    torch.manual_seed(0)
    tower = TextTower(cfg, tok.vocab_size, tokenizer=tok).requires_grad_(False).eval()
    ids = torch.randint(1000, 20000, (4 * batch, tokens))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        tower(ids, mask)  # fill the cache
        fwd, hit = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            tower.compute(ids, mask)
            fwd.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            tower(ids, mask)
            hit.append(time.perf_counter() - t0)
    return {"texts": 4 * batch, "tokens": tokens, "forward_s": statistics.median(fwd),
            "cache_s": statistics.median(hit), "speedup": statistics.median(fwd) / statistics.median(hit)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20, help="timed steps per recipe")
    p.add_argument("--batches", type=int, default=8, help="distinct batches, read once and cycled")
    p.add_argument("--paper-text", action="store_true")
    p.add_argument("--paper-batch", type=int, default=32)
    p.add_argument("--paper-tokens", type=int, default=20)
    p.add_argument("--minilm-extra", nargs="*", default=[],
                   help="overrides for the second recipe only (loss.mosaic_weight=1.0 ...)")
    p.add_argument("--out", default=None, help="append the result as one JSON line here")
    p.add_argument("overrides", nargs="*", help="config overrides applied to both recipes (train.batch_size=64)")
    args = p.parse_args(argv)
    import torch

    res = {"date": datetime.date.today().isoformat(), "machine": platform.node(), "threads": torch.get_num_threads(),
           "command": " ".join(["python", "bench/text_step.py", *(argv if argv is not None else sys.argv[1:])]),
           "tiny": step_times(args.steps, args.batches, args.overrides, args.minilm_extra)}
    if args.paper_text:
        res["paper_stage2_text"] = paper_text(args.paper_batch, args.paper_tokens, 5)
    print(json.dumps(res, indent=1))
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(res) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
