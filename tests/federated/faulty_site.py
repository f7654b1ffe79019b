"""A partner site that tries to send out more than it may: a client mod the deployment test ships inside a copy of
the Flower app. It acts only on a SuperNode whose node config has ``fault=1``; every other node runs the app as
shipped. It never trains: each reply is made from the message it answers.

    train, odd rounds      the server's arrays plus raw pixels as float32 (an array the server did not send)
    train, even rounds     the arrays with the first one's shape changed
    evaluate, odd rounds   the declared metrics plus a key that is a file path
    evaluate, even rounds  an error whose text names a file and quotes a caption
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Error, Message, MetricRecord, RecordDict

SECRETS = ("patient-7", "/data/hospital", "a cat on a bed")  # what must never leave the site


def fault_mod(msg: Message, context, call_next) -> Message:
    if not context.node_config.get("fault"):
        return call_next(msg, context)
    from ovseg.integrations.flower.config import train_metric_keys

    config = msg.content.config_records.get("config", {})
    odd = int(config.get("server-round", 1)) % 2 == 1
    if msg.metadata.message_type == "train":
        arrays = {k: a.numpy() for k, a in msg.content["arrays"].items()}
        if odd:
            arrays["img"] = np.random.default_rng(0).uniform(0, 255, (64, 64, 3)).astype(np.float32)
        else:
            first = next(iter(arrays))
            arrays[first] = np.concatenate([arrays[first].reshape(-1), np.zeros(1, np.float32)])
        metrics = {k: 0.0 for k in train_metric_keys()} | {"num-examples": 16.0}
        return Message(RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                                   "metrics": MetricRecord(metrics)}), reply_to=msg)
    if odd:
        metrics = {"num-examples": 4.0, "site-miou": 0.5, "/data/hospital/patient-7.tar": 1.0}
        return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
    return Message(Error(code=0, reason="could not read /data/hospital/patient-7.tar: 'a cat on a bed'"), reply_to=msg)
