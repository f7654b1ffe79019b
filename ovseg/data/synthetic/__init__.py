"""The synthetic world: ``shapes`` (class silhouettes, textures, backgrounds), ``scene`` (one image, its mask and
caption) and ``world`` (writing caption shards, segmentation shards and a val split; where a config's world lives)."""
