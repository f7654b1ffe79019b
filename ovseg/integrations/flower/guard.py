"""Client mods: the privacy guard (only the announced parameters and the declared metrics leave a site) and DP
clipping."""

from __future__ import annotations

import json
import logging

from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode

from ...federated.wire import BF16_WIRE
from .config import ARRAYS, EVAL_METRICS, METRICS, train_metric_keys
from .replies import announced_arrays, array_violations, record_layout, scalar_metrics
from .secagg import is_secagg, secagg_violations

log = logging.getLogger("ovseg.flower")


def describe(content: RecordDict) -> dict:
    """What a message carries, without its values: record kinds, array dtypes/shapes, metric value types."""
    out = {}
    for name, record in content.items():
        if isinstance(record, ArrayRecord):
            out[name] = {"kind": "arrays", "arrays": {k: {"dtype": a.dtype, "shape": list(a.shape), "stype": a.stype}
                                                      for k, a in record.items()}}
        elif isinstance(record, MetricRecord):
            out[name] = {"kind": "metrics", "values": {k: type(v).__name__ for k, v in record.items()}}
        elif isinstance(record, ConfigRecord):
            out[name] = {"kind": "config", "values": {k: type(v).__name__ for k, v in record.items()}}
        else:
            out[name] = {"kind": type(record).__name__}
    return out


# what a site's reply may carry back, by the message type it answers (replies.py holds the rules)
REPLY_RECORDS = {"train": {ARRAYS: ArrayRecord, METRICS: MetricRecord}, "evaluate": {METRICS: MetricRecord}}
WIRE_DTYPES = ("float32", BF16_WIRE)
# the only texts an error reply carries out of a site: fixed, whatever the site's exception said
SITE_FAILED = "the site's app failed; the details stay in the site's log"
GUARD_REFUSED = "the site's privacy guard refused the reply; the details stay in the site's log"


def privacy_violations(content: RecordDict, message_type: str = "train",
                       announced: dict[str, tuple[int, ...]] | None = None) -> list[str]:
    """Everything in an outgoing reply beyond what may leave: for a train reply, the arrays the server sent
    (``announced``: names and shapes) in a parameter dtype and exactly the declared train metrics; for an
    evaluate reply, exactly the declared evaluate metrics. Finite numbers only; no other record."""
    expected = REPLY_RECORDS.get(message_type)
    if expected is None:
        return [f"a reply to a {message_type!r} message (sites answer only train and evaluate)"]
    bad = []
    reason = record_layout(content, expected)
    if reason is not None:
        bad.append(reason)
    for name, record in content.items():
        if isinstance(record, ArrayRecord) and name in expected:
            bad += [f"{name}: {b}" for b in array_violations(record, announced or {}, WIRE_DTYPES)]
        elif isinstance(record, MetricRecord) and name in expected:
            keys = train_metric_keys() if message_type == "train" else EVAL_METRICS
            _, reason = scalar_metrics(record, keys)
            if reason is not None:
                bad.append(f"{name}: {reason}")
    return bad


def _fixed_error(msg: Message, code: int, reason: str) -> Message:
    return Message(Error(code=code, reason=reason), reply_to=msg)


def privacy_guard_mod(msg: Message, context: Context, call_next) -> Message:
    """Outermost client mod: send only what ``privacy_violations`` allows, and error replies with a fixed text
    (an exception's message may name the site's files or quote its captions: it stays in the site's log).
    With ``audit-log`` in the node config, every outgoing reply is described (the Flower run it answers, record
    kinds, array names, dtypes and shapes, metric keys; never values) in that JSON-lines file, with what was
    refused and why."""
    refused: list[str] = []
    secagg, message_type = is_secagg(msg), msg.metadata.message_type  # before the mods below rewrite msg
    announced = announced_arrays(msg.content) if message_type == "train" else {}
    try:
        reply = call_next(msg, context)
    except Exception:  # noqa: BLE001 - the text stays here
        log.exception("the site's %s action failed", message_type)
        reply = _fixed_error(msg, ErrorCode.CLIENT_APP_RAISED_EXCEPTION, SITE_FAILED)
    if reply.has_error():
        if reply.error.reason not in (SITE_FAILED, GUARD_REFUSED):
            log.error("the site's %s action replied with an error: %s", message_type,
                      reply.error.reason)
            reply = _fixed_error(msg, ErrorCode.CLIENT_APP_RAISED_EXCEPTION, SITE_FAILED)
    else:  # under SecAgg+ the plain update was checked before it was masked (secagg._delta_reply)
        refused = (secagg_violations(reply.content) if secagg else
                   privacy_violations(reply.content, message_type, announced))
        if refused:
            log.error("privacy guard: refusing to send the %s reply: %s", message_type, refused)
            reply = _fixed_error(msg, ErrorCode.MOD_FAILED_PRECONDITION, GUARD_REFUSED)
    audit = context.node_config.get("audit-log")
    if audit:
        entry = {"run_id": msg.metadata.run_id, "message_type": message_type, "error": reply.has_error(),
                 "error_code": reply.error.code if reply.has_error() else None,
                 "error_reason": reply.error.reason if reply.has_error() else None,
                 "records": {} if reply.has_error() else describe(reply.content), "refused": refused}
        with open(str(audit), "a") as f:
            f.write(json.dumps(entry) + "\n")
    return reply


def dp_clipping_mod(msg: Message, context: Context, call_next) -> Message:
    """Flower's client-side fixed clipping, applied when the server's strategy asks for it."""
    from flwr.clientapp.mod import fixedclipping_mod
    from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

    conf = next(iter(msg.content.config_records.values()), {})
    if KEY_CLIPPING_NORM in conf:
        return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)
