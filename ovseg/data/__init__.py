"""Every way data enters ovseg, one sub-package per kind of data over one shard I/O module.

- ``shardio``: tar reading (members grouped by sample key) and atomic writing, shard URL expansion, the skip
  counter, image/label codecs and the VOC palette; every sub-package reads and writes files through it.
- ``captions``: caption shards (img2dataset layout): the streaming loader, what one sample becomes
  (``sample``, ``transforms``), the CC4M entity vocabulary and matcher, cross-image pairing, and ``prepare``
  (``platform/prepare_captions.py``: keep captions that name an entity, annotate, pair).
- ``segmentation``: the labelled-shard format of partner sites (``shards``) and its training batches and
  evaluation split (``batches``).
- ``benchmarks``: the zero-shot benchmark readers (VOC, Context, COCO-Object, ADE20K, the synthetic val
  split), one module per family, registered in ``benchmarks/__init__.py``.
- ``synthetic``: the embedded default world: drawing primitives (``shapes``), scenes and captions
  (``scene``), and writing a world to disk and finding a config's world (``world``).
"""
