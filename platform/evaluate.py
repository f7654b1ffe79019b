"""Zero-shot mIoU of a checkpoint on segmentation benchmarks, with per-class IoU, optionally tracked in MLflow.

    python platform/evaluate.py runs/tiny-20261101-120000 --dataset synthetic    # a run folder: its newest checkpoint
    python platform/evaluate.py ckpt.safetensors --dataset voc=/data/VOCdevkit --dataset context60=/data/VOCdevkit \\
        --dataset coco_object=/data --dataset ade20k=/data --device cuda
    MLFLOW_TRACKING_URI=http://mlflow:5000 python platform/evaluate.py ckpt.safetensors   # the config's eval.datasets
    python platform/evaluate.py ckpt.safetensors --protocol tcl --suite eight --data-root /data eval.pamr=true

The protocol (short side, window, stride, prompt templates, top-k filter, background threshold) is the one
stored in the checkpoint's config (``eval.*``), so the numbers equal what the pretraining run logged; dotted
``eval.*`` overrides change it (``eval.short_side=448``). A bare ``synthetic`` is the synthetic world the run
trained on. Datasets: voc, voc20, context60, context59, coco_object, ade20k, synthetic, synthetic-unseen
(``name=PATH``). ``--workers N`` scores with N processes (one per GPU when there are N), each its share
of every dataset's images; the confusion matrices are summed, so the metrics are the same.

``--protocol groupvit|tcl`` scores under that named protocol's complete set of values instead of the stored
ones (``eval.*`` overrides on the same command line still win; ``ovseg/eval/protocols.py``). ``--suite eight
--data-root ROOT`` scores the eight-benchmark table (VOC21, PC60, Obj, VOC20, PC59, Stuff, City, ADE) from the
MMSegmentation layout under ROOT, prints it with its average and logs every cell as ``table/<protocol>/<column>``;
a benchmark that cannot be read is an error naming it (``--skip-missing``: '-' in its cell).

Open vocabulary: ``--class-names voc=voc-synonyms.yaml`` also scores VOC with every class prompted by the
file's name (``{aeroplane: airliner, ...}``), logged as ``voc-voc-synonyms``; ``synthetic-unseen`` is the
synthetic val split under names no caption of the world uses.

A sample whose image or label cannot be read (corrupt, or a header declaring too many pixels) is named on
stderr, skipped and counted (``zeroshot/<dataset>/skipped``); the others are scored, and the exit code is 1.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads slow shared CPUs (see pretrain.py)

import argparse
import json
import sys

from ovseg.cli import add_debug, command, fail
from ovseg.config.tree import EVAL_PROTOCOLS


def _table(res) -> str:
    iou, gt, pred = res.confusion.iou(), res.confusion.matrix.sum(1), res.confusion.matrix.sum(0)
    width = max(8, *(len(n) for n in res.class_names))
    rows = [f"  {'class':{width}s} {'IoU':>7s} {'gt px':>12s} {'pred px':>12s}"]
    rows += [f"  {n:{width}s} {'-' if v != v else f'{v:.4f}':>7s} {g:12d} {p:12d}"
             for n, v, g, p in zip(res.class_names, iou, gt, pred)]
    return "\n".join(rows)


@command("evaluate")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a checkpoint file, or a run folder (its newest checkpoint_*)")
    p.add_argument("--dataset", action="append", default=None, metavar="NAME[=PATH]",
                   help="repeatable; default: the checkpoint config's eval.datasets")
    p.add_argument("--class-names", action="append", default=None, metavar="NAME=FILE",
                   help="repeatable; also score dataset NAME under the class names in FILE (a YAML/JSON mapping "
                        "canonical -> new name, or one name per line in class order); default: eval.class_names")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--max-images", type=int, default=None, help="first N images per dataset (default: eval.max_images)")
    p.add_argument("--workers", type=int, default=1,
                   help="score with N processes, each its share of every dataset (one per GPU when there are N; "
                        "on CPU they divide the cores); the metrics equal one process's")
    p.add_argument("--protocol", choices=EVAL_PROTOCOLS, default=None,
                   help="score under this protocol's values, not the checkpoint's stored eval.* (eval.* overrides win)")
    p.add_argument("--suite", default=None, help="eight (or benchmarks separated by commas): print the table")
    p.add_argument("--data-root", default=None, help="the suite's data folder (MMSegmentation's data/ layout)")
    p.add_argument("--skip-missing", action="store_true", help="a suite benchmark not found: '-', not an error")
    p.add_argument("--tracking-uri", default=None, help="MLflow URI (default: MLFLOW_TRACKING_URI; unset: no logging)")
    p.add_argument("--experiment", default="ovseg-eval")
    p.add_argument("--output", default=None, help="also write the metrics as JSON here")
    p.add_argument("overrides", nargs="*", help="eval.key=value")
    args = add_debug(p).parse_intermixed_args(argv)  # overrides may come before or after the options
    bad = [o for o in args.overrides if not o.partition("=")[0].strip().startswith("eval.")]
    if bad:
        p.error(f"only eval.* keys can be overridden (the model comes from the checkpoint): {bad}")

    import torch
    from tqdm import tqdm

    from ovseg.checkpoint import find_checkpoint
    from ovseg.config import flatten
    from ovseg.data.shardio import atomic_write_bytes
    from ovseg.eval.evaluate import describe_protocol
    from ovseg.eval.parallel import EvalJob, evaluate_checkpoint, load
    from ovseg.eval.protocols import protocol_overrides, resolve
    from ovseg.eval.table import plan_suite, protocol_label
    from ovseg.tracking import MlflowTracker, NullTracker

    try:
        if args.workers < 1:
            raise ValueError(f"--workers must be at least 1, got {args.workers}")
        datasets, plan = tuple(args.dataset) if args.dataset else None, None
        if args.suite or args.data_root:
            if not (args.suite and args.data_root) or args.dataset:
                raise ValueError("--suite needs --data-root (and no --dataset): the suite names the datasets")
            plan = plan_suite(args.suite, args.data_root, skip_missing=args.skip_missing)
            datasets = tuple(plan.specs)
        path = find_checkpoint(args.checkpoint)
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        job = EvalJob(str(path), tuple(protocol_overrides(args.protocol, args.overrides)), datasets,
                      tuple(args.class_names) if args.class_names is not None else None, args.max_images)
        loaded = load(job, device)
        ckpt, cfg = loaded[0], loaded[1]
        settings = resolve(cfg.eval)
    except (FileNotFoundError, ValueError, RuntimeError) as e:  # RuntimeError: a --device torch cannot use
        return fail("evaluate", e, args.debug)
    step, state = ckpt.step, ckpt.state
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    tracker = NullTracker()
    if uri:
        tags = {"ovseg.checkpoint": str(path.resolve()), "ovseg.config": cfg.name,
                "ovseg.training_run_id": str(state.get("mlflow_run_id") or "")}
        tracker = MlflowTracker(args.experiment, run_name=f"eval-{path.parent.name}-step{step}", tracking_uri=uri,
                                tags=tags)
        tracker.log_params({"checkpoint": str(path.resolve()), "checkpoint_step": step, "device": str(device),
                            **{k: v for k, v in flatten(cfg).items() if k.startswith(("eval.", "model."))},
                            **{f"protocol.{k}": v for k, v in vars(settings).items() if k != "bg_thresh"}})
    where = f"{device}" if args.workers == 1 else f"{args.workers} processes on {device}"
    print(f"[ovseg] checkpoint {path} (step {step}, config {cfg.name}) on {where}", flush=True)
    bars = []

    def progress(bench, n):
        print(f"[ovseg] {bench.name}: {describe_protocol(cfg.eval, bench, cfg.eval.bg_thresh)}", flush=True)
        bars.append(tqdm(total=n, desc=bench.name, unit="img", file=sys.stderr, mininterval=2.0))
        return lambda i: bars[-1].update(1)

    metrics, results, _, _ = evaluate_checkpoint(job, device=device, workers=args.workers, tracker=tracker,
                                                 progress=progress, loaded=loaded)
    for bar in bars:
        bar.close()
    for res in results:
        print(_table(res))
    if plan is not None:
        label = protocol_label(settings)
        print(plan.table(metrics, label), flush=True)
        cells = plan.metrics(metrics, label)
        tracker.log_metrics(cells, step)
        metrics = {**metrics, **cells}
    tracker.close()
    if args.output:
        atomic_write_bytes(args.output, json.dumps({"checkpoint": str(path), "step": step, "metrics": metrics},
                                                   indent=1).encode())
    if uri and not tracker.enabled:
        print(f"error: the results above were not logged to MLflow at {uri}", file=sys.stderr)
        return 1
    skipped = {res.name: res.skipped for res in results if res.skipped}
    if skipped:
        print(f"error: samples skipped (their files could not be read; named above): {skipped}; the metrics "
              "leave them out", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
