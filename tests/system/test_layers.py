"""Import direction between the layers, read from the source with ``ast`` (nothing is imported to check it).

* Only ``ovseg/integrations/`` and ``ovseg/tracking.py`` may import Ray, Flower or MLflow: the core (models,
  losses, data, the training loop, evaluation) runs without those services.
* Nothing in the ``ovseg`` package imports the scripts and apps around it (``platform/``, ``clients/``,
  ``tuning/``, ``bench/``, ``tests/``): they depend on the package, never the other way round.
* ``platform/`` holds scripts, not a package: ``platform/__init__.py`` would shadow the standard library's
  ``platform`` module for everything run from the repository root.

Every module file under ``ovseg/`` is checked (the tree is walked), imports at module level and inside
functions alike, plus ``importlib.import_module("...")`` / ``__import__("...")`` with a literal name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "ovseg"
MODULES = sorted(PACKAGE.rglob("*.py"))
SERVICES = {"ray", "flwr", "mlflow"}
SERVICE_HOMES = ("ovseg/integrations/", "ovseg/tracking.py")
OUTER = ("platform", "clients", "tuning", "bench", "tests")


def imports(source: str, module: str) -> list[tuple[int, str]]:
    """(line, absolute dotted name) of every import in ``source``; ``module`` is its dotted name (for the
    relative ones). ``from a import b`` yields ``a.b`` (b may be a module)."""
    package = module.split(".")
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against this module's package
                base = ".".join(package[: len(package) - node.level] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found += [(node.lineno, f"{base}.{alias.name}" if alias.name != "*" else base) for alias in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
            if name in ("import_module", "__import__"):
                found.append((node.lineno, node.args[0].value))
    return found


def _outer_names() -> dict[str, str]:
    """Top-level import names that can only mean one of the outer folders: the folder itself when it is a
    package, and each script or package inside it (the folders put on sys.path when they run)."""
    names = {d: d for d in OUTER if (REPO / d / "__init__.py").is_file()}
    for d in OUTER:
        for p in (REPO / d).iterdir() if (REPO / d).is_dir() else ():
            if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file():
                names.setdefault(p.stem, f"{d}/{p.name}")
    return names


def test_the_walk_sees_the_package():
    rel = {p.relative_to(REPO).as_posix() for p in MODULES}
    assert {"ovseg/__init__.py", "ovseg/config/tree.py", "ovseg/tracking.py", "ovseg/train/engine.py"} <= rel
    assert any(r.startswith("ovseg/integrations/") for r in rel) and any(r.startswith("ovseg/models/") for r in rel)


def test_the_import_reader_finds_every_form():
    src = ("import os, ray.train as rt\nfrom flwr.app import Message\nfrom . import sibling\n"
           "from ..data import synthetic\nimport importlib\n"
           "def f():\n    import mlflow\n    from pretrain import main\n    return importlib.import_module('tuning.sweep')\n"
           "class C:\n    def m(self):\n        __import__('bench')\n")
    assert sorted(imports(src, "ovseg.eval.metrics")) == [
        (1, "os"), (1, "ray.train"), (2, "flwr.app.Message"), (3, "ovseg.eval.sibling"), (4, "ovseg.data.synthetic"),
        (5, "importlib"), (7, "mlflow"), (8, "pretrain.main"), (9, "tuning.sweep"), (12, "bench")]
    home = " belongs in ovseg/integrations/ or ovseg/tracking.py)"
    assert set(_violations("ovseg/eval/metrics.py", src)) == {
        "ovseg/eval/metrics.py:1 imports ray.train (ray" + home,
        "ovseg/eval/metrics.py:2 imports flwr.app.Message (flwr" + home,
        "ovseg/eval/metrics.py:7 imports mlflow (mlflow" + home,
        "ovseg/eval/metrics.py:8 imports pretrain.main (from platform/pretrain.py)",
        "ovseg/eval/metrics.py:9 imports tuning.sweep (from tuning/)",
        "ovseg/eval/metrics.py:12 imports bench (from bench/)",
    }
    # the homes of the services may import them; the standard library's platform module is not the folder
    assert _violations("ovseg/integrations/ray_tune.py", "import ray\nfrom mlflow import log_metric\n") == []
    assert _violations("ovseg/tracking.py", "import mlflow\n") == []
    assert _violations("ovseg/config.py", "import platform\nplatform.system()\n") == []


def _violations(rel: str, source: str) -> list[str]:
    module = rel[:-3].replace("/", ".").removesuffix(".__init__")
    service_home = rel.startswith(SERVICE_HOMES[0]) or rel == SERVICE_HOMES[1]
    outer = _outer_names()
    out = []
    for line, name in imports(source, module):
        top = name.split(".")[0]
        if top in SERVICES and not service_home:
            out.append(f"{rel}:{line} imports {name} ({top} belongs in {' or '.join(SERVICE_HOMES)})")
        elif top == "platform" and name.count(".") and name.split(".")[1] in outer \
                and outer[name.split(".")[1]].startswith("platform/"):
            out.append(f"{rel}:{line} imports {name} (from platform/)")
        elif top in OUTER and top != "platform":
            out.append(f"{rel}:{line} imports {name} (from {top}/)")
        elif top in outer and top not in OUTER:
            out.append(f"{rel}:{line} imports {name} (from {outer[top]})")
    return sorted(out)


@pytest.mark.parametrize("path", MODULES, ids=[p.relative_to(REPO).as_posix() for p in MODULES])
def test_module_imports_point_inward(path):
    rel = path.relative_to(REPO).as_posix()
    bad = _violations(rel, path.read_text())
    assert not bad, "\n".join(bad)


def test_platform_is_not_a_package():
    assert (REPO / "platform").is_dir()
    assert not (REPO / "platform" / "__init__.py").exists(), \
        "platform/__init__.py exists: it would shadow the standard library's platform module"
