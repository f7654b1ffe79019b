"""Segmentation shards: round trip, webdataset compatibility, and every kind of bad input skipped and counted."""

import io
import json
import tarfile

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from ovseg.data.segmentation.shards import SegSample, SegShardDataset, iter_seg_shards, write_seg_shards
from ovseg.data.shardio import SkipCounter, write_tar

CLASSES = ["background", "cat", "dog"]


def _png(arr, mode):
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format="PNG")
    return buf.getvalue()


def _sample(key, rng, h=20, w=30, classes=CLASSES):
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    label = rng.integers(0, len(classes), (h, w))
    label[0, :3] = 255
    return SegSample(key=key, image=image, label=label, class_names=classes, image_ext="png")


def test_round_trip_exact_and_sharded(tmp_path):
    rng = np.random.default_rng(0)
    samples = [_sample(f"s{i}", rng) for i in range(5)]
    paths = write_seg_shards(samples, tmp_path, shard_size=2)
    assert [p.name for p in paths] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in paths]  # no temp files left
    counter = SkipCounter()
    out = list(iter_seg_shards(str(tmp_path / "shard-{000000..000002}.tar"), counter))
    assert counter.total == 0
    assert [o[3] for o in out] == [s.key for s in samples]
    for (image, label, classes, _), s in zip(out, samples):
        assert image.dtype == np.uint8 and label.dtype == np.int64
        np.testing.assert_array_equal(image, s.image)  # PNG: lossless
        np.testing.assert_array_equal(label, s.label)
        assert classes == CLASSES


def test_sixteen_bit_labels_and_custom_ignore(tmp_path):
    classes = [f"c{i}" for i in range(200)]
    label = np.array([[0, 199, 17], [0, 1, 1000]])  # ignore 1000 needs a 16-bit PNG
    write_seg_shards([SegSample("big", label, classes, image=np.zeros((2, 3, 3), np.uint8), image_ext="png",
                                ignore_index=1000)], tmp_path)
    with tarfile.open(tmp_path / "shard-000000.tar") as tar:
        assert Image.open(tar.extractfile("big.seg.png")).mode.startswith("I")
    (_, got, _, _), = iter_seg_shards(str(tmp_path / "shard-000000.tar"))
    np.testing.assert_array_equal(got, [[0, 199, 17], [0, 1, 255]])  # ignore 1000 -> 255


def test_readable_by_webdataset(tmp_path):
    write_seg_shards([_sample("a", np.random.default_rng(1))], tmp_path)
    (sample,) = list(wds.WebDataset(str(tmp_path / "shard-000000.tar"), shardshuffle=False))
    assert sample["__key__"] == "a" and {"png", "seg.png", "json"} <= set(sample)
    assert json.loads(sample["json"]) == {"classes": CLASSES, "ignore_index": 255}


def test_writer_rejects_bad_samples_naming_them(tmp_path):
    rng = np.random.default_rng(2)
    bad = _sample("oops", rng)
    bad.label[1, 1] = 3
    with pytest.raises(ValueError, match="sample oops.*3"):
        write_seg_shards([bad], tmp_path / "a")
    with pytest.raises(ValueError, match="no '.'"):
        write_seg_shards([_sample("a.b", rng)], tmp_path / "b")
    with pytest.raises(ValueError, match="twice"):
        write_seg_shards([_sample("k", rng), _sample("k", rng)], tmp_path / "c")
    mismatch = _sample("m", rng)
    mismatch.label = mismatch.label[:10]
    with pytest.raises(ValueError, match="sample m"):
        write_seg_shards([mismatch], tmp_path / "d")


def test_failed_write_leaves_only_whole_shards(tmp_path):
    rng = np.random.default_rng(3)
    samples = [_sample(f"s{i}", rng) for i in range(3)]
    samples[2].label[0, 0] = 9
    with pytest.raises(ValueError):
        write_seg_shards(samples, tmp_path, shard_size=2)
    assert [p.name for p in tmp_path.iterdir()] == ["shard-000000.tar"]


def test_bad_samples_are_skipped_and_counted_by_reason(tmp_path):
    rng = np.random.default_rng(4)
    img = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    good_label = np.zeros((4, 5), np.uint8)
    meta = json.dumps({"classes": CLASSES, "ignore_index": 255}).encode()
    good = lambda k: [(f"{k}.png", _png(img, "RGB")), (f"{k}.seg.png", _png(good_label, "L")), (f"{k}.json", meta)]
    oob = good_label.copy()
    oob[2, 2] = 3
    members = (good("ok1")
               + [("badimg.jpg", b"\xff\xd8not a jpeg"), ("badimg.seg.png", _png(good_label, "L")), ("badimg.json", meta)]
               + [("nomask.png", _png(img, "RGB")), ("nomask.json", meta)]
               + [("badmask.png", _png(img, "RGB")), ("badmask.seg.png", b"\x89PNG garbage"), ("badmask.json", meta)]
               + [("size.png", _png(img, "RGB")), ("size.seg.png", _png(good_label[:3], "L")), ("size.json", meta)]
               + [("oob.png", _png(img, "RGB")), ("oob.seg.png", _png(oob, "L")), ("oob.json", meta)]
               + [("nometa.png", _png(img, "RGB")), ("nometa.seg.png", _png(good_label, "L"))]
               + [("badmeta.png", _png(img, "RGB")), ("badmeta.seg.png", _png(good_label, "L")), ("badmeta.json", b"{")]
               + [("noimg.seg.png", _png(good_label, "L")), ("noimg.json", meta)]
               + [("rgbmask.png", _png(img, "RGB")), ("rgbmask.seg.png", _png(img, "RGB")), ("rgbmask.json", meta)]
               + good("ok2"))
    write_tar(tmp_path / "mixed.tar", members)
    counter = SkipCounter()
    keys = [s[3] for s in iter_seg_shards(str(tmp_path / "mixed.tar"), counter)]
    assert keys == ["ok1", "ok2"]
    assert counter.as_dict() == {"corrupt_image": 1, "missing_mask": 1, "corrupt_mask": 2, "size_mismatch": 1,
                                 "label_out_of_range": 1, "missing_meta": 1, "corrupt_meta": 1, "missing_image": 1}
    assert any("mixed.tar:oob" in m and "[3]" in m for m in counter.examples)


def test_truncated_and_unreadable_shards(tmp_path):
    rng = np.random.default_rng(5)
    samples = [_sample(f"s{i}", rng, h=40, w=40) for i in range(6)]
    (path,) = write_seg_shards(samples, tmp_path / "full")
    data = path.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.tar").write_bytes(b"this is not a tar file at all" * 40)
    counter = SkipCounter()
    out = list(iter_seg_shards([str(cut), str(tmp_path / "missing.tar"), str(tmp_path / "junk.tar"), str(path)], counter))
    keys = [o[3] for o in out]
    n_kept = len(keys) - 6
    assert 1 <= n_kept < 6 and keys[:n_kept] == [s.key for s in samples[:n_kept]]  # a prefix survives
    assert keys[n_kept:] == [s.key for s in samples]  # later shards are still read
    assert counter.as_dict() == {"truncated_tar": 1, "unreadable_shard": 2}


def test_dataset_splits_shards_across_ranks(tmp_path):
    rng = np.random.default_rng(6)
    write_seg_shards([_sample(f"s{i}", rng) for i in range(6)], tmp_path, shard_size=1)
    pattern = str(tmp_path / "shard-{000000..000005}.tar")
    seen = []
    for rank in range(2):
        ds = SegShardDataset(pattern, rank=rank, world_size=2)
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=0)
        seen.append([key for _, _, _, key in loader])
    assert seen == [["s0", "s2", "s4"], ["s1", "s3", "s5"]]
    with pytest.raises(ValueError, match="no segmentation shards"):
        SegShardDataset([])
    assert isinstance(tarfile.open(tmp_path / "shard-000000.tar"), tarfile.TarFile)


def test_cut_between_members_is_detected(tmp_path):
    rng = np.random.default_rng(7)
    samples = [_sample(f"s{i}", rng) for i in range(3)]
    (path,) = write_seg_shards(samples, tmp_path / "full")
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    cut_at = members[4].offset  # header of s1's mask: s1 has its image only
    cut = tmp_path / "cut.tar"
    cut.write_bytes(path.read_bytes()[:cut_at])
    counter = SkipCounter()
    assert [o[3] for o in iter_seg_shards(str(cut), counter)] == ["s0"]
    assert counter.as_dict() == {"truncated_tar": 1}
