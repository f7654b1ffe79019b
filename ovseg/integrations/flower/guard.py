"""Client mods: the privacy guard (only parameters and scalar metrics leave a site) and DP clipping."""

from __future__ import annotations

import json
import logging

from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode

from ...federated.wire import BF16_WIRE

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


def privacy_violations(content: RecordDict) -> list[str]:
    """Anything an outgoing site message must not carry: only float arrays and numeric metrics may leave."""
    bad = []
    for name, record in content.items():
        if isinstance(record, ArrayRecord):
            for k, a in record.items():
                if a.dtype not in ("float32", BF16_WIRE):
                    bad.append(f"{name}/{k}: array dtype {a.dtype} (only float32 / bfloat16 parameters may leave)")
        elif isinstance(record, MetricRecord):
            for k, v in record.items():
                if not isinstance(v, (int, float)) or isinstance(v, bool):
                    bad.append(f"{name}/{k}: metric of type {type(v).__name__}")
        else:
            bad.append(f"{name}: a {type(record).__name__} (only ArrayRecord and MetricRecord may leave a site)")
    return bad


def privacy_guard_mod(msg: Message, context: Context, call_next) -> Message:
    """Outermost client mod: refuse to send anything but parameter arrays and scalar metrics, and keep error
    texts (which may name files, keys or captions) at the site, sending only the exception's type; optionally
    append a description of every outgoing message to the node's ``audit-log`` file."""
    try:
        reply = call_next(msg, context)
    except Exception as e:  # noqa: BLE001 - an error text may name the site's files: it stays in the site's log
        log.exception("the site's %s action failed", msg.metadata.message_type)
        reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                              reason=f"the site failed with {type(e).__name__}; details stay in the site's log"),
                        reply_to=msg)
    if not reply.has_error():
        bad = privacy_violations(reply.content)
        if bad:
            log.error("privacy guard: refusing to send %s", bad)
            reply = Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION,
                                  reason="privacy guard refused the reply (see the site's log)"), reply_to=msg)
    audit = context.node_config.get("audit-log")
    if audit:
        entry = {"message_type": reply.metadata.message_type, "error": reply.has_error(),
                 "records": {} if reply.has_error() else describe(reply.content)}
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
