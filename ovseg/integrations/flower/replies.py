"""What a site's reply may hold, checked one site at a time: the server refuses a bad reply (naming the site and
the reason) and the round goes on with the others; the site's privacy guard applies the same rules to what it
sends.

A train reply holds exactly two records: ``arrays`` (the exchange set the server sent, same names and shapes, in
the federation's transport dtype) and ``metrics`` (exactly ``train_metric_keys()``, finite numbers, an example
count in (0, ``max_examples``]). An evaluate reply holds exactly ``metrics`` with ``EVAL_METRICS``.
"""

from __future__ import annotations

import math

from flwr.app import ArrayRecord, MetricRecord, RecordDict

from .config import ARRAYS, EVAL_METRICS, METRICS


def record_layout(content: RecordDict, expected: dict[str, type]) -> str | None:
    """None when ``content`` holds exactly the named records of the given kinds, else what is wrong."""
    names = sorted(content.keys())
    if names != sorted(expected):
        return f"the reply holds records {names}, expected exactly {sorted(expected)}"
    for name, kind in expected.items():
        if not isinstance(content[name], kind):
            return f"record {name!r} is a {type(content[name]).__name__}, expected a {kind.__name__}"
    return None


def scalar_metrics(record: MetricRecord, keys: tuple[str, ...]) -> tuple[dict[str, float] | None, str | None]:
    """(the values as floats, None) when ``record`` holds exactly ``keys``, each a finite int or float;
    else (None, the reason)."""
    got = set(record.keys())
    if got != set(keys):
        missing, extra = sorted(set(keys) - got), sorted(got - set(keys))
        return None, f"metric keys: missing {missing[:3]}, unexpected {extra[:3]}"
    out = {}
    for k in keys:
        v = record[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return None, f"metric {k!r} is a {type(v).__name__}, expected a number"
        if not math.isfinite(float(v)):
            return None, f"metric {k!r} is {v} (not finite)"
        out[k] = float(v)
    return out, None


def check_train_metrics(content: RecordDict, keys: tuple[str, ...], max_examples: int
                        ) -> tuple[dict[str, float] | None, str | None]:
    """A train reply's layout and metrics (see the module doc); the arrays are checked by ``check_update``."""
    reason = record_layout(content, {ARRAYS: ArrayRecord, METRICS: MetricRecord})
    if reason is not None:
        return None, reason
    metrics, reason = scalar_metrics(content[METRICS], keys)
    if reason is not None:
        return None, reason
    n = metrics["num-examples"]
    if not 0 < n <= max_examples:
        return None, (f"num-examples {n:g} is outside (0, {max_examples}]: one round uses at most "
                      f"fed.local_steps x fed.local_batch examples")
    return metrics, None


def check_evaluate_reply(content: RecordDict) -> tuple[dict[str, float] | None, str | None]:
    """An evaluate reply: exactly one ``metrics`` record with ``EVAL_METRICS``, a count >= 0, mIoU in [0, 1]."""
    reason = record_layout(content, {METRICS: MetricRecord})
    if reason is not None:
        return None, reason
    metrics, reason = scalar_metrics(content[METRICS], EVAL_METRICS)
    if reason is not None:
        return None, reason
    if metrics["num-examples"] < 0 or not 0.0 <= metrics["site-miou"] <= 1.0:
        return None, f"num-examples {metrics['num-examples']:g} < 0 or site-miou {metrics['site-miou']:g} not in [0, 1]"
    return metrics, None


def announced_arrays(content: RecordDict) -> dict[str, tuple[int, ...]]:
    """The names and shapes of the tensors a server's train message carries: all a site may send back."""
    record = content.get(ARRAYS)
    if not isinstance(record, ArrayRecord):
        return {}
    return {k: tuple(a.shape) for k, a in record.items()}


def array_violations(record: ArrayRecord, announced: dict[str, tuple[int, ...]], dtypes: tuple[str, ...]
                     ) -> list[str]:
    """What an outgoing ArrayRecord holds beyond the announced tensors (names, shapes) in an allowed dtype."""
    bad = []
    extra = sorted(set(record.keys()) - set(announced))
    if extra:
        bad.append(f"{len(extra)} array(s) the server did not send")
    for k, a in record.items():
        if k in announced and tuple(a.shape) != announced[k]:
            bad.append(f"an array of shape {list(a.shape)} where the server sent {list(announced[k])}")
        if a.dtype not in dtypes:
            bad.append(f"an array of dtype {a.dtype} (allowed: {list(dtypes)})")
    missing = set(announced) - set(record.keys())
    if missing:
        bad.append(f"{len(missing)} announced array(s) missing")
    return bad
