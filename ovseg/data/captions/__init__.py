"""Caption shards: ``loader`` (streaming, shuffling, pairing, batching), ``sample`` (one shard sample -> tensors,
skip reasons), ``transforms`` (image augmentation per stage), ``entities`` (vocabulary and matcher), ``pairing``
(cross-image partners) and ``prepare`` (the offline entity tool that filters and annotates shards)."""
