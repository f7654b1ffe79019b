"""Splitting a small synthetic world into 32 sites (bench/fl_sites.py's largest federation): every site holds
data, every sample lands in exactly one site, and federation.json counts what the shards hold."""

from __future__ import annotations

import json
import tarfile


def _keys(folder):
    """Sample keys of every tar under ``folder``, read with the standard library (not ovseg's reader)."""
    keys = []
    for shard in sorted(folder.rglob("*.tar")):
        with tarfile.open(shard) as t:
            names = [m.name for m in t.getmembers()]
        keys += sorted({n.split(".", 1)[0] for n in names})
    return keys


def test_a_small_world_splits_into_32_non_empty_sites(tmp_path):
    from ovseg.config import load_config
    from ovseg.data.synthetic.world import generate_world, world_config
    from ovseg.federated.split import split_world

    world = tmp_path / "world"
    generate_world(world, seed=0, num_train=160, num_val=1, num_seg=96, config=world_config(load_config("debug")))
    kinds = ["caption", "segmentation"] * 16
    manifest = split_world(world, tmp_path / "sites", kinds, alpha=2.0, seed=0, val_fraction=0.1)

    assert [s["name"] for s in manifest["sites"]] == [f"site-{i:02d}" for i in range(32)]
    assert json.loads((tmp_path / "sites" / "federation.json").read_text()) == manifest
    for kind, split in (("caption", "train"), ("segmentation", "seg")):
        held = []
        for s in (s for s in manifest["sites"] if s["kind"] == kind):
            folder = tmp_path / "sites" / s["name"]
            keys = _keys(folder)
            assert keys, f"{s['name']} is empty"
            assert json.loads((folder / "site.json").read_text()) == {"kind": kind}
            assert s["train"] + s["val"] == len(keys) and sum(s["classes"].values()) == s["train"]
            held += keys
        world_keys = _keys(world / split)
        assert sorted(held) == sorted(world_keys) and len(set(held)) == len(held)  # each sample once

