"""A real federation on loopback: SuperLink with TLS and node authentication, a caption site and a segmentation
site (SuperNodes with their own keys), a registered site that tries to send out more than it may, an
unregistered intruder, a real MLflow server, `flwr run` of the Flower app.

The app is `clients/` as shipped plus one client mod (faulty_site.py) that acts only on the node whose node
config says fault=1. One federation serves several checks (it is the expensive part): rounds 0..2 reach MLflow,
the intruder is refused, the honest sites' messages carried only the announced arrays and the declared metrics,
the faulty site's guard stopped each of its attempts with a fixed text, the federation (submitted for round 1,
then again for 2 rounds) resumed from its last checkpoint, SecAgg+ reaches the plain federation's aggregate, and
a SuperNode killed mid-run does not stop the run. Every process started here is stopped by its process-group id.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import tomllib
from pathlib import Path

import pytest
from services import (
    BIN,
    REPO,
    flower_env,
    flwr,
    make_certs,
    start_mlflow,
    start_superlink,
    start_supernode,
    stop,
    write_connection,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # SuperLink, SuperNodes, an MLflow server
# the federation runs the Flower app as shipped: its default configuration, as clients/pyproject.toml names it
DEPLOYED_CONFIG = tomllib.loads((REPO / "clients" / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"][
    "config"]


def _run_config(world: Path, out: Path, **extra) -> str:
    base = {"fed.rounds": 2, "fed.local_steps": 2, "fed.local_batch": 8, "fed.round_timeout": 120.0,
            "data.synthetic_dir": str(world), "fed.output_dir": str(out), "eval.max_images": 8,
            "fed.run_name": "deploy"}
    base.update(extra)
    parts = []
    for k, v in base.items():
        parts.append(f'{k}="{v}"' if isinstance(v, str) else f"{k}={v}")
    return " ".join(parts)


def _app(root: Path) -> Path:
    """clients/ with the fault mod: what every SuperNode of this federation runs."""
    app = root / "app"
    shutil.copytree(REPO / "clients", app, ignore=shutil.ignore_patterns("__pycache__", "*.fab"))
    shutil.copy(Path(__file__).with_name("faulty_site.py"), app / "ovseg_fl" / "faulty_site.py")
    (app / "ovseg_fl" / "client_app.py").write_text(
        "from ovseg.integrations.flower import make_client_app\n\nfrom .faulty_site import fault_mod\n\n"
        "app = make_client_app(extra_mods=[fault_mod])\n")
    return app


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    from ovseg.data.synthetic.world import generate_world
    from ovseg.federated.split import split_world

    root = tmp_path_factory.mktemp("fed")
    world = root / "world"
    generate_world(world, seed=2, num_train=160, num_val=8, num_seg=80, shard_size=80)
    split_world(world, root / "sites", ["caption", "segmentation"], alpha=1.0, seed=0, val_fraction=0.1)
    certs = make_certs(root / "certs", "capsite", "segsite", "faulty", "intruder")
    app = _app(root)
    home = root / "flwr"
    procs: list[subprocess.Popen] = []
    mlflow_proc, uri = start_mlflow(root)
    procs.append(mlflow_proc)
    try:
        link, address = start_superlink(root, home, certs)
        procs.append(link)
        write_connection(home, "local-tls", address, certs / "ca.crt")
        for site in ("capsite", "segsite", "faulty"):
            r = flwr(home, "supernode", "register", str(certs / f"{site}.pub"), "local-tls")
            assert r.returncode == 0 and "registered successfully" in r.stdout, r.stdout + r.stderr
        nodes = {}
        for name, site, kind in (("capsite", "site-00", "caption"), ("segsite", "site-01", "segmentation"),
                                 ("faulty", "site-01", "segmentation"), ("intruder", "site-01", "segmentation")):
            conf = f'data-path="{root / "sites" / site}" data-kind="{kind}" audit-log="{root / (name + ".audit")}"'
            if name == "faulty":
                conf += " fault=1"
            nodes[name] = start_supernode(root, home, name, address, conf, certs, certs / f"{name}.key")
            procs.append(nodes[name])
        _wait_online(home, 3)
        t0 = time.time()
        # round 1, then a restart that resumes from its checkpoint for round 2: one federation of two rounds
        first = flwr(home, "run", str(app), "local-tls", "--stream", "--run-config",
                     _run_config(world, root / "runs", **{"fed.rounds": 1}), timeout=600, cwd=REPO)
        run = first
        if first.returncode == 0:
            run = flwr(home, "run", str(app), "local-tls", "--stream", "--run-config",
                       _run_config(world, root / "runs"), timeout=600, cwd=REPO)
        yield {"root": root, "home": home, "uri": uri, "first": first, "run": run, "nodes": nodes, "world": world,
               "certs": certs, "address": address, "seconds": time.time() - t0, "procs": procs, "app": app}
    finally:
        for p in reversed(procs):
            stop(p)


def _wait_online(home: Path, n: int, timeout: float = 90) -> list[dict]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = flwr(home, "supernode", "list", "local-tls", "--format", "json")
        if r.returncode == 0:
            nodes = json.loads(r.stdout).get("nodes", [])
            online = [x for x in nodes if x.get("status") == "online"]
            if len(online) >= n:
                return online
        time.sleep(1)
    raise TimeoutError(f"fewer than {n} SuperNodes came online: {r.stdout} {r.stderr}")


def _history(uri: str, run_name: str = "deploy", key: str = "zeroshot/synthetic/miou"):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("ovseg-federated")
    runs = client.search_runs([exp.experiment_id], f"tags.mlflow.runName = '{run_name}'")
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return client, runs[0], sorted((m.step, m.value) for m in client.get_metric_history(runs[0].info.run_id, key))


def _fixture_audit(federation, site: str) -> list[dict]:
    """The entries of a site's audit log that the fixture's two submissions wrote (they ran before any test;
    later tests submit runs of their own to the same sites)."""
    entries = [json.loads(x) for x in (federation["root"] / f"{site}.audit").read_text().splitlines()]
    runs = list(dict.fromkeys(e["run_id"] for e in entries))[:2]
    return [e for e in entries if e["run_id"] in runs]


def test_two_rounds_reach_mlflow_with_every_round_scored(federation):
    run = federation["run"]
    for r in (federation["first"], run):
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    client, mlrun, hist = _history(federation["uri"])
    assert [s for s, _ in hist] == [0, 1, 2]
    assert all(0.0 <= v <= 1.0 for _, v in hist)
    rid = mlrun.info.run_id
    accepted = [m.value for m in client.get_metric_history(rid, "fed/sites_accepted")]
    assert accepted == [2.0, 2.0]  # both honest sites' updates entered both rounds
    refused = [m.value for m in client.get_metric_history(rid, "fed/refused")]
    assert refused == [1.0, 1.0]  # the faulty site's, stopped at the site by its guard
    sent = client.get_metric_history(rid, "fed/bytes_received")
    assert all(m.value > 1e6 for m in sent)
    assert mlrun.data.params["fed.strategy"] == "fedavg"
    ckpts = sorted(p.name for p in (federation["root"] / "runs" / "deploy").glob("round-*.safetensors"))
    assert ckpts == ["round-0000.safetensors", "round-0001.safetensors", "round-0002.safetensors"]
    artifacts = [a.path for a in client.list_artifacts(rid, "checkpoint")]
    # each submission logs the checkpoint of the last round it was asked for
    assert artifacts == ["checkpoint/round-0001.safetensors", "checkpoint/round-0002.safetensors"]


def test_unregistered_supernode_is_refused(federation):
    log = (federation["root"] / "intruder.log").read_text()
    assert "Failed to activate SuperNode" in log
    superlink = (federation["root"] / "superlink.log").read_text()
    assert "No SuperNode found with the given public key" in superlink
    assert not (federation["root"] / "intruder.audit").exists()  # it never ran a round
    r = flwr(federation["home"], "supernode", "list", "local-tls", "--format", "json")
    assert len(json.loads(r.stdout)["nodes"]) == 3  # the registered ones


def test_sites_send_only_parameter_arrays_and_scalar_metrics(federation):
    from ovseg.config import load_config
    from ovseg.federated import build_site_model, exchange_keys

    model, cfg = build_site_model(load_config(DEPLOYED_CONFIG))  # what the sites built
    allowed = set(exchange_keys(model, cfg))
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    entries = []
    for site in ("capsite", "segsite"):
        own = _fixture_audit(federation, site)
        entries += own
        types = sorted(e["message_type"] for e in own)
        assert types == ["evaluate", "evaluate", "train", "train"], types
    for e in entries:
        assert not e["error"]
        for name, rec in e["records"].items():
            assert rec["kind"] in ("arrays", "metrics"), (name, rec["kind"])
            if rec["kind"] == "arrays":
                assert set(rec["arrays"]) == allowed  # the trainable tensors, nothing else, no text tower
                for k, a in rec["arrays"].items():
                    assert a["dtype"] == "float32" and a["shape"] == shapes[k]
            else:
                assert all(t in ("float", "int") for t in rec["values"].values()), rec["values"]


def test_a_site_that_tries_to_send_more_is_stopped_by_its_own_guard(federation):
    from faulty_site import SECRETS

    from ovseg.integrations.flower.guard import GUARD_REFUSED, SITE_FAILED

    entries = _fixture_audit(federation, "faulty")
    assert sorted(e["message_type"] for e in entries) == ["evaluate", "evaluate", "train", "train"]
    assert all(e["error"] and e["records"] == {} for e in entries)  # nothing but an error left the site
    assert {e["error_reason"] for e in entries} <= {GUARD_REFUSED, SITE_FAILED}
    # the extra array, the wrong shape and the path-named metric were refused by content; the error text replaced
    assert sum(bool(e["refused"]) for e in entries) == 3
    assert sum(e["error_reason"] == SITE_FAILED for e in entries) == 1
    seen = "".join(r.stdout + r.stderr for r in (federation["first"], federation["run"]))
    seen += (federation["root"] / "superlink.log").read_text()
    refusals = re.findall(r"\[ovseg-fl\] round \d+: refused node \d+: the site failed: the site's privacy guard", seen)
    assert len(refusals) == 2  # the server refused the faulty site's train reply in each round, with the fixed text
    assert not any(secret in seen for secret in SECRETS)


def test_secure_aggregation_reaches_the_plain_aggregate(federation):
    """Two rounds again with SecAgg+ (the faulty site drops out of each, as in the plain run): the server never
    sees one site's update, and each round's aggregate equals the plain aggregate from the same start up to the
    protocol's quantisation. Round 2 starts from SecAgg's round-1 model, which differs from the plain round 1 in
    the last digits, and local training amplifies that (about 100x here); so its plain reference is one more plain
    round resumed from SecAgg's round-1 checkpoint. (A SuperNode starts a ClientApp process per message, four per
    SecAgg+ round; the three that only exchange keys and shares import no torch, ovseg/integrations/flower/client.py.)"""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from ovseg.checkpoint import read_checkpoint
    from ovseg.config import load_config
    from ovseg.federated import build_site_model, exchange_keys

    root = federation["root"]
    t0 = time.time()
    run = flwr(federation["home"], "run", str(federation["app"]), "local-tls", "--stream", "--run-config",
               _run_config(federation["world"], root / "runs", **{"fed.run_name": "secagg", "fed.secagg": "true"}),
               timeout=600, cwd=REPO)
    seconds = time.time() - t0
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    print(f"\n[secagg] 2 rounds: {seconds:.0f} s with SecAgg+; 2 rounds without: {federation['seconds']:.0f} s (two "
          f"submissions: round 1, then a resumed round 2)")
    assert run.stdout.count("Secure aggregation completed") == 2
    model, cfg = build_site_model(load_config(DEPLOYED_CONFIG))
    keys = exchange_keys(model, cfg)

    def weights(name, rnd):
        return read_checkpoint(root / "runs" / name / f"round-{rnd:04d}.safetensors").weights

    def gap(a, b):
        return max(float((a[k] - b[k]).abs().max()) for k in keys)

    start = weights("deploy", 0)
    # each value of each site's delta is rounded to a step of 2 x clip / 2^22 (about 4e-6 at clip 8)
    step = 2 * cfg.fed.secagg_clip / 2 ** 22
    plain1, secure1 = weights("deploy", 1), weights("secagg", 1)
    assert gap(plain1, secure1) <= 2 * step
    assert gap(plain1, start) > 1e3 * step  # the round moved the model
    secure2 = weights("secagg", 2)
    assert gap(secure2, secure1) > 1e3 * step  # round 2 moved it too
    assert all(torch.isfinite(secure2[k]).all() for k in keys)
    # the plain reference for round 2: a plain submission that resumes from SecAgg's round 1 (its own folder, the
    # stored MLflow run id dropped so that it logs to a run of its own)
    ref = root / "runs" / "plain-from-secagg"
    ref.mkdir()
    for rnd in (0, 1):
        src = root / "runs" / "secagg" / f"round-{rnd:04d}.safetensors"
        with safe_open(str(src), "pt") as f:
            meta = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        state = json.loads(meta["state"])
        state.pop("mlflow_run_id", None)
        save_file(tensors, str(ref / src.name), metadata={**meta, "state": json.dumps(state)})
    run = flwr(federation["home"], "run", str(federation["app"]), "local-tls", "--stream", "--run-config",
               _run_config(federation["world"], root / "runs", **{"fed.run_name": "plain-from-secagg"}),
               timeout=600, cwd=REPO)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "resuming from" in run.stdout
    plain2 = weights("plain-from-secagg", 2)
    print(f"[secagg] largest difference to the plain aggregate from the same start: round 1 "
          f"{gap(plain1, secure1):.2e}, round 2 {gap(plain2, secure2):.2e} (quantisation step {step:.2e}); the "
          f"plain chain's round 2 differs from SecAgg's by {gap(weights('deploy', 2), secure2):.2e}")
    assert gap(plain2, secure2) <= 2 * step


def test_restarted_federation_resumes_from_its_last_round(federation):
    """The fixture's federation ran round 1, stopped, and was submitted again for 2 rounds."""
    first, second = federation["first"], federation["run"]
    assert "resuming from" not in first.stdout
    assert "resuming from" in second.stdout and "round-0001" in second.stdout
    assert "round 0: zero-shot" in first.stdout and "round 0: zero-shot" not in second.stdout  # not re-scored
    client, mlrun, hist = _history(federation["uri"])
    assert [s for s, _ in hist] == [0, 1, 2]  # round 2 added to the same MLflow run; rounds 0-1 not re-logged
    # the sites were told the federation's round (2), not the restarted invocation's own count (1)
    faulty = _fixture_audit(federation, "faulty")
    assert [e["refused"] != [] for e in faulty if e["message_type"] == "evaluate"] == [True, False]


def test_killed_supernode_does_not_stop_the_federation(federation):
    root, home = federation["root"], federation["home"]
    # one round after the kill is enough to show the federation goes on (each further round could wait out the
    # round timeout for the dead site: CI minutes)
    cfg = _run_config(federation["world"], root / "runs", **{"fed.run_name": "survivor", "fed.min_sites": 1,
                                                            "fed.round_timeout": 60.0, "fed.rounds": 1})
    log_path = root / "survivor.out"
    proc = subprocess.Popen([str(BIN / "flwr"), "run", str(federation["app"]), "local-tls", "--stream",
                             "--run-config", cfg],
                            env=flower_env(home), cwd=REPO, start_new_session=True,
                            stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 240
        while "round 0: zero-shot" not in log_path.read_text():
            assert time.time() < deadline and proc.poll() is None, log_path.read_text()[-3000:]
            time.sleep(0.5)
        stop(federation["nodes"]["segsite"])  # the segmentation site goes away while the run is live
        proc.wait(timeout=600)
    finally:
        stop(proc)
    out = log_path.read_text()
    assert proc.returncode == 0, out[-3000:]
    _, _, hist = _history(federation["uri"], "survivor")
    assert [s for s, _ in hist] == [0, 1]
