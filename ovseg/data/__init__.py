"""Every way data enters ovseg: caption shards and the CC4M entity pipeline, cross-image pairing,
segmentation shards, the zero-shot benchmark readers, and the generated synthetic world.

- ``entities``: the paper's 100-word vocabulary on 73 entities, one spaCy-based matcher for filtering,
  masking and pairing.
- ``captions`` (+ ``caption_sample``, ``shards``, ``pairing``): the streaming webdataset loader.
- ``prepare``: ``platform/prepare_captions.py`` (keep captions that name an entity, annotate, pair).
- ``segshards``: the labelled-shard format for partner sites (writer, converter, reader).
- ``benchmarks`` (+ ``benchmark_classes``, ``coco_object``): VOC, Context, COCO-Object, ADE20K readers.
- ``synthetic`` (+ ``synthetic_shapes``, ``synthetic_world``): the embedded default world.
"""
