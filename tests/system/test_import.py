import subprocess
import sys


def test_core_import_pulls_no_framework():
    code = ("import sys, ovseg, ovseg.train.engine, ovseg.losses, ovseg.eval.segment, ovseg.eval.metrics, ovseg.checkpoint;"
            "bad = [m for m in ('ray', 'flwr', 'mlflow') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_no_platform_package_shadows_stdlib():
    import pathlib
    import platform

    root = pathlib.Path(__file__).resolve().parents[2]
    assert not (root / "platform" / "__init__.py").exists()
    assert hasattr(platform, "python_version")


def test_the_client_app_imports_no_tensor_library():
    """The SuperNode starts a ClientApp process per message; SecAgg+'s key and unmasking stages must not pay
    torch's import (the model is imported by the train and evaluate actions that use it)."""
    import pathlib

    clients = pathlib.Path(__file__).resolve().parents[2] / "clients"
    code = ("import sys, ovseg_fl.client_app, ovseg.federated.wire;"
            "print([m for m in ('torch', 'timm', 'transformers') if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=clients)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_the_lazy_public_names_resolve():
    code = ("import ovseg, ovseg.federated as f, ovseg.integrations.flower as fl;"
            "from ovseg import build_model, segment, Config; from ovseg.federated import exchange_keys;"
            "print([(m.__name__, n) for m in (ovseg, f, fl) for n in m.__all__ if not hasattr(m, n) or n not in dir(m)])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr
