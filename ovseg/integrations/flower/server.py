"""The coordinator's ServerApp: resume or start, run the rounds, score each global model, checkpoint.

After each round: central zero-shot mIoU on ``eval.datasets`` (``zeroshot/<dataset>/miou``, step = round),
per-round site losses, example counts and bytes, the privacy budget spent (DP mode), and a checkpoint
``<fed.output_dir>/<fed.run_name>/round-XXXX.safetensors``; a restarted federation resumes from the last.
"""

from __future__ import annotations

import os
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp

from ...checkpoint import read_checkpoint, save_checkpoint
from ...config import flatten
from ...federated.exchange import build_site_model, exchange_keys, frozen_fingerprint, get_tensors, set_tensors
from .config import FINGERPRINT, ROUND_FILE, config_from_run
from .records import record_to_tensors, to_record
from .strategy import GuardedStrategy, build_strategy


def latest_round(ckpt_dir: Path) -> Path | None:
    files = sorted(ckpt_dir.glob("round-*.safetensors"))
    return files[-1] if files else None


def run_server(grid: Grid, run_config: dict, context: Context | None = None) -> dict:
    """The coordinator's federation: resume or start, run the remaining rounds, evaluate, log, checkpoint."""
    from ...data.synthetic.world import synthetic_root
    from ...eval.evaluate import parse_eval_sets
    from ...eval.report import evaluate_and_log
    from ...tracking import MlflowTracker

    cfg = config_from_run(run_config)
    model, cfg = build_site_model(cfg, cfg.fed.init_checkpoint)
    keys = exchange_keys(model, cfg)
    fingerprint = frozen_fingerprint(model, cfg)
    ckpt_dir = Path(cfg.fed.output_dir) / cfg.fed.run_name
    start, run_id, history = 0, None, []
    last = latest_round(ckpt_dir)
    if last is not None:
        ckpt = read_checkpoint(last)
        model.load_state_dict(ckpt.weights, strict=False)
        if frozen_fingerprint(model, cfg) != fingerprint:
            # every site builds its frozen towers from the starting checkpoint: they would refuse every round
            raise ValueError(f"{last}: this federation was started from another checkpoint (its frozen towers "
                             f"differ from {cfg.fed.init_checkpoint or 'a fresh model'}); to start over, choose a "
                             f"new fed.run_name or fed.output_dir")
        start, run_id = ckpt.step, ckpt.state.get("mlflow_run_id")
        history = list(ckpt.state.get("history", []))
        print(f"[ovseg-fl] resuming from {last} (round {start})", flush=True)
    tracker = MlflowTracker(cfg.fed.experiment, run_name=cfg.fed.run_name, run_id=run_id)
    if last is None:
        tracker.log_params(flatten(cfg))
    eval_sets = parse_eval_sets(cfg.eval.datasets, synthetic_root(cfg) / "val", cfg.eval.class_names)
    strategy = GuardedStrategy(build_strategy(cfg), cfg, keys, tracker, step_offset=start)
    remaining = cfg.fed.rounds - start
    print(f"[ovseg-fl] {cfg.fed.strategy}: {len(keys)} tensors travel "
          f"({sum(model.state_dict()[k].numel() for k in keys) / 1e6:.2f} M values, {cfg.fed.transport} from sites); "
          f"rounds {start + 1}..{cfg.fed.rounds}", flush=True)

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        step = start + server_round
        if server_round == 0 and start > 0:
            return None  # the resumed round was evaluated and logged before the restart
        set_tensors(model, record_to_tensors(arrays), keys)
        metrics, _ = evaluate_and_log(model, eval_sets, tracker, step, cfg.eval, label=f"round{step:04d}",
                                      where=f"round {step}")
        own = strategy.site_eval.get(step)  # the sites evaluated this round's model before the server does
        history.append({"round": step, **{k: v for k, v in metrics.items() if k.endswith("/miou")},
                        **({"site_val_miou": own} if own else {})})
        path = save_checkpoint(ckpt_dir / ROUND_FILE.format(step), model, cfg, step, metrics,
                               state={"round": step, "mlflow_run_id": tracker.run_id, "history": history})
        if step == cfg.fed.rounds:
            tracker.log_artifact(path, "checkpoint")
        return MetricRecord({k: float(v) for k, v in metrics.items() if k.endswith("/miou")})

    if remaining <= 0:
        print(f"[ovseg-fl] all {cfg.fed.rounds} rounds are done ({last})", flush=True)
        tracker.close()
        return {"history": history}
    initial = to_record(get_tensors(model, keys), "float32")
    train_config = ConfigRecord({FINGERPRINT: fingerprint})
    try:
        if cfg.fed.secagg:
            from .secagg import run_secagg

            run_secagg(grid, context or Context(run_id=0, node_id=0, node_config={}, state=RecordDict(),
                                                run_config={}),
                       cfg, keys, initial, fingerprint, strategy, evaluate_fn, remaining)
        else:
            strategy.start(grid=grid, initial_arrays=initial, num_rounds=remaining, timeout=cfg.fed.round_timeout,
                           train_config=train_config, evaluate_config=ConfigRecord({FINGERPRINT: fingerprint}),
                           evaluate_fn=evaluate_fn)
    except BaseException:
        tracker.close("FAILED")
        raise
    tracker.close()
    return {"history": history, "refusals": strategy.refusals}


def make_server_app(run_config: dict | None = None) -> ServerApp:
    """The coordinator's ServerApp; ``run_config`` gives defaults under the run's own config."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        run_server(grid, {**(run_config or {}), **dict(context.run_config)}, context)

    return app
