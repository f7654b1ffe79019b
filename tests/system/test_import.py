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
