"""Zero-shot evaluation: named protocols, segmentation, class-name text bank, mIoU, the evaluate-and-log path,
the benchmark table, pictures.

    protocols.py  the named protocols (groupvit, tcl): every value of each, and which value wins (resolve)
    segment.py    class names -> per-pixel labels under a protocol's settings
    pamr.py       pixel-adaptive mask refinement of class score maps (Araslanov and Roth 2020)
    textbank.py   class-name embeddings cached by their caller, never stale
    metrics.py    streaming, mergeable confusion-matrix mIoU
    evaluate.py   one benchmark -> EvalResult (confusion, per-class table, comparison panels)
    report.py     evaluate_and_log: the one path pretraining, the Flower server and platform/evaluate.py share
    table.py      a suite of benchmarks (the eight-benchmark table) -> one row with its average, cell metrics
    visualize.py  palette PNGs, overlays with a legend, enlarged comparison panels
"""
