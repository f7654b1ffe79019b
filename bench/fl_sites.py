"""Many sites: wall time, bytes and peak memory per federated round against the number of virtual sites, with
client sampling and a per-round deadline that drops a straggler.

    python bench/fl_sites.py [--sites 4,8,16,32] [--sampled 32:0.25] [--rounds 4] [--round-timeout 45] \
        [--straggler-round 2] [--out runs/bench-fl-sites] [--results bench/results] [--set key=value ...]
    python bench/fl_sites.py --plot bench/results/fl-sites-results.jsonl   # the table and curve again

A synthetic world (the `debug` model's 32-px world, --train/--seg images) is split into N sites (half caption,
half segmentation, Dirichlet --alpha); each federation is a Flower simulation on Ray (the real ServerApp and
ClientApp) run in its own subprocess, so every run has a fresh Ray cluster and its own peak RSS. Virtual site 0
(partition 0) is the straggler: in --straggler-round it waits until 1.5 s past the round's deadline
(fed.round_timeout = --round-timeout) before training, so it answers late and the round goes on without it.

Measured per round, from outside the project's code: the server's Grid is wrapped (send_and_receive timed, its
messages counted: sampled sites, replies in time, late = sampled - replies, bytes = the replies' `bytes-sent`
metric and the ArrayRecords' own byte count); a thread samples VmRSS every 0.2 s of the server process (the
driver: ServerApp, central evaluation), of its descendant processes titled `ray::` but not `ray::*Agent` (the
Ray workers running the virtual sites; RSS each and PSS summed, so shared pages count once), and of the other
descendants (raylet, GCS, dashboard). The sites accepted into the aggregate come from the server's MLflow metric
`fed/sites_accepted`, and its own late count from `fed/stragglers` where the server logs one.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


# ---- one federation (runs in a subprocess) --------------------------------------------------------------------

def straggle(msg, context, call_next, *, partition: int, rnd: int, timeout: float):
    """Client mod: virtual site ``partition`` answers its train message of round ``rnd`` 1.5 s after the round's
    deadline (the message's creation time + ``timeout``), then trains as usual."""
    if (msg.metadata.message_type == "train" and int(context.node_config.get("partition-id", -1)) == partition
            and int(msg.content["config"].get("server-round", 0)) == rnd):
        seconds = max(0.5, msg.metadata.created_at + timeout + 1.5 - time.time())
        print(f"[bench] straggler: partition {partition} sleeps {seconds:.1f} s in round {rnd}", flush=True)
        time.sleep(seconds)
    return call_next(msg, context)


class TimedGrid:
    """A Grid that records, for every send_and_receive, its time, messages, replies in time and their bytes."""

    def __init__(self, grid):
        self._grid, self.calls = grid, []

    def __getattr__(self, name):
        return getattr(self._grid, name)

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        sent = [int(m.metadata.dst_node_id) for m in messages]
        kind = messages[0].metadata.message_type if messages else "none"
        rnd = int(messages[0].content["config"].get("server-round", 0)) if messages else 0
        down = sum(m.content["arrays"].count_bytes() for m in messages if "arrays" in m.content)
        t0 = time.time()
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        t1 = time.time()
        ok = [r for r in replies if not r.has_error()]
        got = {int(r.metadata.src_node_id) for r in replies}
        self.calls.append({
            "kind": kind, "round": rnd, "t0": t0, "t1": t1, "sampled": len(sent), "replies": len(replies),
            "errors": len(replies) - len(ok), "late_nodes": sorted(set(sent) - got), "bytes_down": down,
            "bytes_up_metric": sum(float(r.content["metrics"].get("bytes-sent", 0.0)) for r in ok
                                   if "metrics" in r.content),
            "bytes_up_arrays": sum(r.content["arrays"].count_bytes() for r in ok if "arrays" in r.content)})
        return replies


def _proc_table() -> dict[int, int]:
    """pid -> parent pid, for every process we can read."""
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                out[int(d)] = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    return out


def _rss_mb(pid: int, field: str = "VmRSS", src: str = "status") -> float:
    try:
        for line in Path(f"/proc/{pid}/{src}").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class MemorySampler(threading.Thread):
    """Samples (time, server RSS, {Ray worker pid: RSS}, other descendants' RSS, Ray workers' summed PSS)."""

    def __init__(self, interval: float = 0.2):
        super().__init__(daemon=True)
        self.interval, self.samples, self.stop = interval, [], threading.Event()

    def run(self) -> None:
        me = os.getpid()
        while not self.stop.is_set():
            parents, kids, todo = _proc_table(), [], [me]
            while todo:
                p = todo.pop()
                children = [c for c, pp in parents.items() if pp == p]
                kids += children
                todo += children
            workers, pss, other = {}, 0.0, 0.0
            for pid in kids:
                try:
                    title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
                except OSError:
                    continue
                if title.startswith("ray::") and not title.endswith("Agent"):  # not the dashboard/runtime agents
                    workers[pid] = _rss_mb(pid)
                    pss += _rss_mb(pid, "Pss", "smaps_rollup")  # shared pages (torch, plasma) counted once
                else:
                    other += _rss_mb(pid)
            self.samples.append((time.time(), _rss_mb(me), workers, other, pss))
            self.stop.wait(self.interval)

    def peaks(self, t0: float, t1: float) -> dict:
        window = [s for s in self.samples if t0 <= s[0] <= t1] or self.samples[-1:]
        return {"server_rss_mb": max(s[1] for s in window),
                "ray_worker_max_rss_mb": max((max(s[2].values(), default=0.0) for s in window), default=0.0),
                "ray_workers_sum_rss_mb": max(sum(s[2].values()) for s in window),
                "ray_workers_sum_pss_mb": max(s[4] for s in window),
                "ray_workers": max(len(s[2]) for s in window),
                "ray_system_rss_mb": max(s[3] for s in window)}


def _mlflow_metric(db: Path, key: str) -> dict[int, float]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("ovseg-federated")
    run = client.search_runs([exp.experiment_id])[0]
    return {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}


def run_one(args) -> int:
    """One federation on ``args.sites_dir``; writes its per-round measurements to ``args.json_out``."""
    import random
    import resource

    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from ovseg.config import flat_overrides
    from ovseg.integrations.flower import make_client_app
    from ovseg.integrations.flower.server import run_server

    random.seed(args.seed)  # Flower samples the round's sites with the random module
    out = Path(args.json_out).parent
    db = out / f"mlflow-{Path(args.json_out).stem}.db"
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{db}"
    num = len([d for d in Path(args.sites_dir).glob("site-*") if d.is_dir()])
    sampled = max(1, int(num * args.fraction))
    rc = {"config": "debug", "seed": args.seed, "fed.rounds": args.rounds, "fed.sites_dir": args.sites_dir,
          "fed.min_sites": sampled, "fed.fraction_train": args.fraction, "fed.fraction_evaluate": 0.0,
          "fed.round_timeout": args.round_timeout, "fed.output_dir": str(out / "runs"),
          "fed.run_name": Path(args.json_out).stem, "data.synthetic_dir": args.world, "eval.max_images": 8,
          **flat_overrides(args.set)}
    timed: list[TimedGrid] = []
    server = ServerApp()

    @server.main()
    def main(grid, context) -> None:
        timed.append(TimedGrid(grid))
        run_server(timed[0], {**rc, **dict(context.run_config)})

    mod = functools.partial(straggle, partition=0, rnd=args.straggler_round, timeout=args.round_timeout)
    sampler = MemorySampler()
    sampler.start()
    t_start = time.time()
    run_simulation(server, make_client_app(extra_mods=[mod] if args.straggler_round > 0 else [], run_config=rc),
                   num_supernodes=num, backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                                       "init_args": {"num_cpus": args.cpus, "num_gpus": 0}})
    t_end = time.time()
    sampler.stop.set()
    sampler.join()
    accepted = _mlflow_metric(db, "fed/sites_accepted")
    late_logged = _mlflow_metric(db, "fed/stragglers")  # the server's own count, where it logs one
    trains = [c for c in timed[0].calls if c["kind"] == "train"]
    rounds = []
    for i, c in enumerate(trains):
        end = trains[i + 1]["t0"] if i + 1 < len(trains) else t_end
        rounds.append({"round": c["round"], "train_s": round(c["t1"] - c["t0"], 3), "round_s": round(end - c["t0"], 3),
                       "sampled": c["sampled"], "replies": c["replies"], "late": c["sampled"] - c["replies"],
                       "late_logged": late_logged.get(c["round"]), "errors": c["errors"],
                       "accepted": accepted.get(c["round"]), "bytes_up": c["bytes_up_metric"],
                       "bytes_up_arrays": c["bytes_up_arrays"], "bytes_down": c["bytes_down"],
                       **sampler.peaks(c["t0"], end)})
    record = {"sites": num, "fraction_train": args.fraction, "round_timeout": args.round_timeout,
              "straggler_round": args.straggler_round, "cpus": args.cpus, "rounds": rounds, "total_s": round(t_end - t_start, 1),
              "server_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "run_config": {k: str(v) for k, v in rc.items()}}
    tmp = Path(args.json_out + ".partial")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(args.json_out)
    return 0


# ---- the sweep ------------------------------------------------------------------------------------------------

def make_world_and_sites(out: Path, counts: list[int], num_train: int, num_seg: int, alpha: float) -> Path:
    from ovseg.config import load_config
    from ovseg.data.synthetic.world import generate_world, world_config
    from ovseg.federated.split import split_world

    world = out / "world"
    if not (world / "manifest.json").is_file():
        generate_world(world, seed=0, num_train=num_train, num_val=16, num_seg=num_seg,
                       config=world_config(load_config("debug")), shard_size=1000, overwrite=world.exists())
    for n in counts:
        sites = out / f"sites-{n}"
        if not (sites / "federation.json").is_file():
            kinds = ["caption", "segmentation"] * (n // 2) + ["caption"] * (n % 2)
            split_world(world, sites, kinds, alpha=alpha, seed=0, overwrite=sites.exists())
    return world


def table(records: list[dict]) -> str:
    lines = [("| sites | fraction | round | sampled | replies | late | accepted | train phase s | round s | "
              "MB up | server RSS MB | Ray worker max RSS MB | Ray workers PSS sum MB |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        for x in r["rounds"]:
            lines.append(f"| {r['sites']} | {r['fraction_train']:g} | {x['round']} | {x['sampled']} | "
                         f"{x['replies']} | {x['late']} | {x['accepted'] if x['accepted'] is not None else '-'} | "
                         f"{x['train_s']:.1f} | {x['round_s']:.1f} | {x['bytes_up'] / 1e6:.2f} | "
                         f"{x['server_rss_mb']:.0f} | {x['ray_worker_max_rss_mb']:.0f} | "
                         f"{x['ray_workers_sum_pss_mb']:.0f} |")
    return "\n".join(lines)


def plot(records: list[dict], png: Path) -> None:
    """Per-round wall time, bytes received and peak RSS against the number of sites (full participation)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    full = sorted((r for r in records if r["fraction_train"] == 1.0), key=lambda r: r["sites"])
    part = [r for r in records if r["fraction_train"] != 1.0]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), dpi=110)
    xs = [r["sites"] for r in full]

    def warm(r, key):  # the rounds after the first (cold: Ray workers import and build) but the straggler's
        vals = [x[key] for x in r["rounds"] if x["round"] not in (1, r["straggler_round"])]
        return sum(vals) / len(vals) if vals else float("nan")

    def at(r, rnd, key):
        return next((x[key] for x in r["rounds"] if x["round"] == rnd), float("nan"))

    ax = axes[0]
    ax.plot(xs, [warm(r, "train_s") for r in full], "o-", label="train phase, warm rounds (mean)")
    ax.plot(xs, [warm(r, "round_s") for r in full], "o:", label="whole warm round, with central eval")
    ax.plot(xs, [at(r, 1, "train_s") for r in full], "^-", label="train phase, round 1 (cold workers)")
    ax.plot(xs, [at(r, r["straggler_round"], "train_s") for r in full], "s--", label="train phase, straggler round")
    ax.axhline(full[0]["round_timeout"], color="grey", lw=0.8, ls="-.", label="fed.round_timeout")
    for r in part:
        ax.plot([r["sites"]], [warm(r, "train_s")], "D", color="C4",
                label=f"{r['sites']} sites, fraction_train {r['fraction_train']:g} (warm)")
    ax.set_ylabel("seconds")
    ax = axes[1]
    ax.plot(xs, [warm(r, "bytes_up") / 1e6 for r in full], "o-", label="warm rounds")
    ax.plot(xs, [at(r, r["straggler_round"], "bytes_up") / 1e6 for r in full], "s--",
            label="straggler round (late update left out)")
    for r in part:
        ax.plot([r["sites"]], [warm(r, "bytes_up") / 1e6], "D", color="C4", label=f"fraction {r['fraction_train']:g}")
    ax.set_ylabel("MB received by the server per round")
    ax.set_yscale("log", base=2)
    ax = axes[2]
    for key, label in (("server_rss_mb", "server process"), ("ray_worker_max_rss_mb", "largest Ray worker"),
                       ("ray_workers_sum_pss_mb", "all Ray workers (PSS sum)")):
        ax.plot(xs, [max(x[key] for x in r["rounds"]) for r in full], "o-", label=label)
    ax.set_ylabel("peak memory in a round, MB")
    ax.set_ylim(bottom=0)
    for ax in axes:
        ax.set_xlabel("virtual sites")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"debug model, {len(full[0]['rounds'])} rounds, {full[0]['cpus']} sites at a time on "
                 f"{full[0]['cpus']} shared CPU cores; site 0 late in round {full[0]['straggler_round']}", fontsize=9)
    fig.tight_layout()
    tmp = png.with_name(png.name + ".partial.png")
    fig.savefig(tmp)
    tmp.replace(png)
    print(f"wrote {png}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sites", default="4,8,16,32", help="numbers of virtual sites, full participation")
    p.add_argument("--sampled", default="32:0.25", help="SITES:FRACTION runs with client sampling ('' for none)")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--round-timeout", type=float, default=45.0, help="fed.round_timeout, seconds")
    p.add_argument("--straggler-round", type=int, default=2, help="the round site 0 answers late (0: never)")
    p.add_argument("--train", type=int, default=640, help="caption images in the world")
    p.add_argument("--seg", type=int, default=320, help="labelled images in the world")
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpus", type=int, default=2, help="CPUs Ray may use (one virtual site per CPU at a time)")
    p.add_argument("--out", default="runs/bench-fl-sites")
    p.add_argument("--results", default="bench/results", help="where fl-sites-results.jsonl and the PNG go")
    p.add_argument("--set", nargs="*", default=[], help="dotted run-config overrides for every federation")
    p.add_argument("--plot", default=None, help="only draw the curve of an earlier results JSONL")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # internal: one federation
    p.add_argument("--sites-dir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--world", default=None, help=argparse.SUPPRESS)
    p.add_argument("--fraction", type=float, default=1.0, help=argparse.SUPPRESS)
    p.add_argument("--json-out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        return run_one(args)
    if args.plot:
        src = Path(args.plot)
        if not src.is_file():
            p.error(f"--plot: {src} does not exist")
        records = [json.loads(x) for x in src.read_text().splitlines() if x.strip()]
        print(table(records))
        plot(records, src.with_name(src.name.replace("results.jsonl", "curve.png").replace(".jsonl", ".png")))
        return 0
    try:
        runs = [(int(n), 1.0) for n in args.sites.split(",") if n.strip()]
        runs += [(int(s.split(":")[0]), float(s.split(":")[1])) for s in args.sampled.split(",") if s.strip()]
    except (ValueError, IndexError):
        p.error(f"--sites / --sampled: expected e.g. 4,8 and 32:0.25, got {args.sites!r} / {args.sampled!r}")
    if any(n < 2 for n, _ in runs) or any(not 0 < f <= 1 for _, f in runs):
        p.error("every federation needs at least 2 sites and a fraction in (0, 1]")
    out, results = Path(args.out), Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    results.mkdir(parents=True, exist_ok=True)
    world = make_world_and_sites(out, sorted({n for n, _ in runs}), args.train, args.seg, args.alpha)
    records, t0 = [], time.time()
    sweep = out / datetime.now(UTC).strftime("sweep-%Y%m%d-%H%M%S")  # runs never resume an earlier sweep's
    sweep.mkdir()
    for n, frac in runs:
        name = f"n{n}-f{frac:g}"
        cmd = [sys.executable, __file__, "--one", "--sites-dir", str((out / f"sites-{n}").resolve()),
               "--world", str(world.resolve()), "--fraction", str(frac), "--json-out", str(sweep / f"{name}.json"),
               "--rounds", str(args.rounds), "--round-timeout", str(args.round_timeout), "--seed", str(args.seed),
               "--straggler-round", str(args.straggler_round), "--cpus", str(args.cpus), "--set", *args.set]
        t = time.time()
        with open(sweep / f"{name}.log", "w") as log:
            rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
        if rc != 0:
            print(f"{name}: the federation failed (exit {rc}); see {sweep / f'{name}.log'}", file=sys.stderr)
            return 1
        records.append(json.loads((sweep / f"{name}.json").read_text()))
        print(f"{name}: {time.time() - t:.0f} s", flush=True)
    meta = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": os.uname().nodename,
            "cpus": os.cpu_count(), "sweep_minutes": round((time.time() - t0) / 60, 1)}
    dst = results / "fl-sites-results.jsonl"
    tmp = dst.with_name(dst.name + ".partial")
    tmp.write_text("".join(json.dumps({**r, **meta}) + "\n" for r in records))
    tmp.replace(dst)
    print(table(records))
    print(f"wrote {dst}")
    plot(records, results / "fl-sites-curve.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
