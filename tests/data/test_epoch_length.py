"""Epochs from the data: the epoch length of real caption shards comes from their own sample counts."""

import importlib.util
import json
import tarfile
from pathlib import Path

import pytest
from caption_shard_helpers import good_sample, make_shards, write_shard

from ovseg.config import load_config
from ovseg.data.captions.epoch import EpochLengthUnknown, epoch_batches, shard_sample_counts
from ovseg.data.captions.prepare import prepare_captions
from ovseg.train.pretrain import check_data, epoch_length

ROOT = Path(__file__).resolve().parents[2]


def members_with_image(path) -> int:
    """A second count: the keys of a tar's image members, read with tarfile."""
    with tarfile.open(path) as tar:
        return len({m.name.rsplit(".", 1)[0] for m in tar.getmembers() if m.name.endswith(".jpg")})


def test_prepare_captions_summary_counts_every_output_shard(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    captions = ["a dog on a sofa", "a view of the night sky", "two cats", "a red bus", "a horse in a field",
                "the sky at night", "a cat and a dog", "a bus and a car", "a man with an umbrella"]
    write_shard(src / "00000.tar", [good_sample(f"a{i}", c, seed=i) for i, c in enumerate(captions[:5])])
    write_shard(src / "00001.tar", [good_sample(f"b{i}", c, seed=10 + i) for i, c in enumerate(captions[5:])])
    out = tmp_path / "out"
    summary = prepare_captions(str(src), out, workers=1, shard_size=2, progress=False)
    written = json.loads((out / "summary.json").read_text())
    assert written["output_samples"] == summary["output_samples"]
    shards = sorted(out.glob("*.tar"))
    assert sorted(summary["output_samples"]) == [p.name for p in shards]
    assert summary["output_samples"] == {p.name: members_with_image(p) for p in shards}
    assert sum(summary["output_samples"].values()) == summary["kept"]
    counts = shard_sample_counts([str(p) for p in shards])
    assert counts == {str(p): members_with_image(p) for p in shards}
    # 7 kept samples (two night-sky captions name no entity), global batch 2 x 1 -> 3 batches per epoch per rank
    assert summary["kept"] == 7
    assert epoch_batches([str(p) for p in shards], batch_size=2, world_size=1) == 3
    assert epoch_batches([str(p) for p in shards], batch_size=1, world_size=2) == 3


def test_img2dataset_stats_files_give_the_counts(tmp_path):
    paths = make_shards(tmp_path / "cc", num_shards=3, per_shard=4)
    for i, path in enumerate(paths):  # img2dataset writes {shard}_stats.json beside {shard}.tar
        Path(str(path)[:-4] + "_stats.json").write_text(json.dumps({"count": 10, "successes": 4 + i}))
    counts = shard_sample_counts([str(p) for p in paths])
    assert list(counts.values()) == [4, 5, 6]
    assert epoch_batches(str(tmp_path / "cc"), batch_size=2, world_size=2) == 15 // 4


def test_a_shard_without_a_count_is_an_error_that_says_what_to_give(tmp_path):
    paths = make_shards(tmp_path / "cc", num_shards=2, per_shard=3)
    Path(str(paths[0])[:-4] + "_stats.json").write_text(json.dumps({"successes": 3}))
    with pytest.raises(EpochLengthUnknown) as err:
        shard_sample_counts([str(p) for p in paths])
    message = str(err.value)
    assert str(paths[1]) in message and "data.epoch_length" in message and "summary.json" in message
    Path(str(paths[1])[:-4] + "_stats.json").write_text(json.dumps({"successes": -1}))
    with pytest.raises(EpochLengthUnknown, match="non-negative integer"):
        shard_sample_counts([str(p) for p in paths])


def test_pretraining_takes_the_epoch_length_from_the_shards_not_the_synthetic_world(tmp_path):
    paths = make_shards(tmp_path / "cc", num_shards=2, per_shard=5)
    for path in paths:
        Path(str(path)[:-4] + "_stats.json").write_text(json.dumps({"successes": 5}))
    urls = json.dumps([str(p) for p in paths])
    cfg = load_config("debug", [f"data.train={urls}", "data.synthetic_train=100000"])
    assert epoch_length(cfg, batch=2, world_size=1) == 5
    assert epoch_length(cfg, batch=2, world_size=2) == 2
    given = load_config("debug", [f"data.train={urls}", "data.epoch_length=7"])
    assert epoch_length(given, batch=2, world_size=1) == 7
    synthetic = load_config("debug", ["data.synthetic_train=100"])
    assert epoch_length(synthetic, batch=8, world_size=2) == 100 // 16


def test_the_main_job_refuses_real_shards_without_counts_in_one_line(tmp_path, capsys):
    paths = make_shards(tmp_path / "cc", num_shards=2, per_shard=3)
    urls = json.dumps([str(p) for p in paths])
    with pytest.raises(EpochLengthUnknown, match="no sample count for shard"):
        check_data(load_config("debug", [f"data.train={urls}"]))
    check_data(load_config("debug", [f"data.train={urls}", "data.epoch_length=3"]))  # given: nothing to check
    spec = importlib.util.spec_from_file_location("pretrain_script", ROOT / "platform/pretrain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--config", "debug", f"data.train={urls}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pretrain: error: data.train: no sample count for shard")
