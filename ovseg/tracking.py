"""Experiment tracking: one small interface, MLflow behind it, a null tracker for non-zero ranks.

Training must never stop because the tracking server is down: every MLflow call goes through ``_safe``,
which reports the first failure once (with the URI) and then turns the tracker into a no-op.
The default store is a SQLite file in the working directory (``sqlite:///<cwd>/mlflow.db``) that
``mlflow ui --backend-store-uri sqlite:///mlflow.db`` opens; ``MLFLOW_TRACKING_URI`` overrides it.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


class NullTracker:
    """What ranks other than 0 (and runs with tracking off) get: every call does nothing."""

    run_id: str | None = None

    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_text(self, text: str, artifact_file: str) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def log_image(self, image, artifact_file: str) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def close(self, status: str = "FINISHED") -> None: ...


class MlflowTracker(NullTracker):
    def __init__(self, experiment: str, run_name: str | None = None, tracking_uri: str | None = None,
                 run_id: str | None = None, parent_run_id: str | None = None, tags: dict[str, str] | None = None):
        self.uri = tracking_uri or default_tracking_uri()
        self.enabled = True
        self.run_id = None
        self._client = None
        self._safe(self._start, experiment, run_name, run_id, parent_run_id, tags or {})

    def _start(self, experiment, run_name, run_id, parent_run_id, tags):
        from mlflow.tracking import MlflowClient

        if self.uri.startswith(("http://", "https://")):
            _probe(self.uri)  # fail in seconds, not after MLflow's minutes of retries
        self._client = MlflowClient(tracking_uri=self.uri)
        if run_id:  # a resumed training run continues its own MLflow run
            self.run_id = run_id
            return
        exp = self._client.get_experiment_by_name(experiment)
        if exp is None:
            artifacts = None
            if self.uri.startswith("sqlite:///"):  # keep artifacts beside the local database, not in the cwd
                artifacts = (Path(self.uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
            exp_id = self._client.create_experiment(experiment, artifact_location=artifacts)
        else:
            exp_id = exp.experiment_id
        if parent_run_id:
            tags = {**tags, "mlflow.parentRunId": parent_run_id}
        self.run_id = self._client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id

    def _safe(self, fn, *args):
        """Run one MLflow call (attribute access included: pass a lambda); disable tracking on failure."""
        if not self.enabled:
            return None
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001 - any tracking failure must leave training running
            self.enabled = False
            log.warning("MLflow tracking at %s failed (%s: %s); training goes on without tracking",
                        self.uri, e.__class__.__name__, e)
            print(f"[ovseg] MLflow tracking at {self.uri} is unreachable ({e.__class__.__name__}); "
                  "training goes on without tracking", flush=True)
            return None

    def log_params(self, params):
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        self._safe(lambda: [self._client.log_batch(self.run_id, params=items[i:i + 100])
                            for i in range(0, len(items), 100)])

    def log_metrics(self, metrics, step):
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, int(step)) for k, v in metrics.items() if _finite(v)]
        if items:
            self._safe(lambda: self._client.log_batch(self.run_id, items))

    def log_text(self, text, artifact_file):
        self._safe(lambda: self._client.log_text(self.run_id, text, artifact_file))

    def log_artifact(self, path, artifact_path=None):
        self._safe(lambda: self._client.log_artifact(self.run_id, str(path), artifact_path))

    def log_image(self, image, artifact_file):
        def _log():
            with tempfile.TemporaryDirectory() as tmp:
                target = Path(tmp) / Path(artifact_file).name
                image.save(target)
                parent = str(Path(artifact_file).parent)
                self._client.log_artifact(self.run_id, str(target), None if parent == "." else parent)
        self._safe(_log)

    def set_tags(self, tags):
        self._safe(lambda: [self._client.set_tag(self.run_id, k, v) for k, v in tags.items()])

    def close(self, status="FINISHED"):
        if self.run_id:
            self._safe(lambda: self._client.set_terminated(self.run_id, status))


def _probe(uri: str, timeout: float = 5.0) -> None:
    import urllib.request

    with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as resp:
        if resp.status != 200:
            raise ConnectionError(f"{uri}/health answered {resp.status}")


def _finite(v) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False
