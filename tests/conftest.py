"""Test settings: offline (nothing may be downloaded), small thread pools, deterministic seeds; the shared
fixtures (the debug config and model, synthetic worlds).

Tests use the ``debug`` config (ovseg/configs/debug.yaml): a model with every part of the real one at the
smallest size, never tuned, so re-tuning ``tiny`` (the embedded default recipe) changes no test. Tests that
are about the default run itself say so where they use it.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)  # `make test`: two workers, a core each

# `make test` runs the suite in two pytest-xdist workers (-n 2 --dist loadscope, scheduled below). A worker takes a
# whole module at a time (its module fixtures are set up once), except that the tests of each SHARED entry run on
# one worker, one after another, and before everything else (they are the long ones): every test that starts a
# Ray cluster ("ray": a `ray.init()` would join a cluster another test started with `ray start`), and the Flower
# deployment. A new test that starts Ray belongs in SHARED["ray"].
SHARED = {
    "flower-deploy": ("tests/federated/test_flower_deploy.py",),
    "ray": ("tests/system/test_pretrain_ray.py", "tests/system/test_sweep.py", "tests/federated/test_flower_sim.py",
            "tests/federated/test_sites.py::test_make_sites_and_simulate_commands"),
}


def shared_scope(nodeid: str) -> str | None:
    for name, prefixes in SHARED.items():
        if any(nodeid == p or nodeid.startswith(p + "::") for p in prefixes):
            return name
    return None


def pytest_collection_modifyitems(config, items):
    order = list(SHARED)
    items.sort(key=lambda item: order.index(s) if (s := shared_scope(item.nodeid)) else len(order))  # stable


def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SharedScopes(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return shared_scope(nodeid) or super()._split_scope(nodeid)

    return SharedScopes(config, log)

DEBUG = "debug"  # the config name tests build their models from


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def debug_cfg():
    """The debug configuration (frozen: safe to share)."""
    from ovseg.config import load_config

    return load_config(DEBUG)


@pytest.fixture(scope="session")
def debug_model():
    """One debug model for read-only tests (tests that train build their own)."""
    from ovseg import build_model

    return build_model(DEBUG)


@pytest.fixture(scope="session")
def make_world(tmp_path_factory):
    """``make_world(seed=..., num_train=..., num_val=..., num_seg=..., shard_size=...)`` -> the folder of a
    generated synthetic world (the generator's default 64-pixel scenes); generated once per session for each
    set of arguments. Read-only for the tests: copy or split it, never write into it."""
    from ovseg.data.synthetic.world import generate_world

    made = {}

    def make(seed=0, num_train=160, num_val=6, num_seg=0, shard_size=80):
        key = (seed, num_train, num_val, num_seg, shard_size)
        if key not in made:
            root = tmp_path_factory.mktemp("world") / "w"
            generate_world(root, seed=seed, num_train=num_train, num_val=num_val, num_seg=num_seg,
                           shard_size=shard_size)
            made[key] = root
        return made[key]

    return make


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    """A real MLflow server on loopback for one module's tests (its URI); stopped by its id afterwards."""
    from services import start_mlflow, stop

    proc, uri = start_mlflow(tmp_path_factory.mktemp("mlflow"))
    yield uri
    stop(proc)
