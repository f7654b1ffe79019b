"""The benchmark table: a suite of benchmarks scored under one protocol, printed as one row with its average and
logged cell by cell (``platform/evaluate.py --suite eight --protocol tcl --data-root /data``).

The ``eight`` suite is the table papers after OVSegmentor compare on (TCL, CVPR 2023, and its successors;
anchors.md section 1): VOC21, PC60, COCO-Object (with a background class), VOC20, PC59, COCO-Stuff-171,
Cityscapes, ADE20K-150 (without). The suites are ``ovseg.data.benchmarks.registry.SUITES``, each benchmark in
its usual folder under the data root (the registry's ``folder``, as ``suite_specs`` spells them out); a suite
may also be a comma-separated list of benchmark names.

A benchmark of the suite that cannot be read (no reader registered, or its data is not under the root) is an
error naming every missing one; with ``skip_missing`` its cell is '-', the average is over the others, and a
note says so (such an average is not comparable with a published eight-benchmark one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# column labels of the published table (anchors.md, "Benchmark naming")
COLUMNS = {"voc": "VOC21", "context60": "PC60", "coco_object": "Obj", "voc20": "VOC20", "context59": "PC59",
           "coco_stuff": "Stuff", "cityscapes": "City", "ade20k": "ADE"}


def suite_names(suite: str) -> tuple[str, ...]:
    """A named suite's benchmarks, or those of a comma-separated list (canonical names, in the given order)."""
    from ..data.benchmarks.registry import ALIASES, SUITES

    if suite in SUITES:
        names = SUITES[suite]
    elif "," in suite:
        names = tuple(n.strip() for n in suite.split(",") if n.strip())
    else:
        raise ValueError(f"unknown suite {suite!r}; choose one of {', '.join(SUITES)}, or list benchmarks separated "
                         "by commas (e.g. voc,context60,ade20k)")
    names = tuple(ALIASES.get(n, n) for n in names)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"suite {suite!r} must name each benchmark once, got {list(names)}")
    return names


def spec_for(name: str, root: str | Path) -> str:
    """``name=path`` for benchmark ``name`` in its usual folder under the data root (the root itself for one
    without a usual folder, e.g. a synthetic world's ``val``), as ``registry.suite_specs`` places them."""
    from ..data.benchmarks.registry import REGISTRY

    folder = REGISTRY[name].folder
    return f"{name}={Path(root) / folder if folder else Path(root)}"


@dataclass
class SuitePlan:
    """What a suite scores: the benchmarks found (``specs``) and the ones that cannot be (name -> why)."""

    suite: str
    names: tuple[str, ...]
    specs: list[str]
    missing: dict[str, str] = field(default_factory=dict)

    def cells(self, metrics: dict[str, float]) -> dict[str, float | None]:
        """Benchmark name -> mIoU (a fraction), None for a missing benchmark."""
        return {n: (None if n in self.missing else metrics[f"zeroshot/{n}/miou"]) for n in self.names}

    def table(self, metrics: dict[str, float], label: str) -> str:
        """The row of ``label`` (the protocol) as a Markdown table, mIoU in %, and the average of its cells."""
        cells = self.cells(metrics)
        present = [v for v in cells.values() if v is not None]
        avg = sum(present) / len(present) if present else None
        heads = ["protocol", *(COLUMNS.get(n, n) for n in self.names), "Avg"]
        row = [label, *("-" if v is None else f"{100 * v:.1f}" for v in cells.values()),
               "-" if avg is None else f"{100 * avg:.1f}"]
        widths = [max(len(h), len(r)) for h, r in zip(heads, row)]
        lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(heads, widths)) + " |",
                 "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                 "| " + " | ".join(r.ljust(w) for r, w in zip(row, widths)) + " |"]
        if self.missing:
            lines.append(f"note: the average is over {len(present)} of {len(self.names)} benchmarks; not scored: "
                         + "; ".join(f"{n} ({why})" for n, why in self.missing.items()))
        return "\n".join(lines)

    def metrics(self, metrics: dict[str, float], label: str) -> dict[str, float]:
        """``table/<label>/<column>`` for every scored cell and ``table/<label>/avg`` (fractions, as the
        ``zeroshot/*/miou`` metrics): one metric per benchmark and protocol."""
        cells = {COLUMNS.get(n, n): v for n, v in self.cells(metrics).items() if v is not None}
        out = {f"table/{label}/{col}": v for col, v in cells.items()}
        if cells:
            out[f"table/{label}/avg"] = sum(cells.values()) / len(cells)
        return out


def plan_suite(suite: str, root: str | Path, *, skip_missing: bool = False) -> SuitePlan:
    """Find every benchmark of ``suite`` under ``root``; a missing one is an error naming all that are missing
    (``skip_missing``: left out of the plan, with its reason)."""
    from ..data.benchmarks.registry import REGISTRY, build_benchmark

    if not Path(root).is_dir():
        raise FileNotFoundError(f"--data-root {root} does not exist")
    names = suite_names(suite)
    specs, missing = [], {}
    for name in names:
        if name not in REGISTRY:
            missing[name] = "no reader for it is registered in this ovseg"
            continue
        spec = spec_for(name, root)
        try:
            build_benchmark(name, spec.partition("=")[2])
        except (FileNotFoundError, ValueError) as exn:
            missing[name] = str(exn)
            continue
        specs.append(spec)
    if missing and not skip_missing:
        raise ValueError(f"suite {suite!r}: {len(missing)} of {len(names)} benchmarks cannot be read from {root}: "
                         + "; ".join(f"{n}: {why}" for n, why in missing.items())
                         + " (--skip-missing scores the others and prints '-')")
    if not specs:
        raise ValueError(f"suite {suite!r}: none of its benchmarks {list(names)} can be read from {root}")
    return SuitePlan(suite, names, specs, missing)


def protocol_label(settings) -> str:
    """The protocol a table row was scored under, as a metric-name part: ``tcl``, ``tcl_pamr``, ``groupvit``."""
    return settings.protocol + ("_pamr" if settings.pamr else "")
