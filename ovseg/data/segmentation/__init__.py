"""Segmentation shards of partner sites: ``shards`` (the format: writer, benchmark converter, reader) and
``batches`` (training batches with class prompts and captions, and a site's labelled evaluation split)."""
