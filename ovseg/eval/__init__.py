"""Zero-shot evaluation: segmentation protocol, class-name text bank, mIoU, the evaluate-and-log path, pictures.

    segment.py    class names -> per-pixel labels (GroupViT / OVSegmentor protocol)
    textbank.py   class-name embeddings cached by their caller, never stale
    metrics.py    streaming, mergeable confusion-matrix mIoU
    evaluate.py   one benchmark -> EvalResult (confusion, per-class table, comparison panels)
    report.py     evaluate_and_log: the one path pretraining, the Flower server and platform/evaluate.py share
    visualize.py  palette PNGs, overlays with a legend, enlarged comparison panels
"""
