"""ServerApp: central zero-shot mIoU each round, MLflow (step = round), checkpoints, malformed updates refused."""

from ovseg.integrations.flower import make_server_app

app = make_server_app()
