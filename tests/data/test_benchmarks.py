"""Benchmark readers on tiny trees written in each dataset's exact layout, remaps checked by hand."""

import numpy as np
import pytest
from PIL import Image

from ovseg.data import codecs
from ovseg.data.benchmarks.coco_object import coco_stuff_to_object
from ovseg.data.benchmarks.convert import prepare_benchmark
from ovseg.data.benchmarks.registry import build_benchmark
from ovseg.data.segmentation.shards import benchmark_to_seg_shards, iter_seg_shards
from ovseg.data.shardio import SkipCounter

H, W = 20, 30


def _jpg(path, seed=0, size=(H, W)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)


def _label(path, values, palette=False, size=(H, W)):
    """A label PNG whose pixels cycle through ``values`` (every value present)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.resize(np.array(values, np.uint8), size[0] * size[1]).reshape(size)
    img = Image.fromarray(arr)
    if palette:
        img = img.convert("P")
        img.putpalette(codecs.palette(ignore=None).ravel().tolist())
    img.save(path)
    return arr


def _voc_tree(root, values=(0, 1, 11, 15, 20, 255), year="VOC2012", labels="SegmentationClass",
              sets="Segmentation"):
    base = root / "VOCdevkit" / year
    raws = {}
    for i, sid in enumerate(["2007_000032", "2007_000039", "2008_000001"]):
        _jpg(base / "JPEGImages" / f"{sid}.jpg", i)
        raws[sid] = _label(base / labels / f"{sid}.png", values, palette=True)
    (base / "ImageSets" / sets).mkdir(parents=True)
    (base / "ImageSets" / sets / "val.txt").write_text("2007_000032\n2008_000001\n")  # 039 is not in val
    return base, raws


def test_voc_reads_with_overrides_from_any_root_level(tmp_path):
    base, raws = _voc_tree(tmp_path)
    for root in (tmp_path, tmp_path / "VOCdevkit", base):
        bench = build_benchmark("voc", root)
        assert len(bench) == 2 and bench.has_background and bench.bg_thresh == 0.95
        assert len(bench.class_names) == 21
        assert [bench.class_names[i] for i in (0, 1, 11, 16, 20)] == ["background", "aeroplane", "table", "plant", "monitor"]
        image, label, sid = bench[1]
        assert sid == "2008_000001" and image.shape == (H, W, 3) and image.dtype == np.uint8
        assert label.dtype == np.int64
        np.testing.assert_array_equal(label, raws[sid])  # palette index = class id, 255 kept


def test_voc20_drops_background(tmp_path):
    _voc_tree(tmp_path)
    bench = build_benchmark("voc20", tmp_path)
    assert len(bench.class_names) == 20 and not bench.has_background and bench.bg_thresh is None
    _, label, _ = bench[0]
    expected = {0: 255, 1: 0, 11: 10, 15: 14, 20: 19, 255: 255}  # worked by hand
    np.testing.assert_array_equal(label, np.vectorize(expected.get)(_voc_tree_values(label.shape)))


def _voc_tree_values(shape, values=(0, 1, 11, 15, 20, 255)):
    return np.resize(np.array(values), shape[0] * shape[1]).reshape(shape)


def test_context60_and_context59(tmp_path):
    _voc_tree(tmp_path, values=(0, 1, 40, 55, 59), year="VOC2010", labels="SegmentationClassContext",
              sets="SegmentationContext")
    c60 = build_benchmark("context", tmp_path)
    assert len(c60.class_names) == 60 and c60.bg_thresh == 0.35
    # mmseg order is alphabetical by the original names; the renames keep each position.
    mmseg = ("aeroplane bag bed bedclothes bench bicycle bird boat book bottle building bus cabinet car cat ceiling "
             "chair cloth computer cow cup curtain dog door fence floor flower food grass ground horse keyboard light "
             "motorbike mountain mouse person plate platform pottedplant road rock sheep shelves sidewalk sign sky snow "
             "sofa table track train tree truck tvmonitor wall water window wood").split()
    renamed = {"aeroplane": "airplane", "pottedplant": "plant", "tvmonitor": "monitor"}
    assert c60.class_names == ["background"] + [renamed.get(n, n) for n in mmseg]
    _, label60, _ = c60[0]
    c59 = build_benchmark("context59", tmp_path)
    assert len(c59.class_names) == 59 and c59.class_names[0] == "airplane" and c59.bg_thresh is None
    _, label59, _ = c59[0]
    assert set(np.unique(label60)) == {0, 1, 40, 55, 59}
    assert {(a, b) for a, b in zip(label60.ravel(), label59.ravel())} == {(0, 255), (1, 0), (40, 39), (55, 54), (59, 58)}
    assert c59.class_names[39] == "plant" and c59.class_names[54] == "monitor"


def test_coco_stuff_to_object_by_hand():
    raw = np.array([[0, 1, 10, 12, 26], [66, 89, 91, 181, 255]], np.uint8)
    expected = np.array([[1, 2, 11, 12, 25], [61, 80, 0, 0, 0]], np.uint8)
    np.testing.assert_array_equal(coco_stuff_to_object(raw), expected)
    with pytest.raises(ValueError, match=r"\[11, 200\]"):
        coco_stuff_to_object(np.array([[11, 200]]), "x.png")


def test_coco_object_conversion_and_reader(tmp_path):
    root = tmp_path / "coco_stuff164k"
    _jpg(root / "images" / "val2017" / "000000000139.jpg")
    _label(root / "annotations" / "val2017" / "000000000139.png", (0, 66, 91, 255))
    assert prepare_benchmark("coco_object", root, root)["splits"]["val2017"]["written"] == 1
    assert prepare_benchmark("coco_object", root, root)["splits"]["val2017"]["kept"] == 1  # resumable
    bench = build_benchmark("coco_object", tmp_path)
    assert len(bench.class_names) == 81 and bench.bg_thresh == 0.9
    assert bench.class_names[1] == "person" and bench.class_names[61] == "dining table"
    assert bench.class_names[80] == "toothbrush"
    _, label, sid = bench[0]
    assert sid == "000000000139" and set(np.unique(label)) == {0, 1, 61}
    _jpg(root / "images" / "val2017" / "000000000285.jpg")
    with pytest.raises(FileNotFoundError, match="000000000285_instanceTrainIds.png"):
        build_benchmark("coco_object", root)
    _label(root / "annotations" / "val2017" / "bad.png", (11,))
    skipped = prepare_benchmark("coco_object", root, root, report=lambda line: None)["skipped"]
    assert skipped[0]["file"].endswith("bad.png") and "values [11]" in skipped[0]["reason"]  # named, counted


def test_ade20k_reduce_zero_label(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    _jpg(root / "images" / "validation" / "ADE_val_00000001.jpg")
    _label(root / "annotations" / "validation" / "ADE_val_00000001.png", (0, 1, 8, 150))
    bench = build_benchmark("ade20k", tmp_path)
    assert len(bench.class_names) == 150 and not bench.has_background and bench.bg_thresh is None
    assert bench.class_names[:3] == ["wall", "building", "sky"] and bench.class_names[7] == "bed "
    _, label, _ = bench[0]
    assert set(np.unique(label)) == {255, 0, 7, 149}
    _label(root / "annotations" / "validation" / "ADE_val_00000001.png", (0, 151))
    with pytest.raises(ValueError, match=r"ADE_val_00000001.png has values \[151\]"):
        bench[0]


def test_malformed_trees_name_the_problem(tmp_path):
    base, _ = _voc_tree(tmp_path)
    with pytest.raises(ValueError, match="unknown benchmark"):
        build_benchmark("kitti", tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_benchmark("voc", tmp_path / "nowhere")
    (base / "JPEGImages" / "2008_000001.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="2008_000001.jpg"):
        build_benchmark("voc", tmp_path)
    _jpg(base / "JPEGImages" / "2008_000001.jpg", size=(H + 1, W))
    bench = build_benchmark("voc", tmp_path)
    with pytest.raises(ValueError, match=r"SegmentationClass/2008_000001.png is 30x20 .* 30x21"):
        bench[1]
    _label(base / "SegmentationClass" / "2007_000032.png", (0, 30))
    with pytest.raises(ValueError, match=r"2007_000032.png has values \[30\]"):
        bench[0]
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(base / "SegmentationClass" / "2007_000032.png")
    with pytest.raises(ValueError, match="single-channel"):
        bench[0]
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("\n")
    with pytest.raises(ValueError, match="lists no image ids"):
        build_benchmark("voc", tmp_path)
    (base / "ImageSets" / "Segmentation" / "val.txt").unlink()
    with pytest.raises(FileNotFoundError, match="val.txt"):
        build_benchmark("voc", tmp_path)
    with pytest.raises(FileNotFoundError, match="SegmentationClassContext|VOC2010|JPEGImages"):
        build_benchmark("context60", tmp_path)
    with pytest.raises(FileNotFoundError, match="class_names.txt"):
        build_benchmark("synthetic", tmp_path)


def test_benchmark_to_seg_shards_copies_images_and_remaps(tmp_path):
    base, raws = _voc_tree(tmp_path / "data")
    bench = build_benchmark("voc20", tmp_path / "data")
    benchmark_to_seg_shards(bench, tmp_path / "shards", shard_size=1)
    counter = SkipCounter()
    out = list(iter_seg_shards(str(tmp_path / "shards" / "shard-{000000..000001}.tar"), counter))
    assert counter.total == 0 and [o[3] for o in out] == ["2007_000032", "2008_000001"]
    for i, (image, label, classes, _) in enumerate(out):
        ref_image, ref_label, _ = bench[i]
        np.testing.assert_array_equal(image, ref_image)  # original JPEG bytes were copied, not re-encoded
        np.testing.assert_array_equal(label, ref_label)
        assert classes == bench.class_names


@pytest.mark.parametrize("pil_limit", ["default", "none"])
def test_a_huge_header_or_garbage_file_is_refused_by_name_before_decoding(tmp_path, monkeypatch, pil_limit):
    from bad_images import huge_png

    if pil_limit == "none":  # another library lifted PIL's guard: ovseg's own limit still holds
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    base, _ = _voc_tree(tmp_path)
    (base / "JPEGImages" / "2007_000032.jpg").write_bytes(huge_png(30000, 30000))  # a PNG under a .jpg name
    (base / "SegmentationClass" / "2008_000001.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    bench = build_benchmark("voc", tmp_path)
    # PIL's own guard words it in pixels; with it lifted, ovseg's check reads the header's size
    expect = "900000000 pixels" if pil_limit == "default" else "header declares 30000 x 30000 pixels"
    with pytest.raises(ValueError, match=rf"voc: image .*2007_000032.jpg: .*{expect}"):
        bench[0]
    with pytest.raises(ValueError, match=r"voc: label .*2008_000001.png: not a readable image"):
        bench[1]
    with pytest.raises(ValueError, match="no such file"):
        codecs.read_rgb_file(tmp_path / "missing.png")
    monkeypatch.setattr(codecs, "MAX_PIXELS", 600)  # the limit itself: a header at it passes, one pixel more not
    small = tmp_path / "small.png"
    small.write_bytes(huge_png(20, 30))
    with pytest.raises(ValueError, match="not a readable image"):  # the size passed; then the bad data stream
        codecs.read_rgb_file(small)
    small.write_bytes(huge_png(601, 1))
    with pytest.raises(ValueError, match="601 x 1 pixels, more than the 600"):
        codecs.read_rgb_file(small)
