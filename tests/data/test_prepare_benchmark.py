"""platform/prepare_benchmark.py and its converters on tiny hand-made raw downloads, in their real layouts.

Every expected label is worked by hand from the cited id tables (mmseg coco_stuff164k.py, GroupViT's
convert_coco_object.py, cityscapesScripts labels.py, mmseg pascal_context.py with the Detail API's class mask);
the RLE strings are encoded by hand from cocoapi maskApi.c's rules (worked in the comments).
"""

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ovseg.data.benchmarks.convert import prepare_benchmark
from ovseg.data.benchmarks.registry import build_benchmark
from ovseg.data.benchmarks.rle import counts_from_string, decode_rle

ROOT = Path(__file__).resolve().parents[2]


def script():
    spec = importlib.util.spec_from_file_location("prepare_benchmark_script", ROOT / "platform/prepare_benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _image(path, size=(2, 3), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), 90, np.uint8)).save(path, fmt)


def _label(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.array(rows, np.uint8)).save(path)


def _read(path):
    return np.array(Image.open(path)).astype(int)


def _files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_rle_strings_decode_as_worked_by_hand():
    # 40 -> groups 8 (+0x20: more) and 1: chars 48+40 'X', 48+1 '1'. The 4th count is stored as its difference to
    # the 2nd: 20 - 40 = -20 -> low group 12 (+0x20) '\\', then 31 with the sign bit 0x10: 'O'.
    assert counts_from_string("3X11\\O") == [3, 40, 1, 20]
    assert counts_from_string("1231") == [1, 2, 3, 3]  # the 4th count: 3 = 1 + the 2nd (2)
    # runs go down the columns: 1 zero, 2 ones | 3 zeros | 3 ones
    np.testing.assert_array_equal(decode_rle({"size": [3, 3], "counts": "1231"}),
                                  np.array([[0, 0, 1], [1, 0, 1], [1, 0, 1]], bool))
    big = decode_rle({"size": [8, 8], "counts": "3X11\\O"})  # 3 zeros, 40 ones, 1 zero, 20 ones
    expected = np.ones((8, 8), bool)
    expected[0:3, 0] = False  # column 0, rows 0-2
    expected[3, 5] = False    # pixel 43 = column 5, row 3
    np.testing.assert_array_equal(big, expected)
    np.testing.assert_array_equal(decode_rle({"size": [2, 2], "counts": [0, 1, 2, 1]}),
                                  np.array([[1, 0], [0, 1]], bool))  # the uncompressed (list) form
    for counts, message in (("1a!", "hold '!' at position 2"), ("X", "end inside a number"),
                            ("123", "cover 6 pixels, but the mask is 3x3"), ("M6", "negative run length")):
        with pytest.raises(ValueError, match=message):
            decode_rle({"size": [3, 3], "counts": counts}, "ann 7")
    with pytest.raises(ValueError, match="ann 7: expected an RLE mask"):
        decode_rle([[0, 0, 1, 1]], "ann 7")  # a polygon is not an RLE


def _coco_raw(root):
    base = root / "coco_stuff164k"
    for sid in ("000000000139", "000000000285", "000000000632"):
        _image(base / "images" / "val2017" / f"{sid}.jpg")
    _label(base / "annotations" / "val2017" / "000000000139.png", [[0, 12, 91], [181, 255, 66]])
    _label(base / "annotations" / "val2017" / "000000000285.png", [[156, 156, 0], [0, 255, 255]])
    _label(base / "annotations" / "val2017" / "000000000632.png", [[11, 0, 0], [0, 0, 0]])   # 11: no COCO id
    _label(base / "annotations" / "val2017" / "000000000724.png", [[0, 0, 0], [0, 0, 0]])    # no image
    return base


def test_coco_stuff_and_coco_object_from_the_stuff_maps(tmp_path, capsys):
    base = _coco_raw(tmp_path / "raw")
    raw_before = _files(tmp_path / "raw")
    summary = prepare_benchmark("coco_stuff", tmp_path / "raw", tmp_path / "data")
    assert summary["splits"]["val2017"] == {"samples": 4, "written": 2, "replaced": 0, "kept": 0, "skipped": 2,
                                            "images_placed": 2}
    assert [(s["file"].endswith(f), r in s["reason"]) for s, f, r in zip(
        summary["skipped"], ("000000000632.png", "000000000724.png"), ("values [11]", "does not exist"))] \
        == [(True, True), (True, True)]
    assert "skipped" in capsys.readouterr().err
    # 0-based COCO ids -> trainIds: things lose the unused ids below them (12 -> 11, 66 -> 60), stuff s -> s - 11
    out = tmp_path / "data" / "coco_stuff164k"
    np.testing.assert_array_equal(_read(out / "annotations/val2017/000000000139_labelTrainIds.png"),
                                  [[0, 11, 80], [170, 255, 60]])
    np.testing.assert_array_equal(_read(out / "annotations/val2017/000000000285_labelTrainIds.png"),
                                  [[145, 145, 0], [0, 255, 255]])
    assert summary["classes_seen"]["val2017"] == {"banner": 1, "dining table": 1, "person": 2, "sky-other": 1,
                                                  "stop sign": 1, "wood": 1}
    assert json.loads((tmp_path / "data" / "summary.json").read_text()) == summary
    src, dst = base / "images/val2017/000000000139.jpg", out / "images/val2017/000000000139.jpg"
    assert os.stat(src).st_ino == os.stat(dst).st_ino  # the image is hard-linked, not copied
    bench = build_benchmark("coco_stuff", tmp_path / "data")
    assert [s for s, _, _ in bench.items] == ["000000000139", "000000000285"] and bench[1][1][0, 0] == 145

    written = _files(tmp_path / "data")
    again = prepare_benchmark("coco_stuff", tmp_path / "raw", tmp_path / "data")  # resumes: keeps what exists
    assert again["splits"]["val2017"]["kept"] == 2 and again["splits"]["val2017"]["written"] == 0
    assert {k: v for k, v in _files(tmp_path / "data").items() if k != "summary.json"} == \
        {k: v for k, v in written.items() if k != "summary.json"}
    assert prepare_benchmark("coco_stuff", tmp_path / "raw", tmp_path / "data",
                             overwrite=True)["splits"]["val2017"]["replaced"] == 2

    # COCO-Object in place (OUT = RAW): things -> 1..80, stuff and unlabelled -> 0 background
    obj = prepare_benchmark("coco_object", base, base)
    assert obj["splits"]["val2017"]["written"] == 2 and obj["splits"]["val2017"]["images_placed"] == 0
    np.testing.assert_array_equal(_read(base / "annotations/val2017/000000000139_instanceTrainIds.png"),
                                  [[1, 12, 0], [0, 0, 61]])
    np.testing.assert_array_equal(_read(base / "annotations/val2017/000000000285_instanceTrainIds.png"),
                                  [[0, 0, 1], [1, 0, 0]])
    with pytest.raises(FileNotFoundError, match="000000000632_instanceTrainIds.png"):
        build_benchmark("coco_object", base)  # in place, a skipped sample's image stays: the reader names it
    after = _files(tmp_path / "raw")
    assert {k: after[k] for k in raw_before} == raw_before  # no raw file changed or went missing
    assert sorted(set(after) - set(raw_before)) == [
        "coco_stuff164k/annotations/val2017/000000000139_instanceTrainIds.png",
        "coco_stuff164k/annotations/val2017/000000000285_instanceTrainIds.png", "coco_stuff164k/summary.json"]


def test_cityscapes_label_ids_to_train_ids(tmp_path, monkeypatch):
    base = tmp_path / "cityscapes"
    for city, sid, rows in (("aachen", "aachen_000000_000019", [[0, 7, 8], [26, 33, 1]]),
                            ("bremen", "bremen_000001_000019", [[7, 34, 7], [7, 7, 7]])):  # 34: no Cityscapes id
        _image(base / "leftImg8bit" / "val" / city / f"{sid}_leftImg8bit.png", fmt="PNG")
        _label(base / "gtFine" / "val" / city / f"{sid}_gtFine_labelIds.png", rows)
    _label(base / "gtFine" / "val" / "aachen" / "aachen_000000_000019_gtFine_instanceIds.png", [[0, 0, 0]] * 2)
    def no_links(src, dst):
        raise OSError("Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)  # OUT on another file system: the image is copied instead
    summary = prepare_benchmark("cityscapes", base, tmp_path / "data")
    assert summary["splits"]["val"]["written"] == 1 and summary["splits"]["val"]["skipped"] == 1
    assert "values [34]" in summary["skipped"][0]["reason"]
    label = tmp_path / "data/cityscapes/gtFine/val/aachen/aachen_000000_000019_gtFine_labelTrainIds.png"
    # labels.py: unlabeled 0 -> 255, road 7 -> 0, sidewalk 8 -> 1, car 26 -> 13, bicycle 33 -> 18, ego vehicle 1 -> 255
    np.testing.assert_array_equal(_read(label), [[255, 0, 1], [13, 18, 255]])
    assert summary["classes_seen"]["val"] == {"bicycle": 1, "car": 1, "road": 1, "sidewalk": 1}
    bench = build_benchmark("cityscapes", tmp_path / "data")  # the skipped sample was left out, image and all
    assert len(bench) == 1 and bench[0][1][1, 1] == 18 and bench.image_path(0).suffix == ".png"
    src = base / "leftImg8bit/val/aachen/aachen_000000_000019_leftImg8bit.png"
    assert bench.image_path(0).read_bytes() == src.read_bytes()
    assert os.stat(bench.image_path(0)).st_ino != os.stat(src).st_ino
    assert sorted(p.name for p in (tmp_path / "data").rglob("*") if p.is_file()) == [
        "aachen_000000_000019_gtFine_labelTrainIds.png", "aachen_000000_000019_leftImg8bit.png", "summary.json"]


def _detail_json(path):
    images = [{"image_id": 2008000001, "file_name": "2008_000001.jpg", "height": 3, "width": 3, "phase": "val"},
              {"image_id": 2008000002, "file_name": "2008_000002.jpg", "height": 3, "width": 3, "phase": "val"},
              {"image_id": 2008000003, "file_name": "2008_000003.jpg", "height": 3, "width": 3, "phase": "val"},
              {"image_id": 2008000004, "file_name": "2008_000004.jpg", "height": 3, "width": 3, "phase": "val"},
              {"image_id": 2008000005, "file_name": "2008_000005.jpg", "height": 3, "width": 3, "phase": "train"}]
    anns = [{"id": 1, "image_id": 2008000001, "category_id": 2, "segmentation": {"size": [3, 3], "counts": "1231"}},
            {"id": 2, "image_id": 2008000001, "category_id": 284,  # painted over the first at pixel (0, 0)
             "segmentation": {"size": [3, 3], "counts": [0, 1, 8]}},
            {"id": 3, "image_id": 2008000002, "category_id": 3,    # 'air conditioner': not one of the 59
             "segmentation": {"size": [3, 3], "counts": [0, 9]}},
            {"id": 4, "image_id": 2008000004, "category_id": 2, "segmentation": {"size": [3, 3], "counts": "12"}},
            {"id": 5, "image_id": 2008000005, "category_id": 2, "segmentation": {"size": [3, 3], "counts": [0, 9]}}]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annos_segmentation": anns, "categories": []}))


def test_context_from_the_detail_json(tmp_path):
    voc = tmp_path / "raw" / "VOCdevkit" / "VOC2010"
    _detail_json(voc / "trainval_merged.json")
    for i in (1, 2, 4, 5):  # 2008_000003 has no JPEG
        _image(voc / "JPEGImages" / f"2008_00000{i}.jpg", size=(3, 3))
    summary = prepare_benchmark("context60", tmp_path / "raw", tmp_path / "data")
    assert summary["splits"] == {"val": {"samples": 4, "written": 1, "replaced": 0, "kept": 0, "skipped": 3,
                                         "images_placed": 1}}
    reasons = {Path(s["file"]).name.split("#")[1]: s["reason"] for s in summary["skipped"]}
    assert "category ids [3]" in reasons["2008_000002.jpg"] and "does not exist" in reasons["2008_000003.jpg"]
    assert "RLE runs cover 3 pixels" in reasons["2008_000004.jpg"]
    out = tmp_path / "data" / "VOCdevkit" / "VOC2010"
    # 459-class ids -> rank among the 60 sorted ids: 0 -> 0, aeroplane 2 -> 1, person 284 -> 37
    np.testing.assert_array_equal(_read(out / "SegmentationClassContext/2008_000001.png"),
                                  [[37, 0, 1], [1, 0, 1], [1, 0, 1]])
    assert (out / "ImageSets/SegmentationContext/val.txt").read_text() == "2008_000001\n"
    assert not (out / "SegmentationClassContext/2008_000005.png").exists()  # train is not asked for
    assert summary["classes_seen"]["val"] == {"airplane": 1, "background": 1, "person": 1}
    c60, c59 = build_benchmark("context60", tmp_path / "data"), build_benchmark("context59", tmp_path / "data")
    assert c60.class_names[37] == "person" and len(c60) == len(c59) == 1
    np.testing.assert_array_equal(c59[0][1], [[36, 255, 0], [0, 255, 0], [0, 255, 0]])

    both = prepare_benchmark("context59", tmp_path / "raw", tmp_path / "data", splits=("val", "train"))
    assert both["splits"]["train"]["written"] == 1 and both["splits"]["val"]["kept"] == 1
    assert (out / "ImageSets/SegmentationContext/train.txt").read_text() == "2008_000005\n"
    (voc / "trainval_merged.json").write_text('{"images": []}')
    with pytest.raises(ValueError, match="not in the Detail format"):
        prepare_benchmark("context60", tmp_path / "raw", tmp_path / "data")


def test_command_user_mistakes_are_one_line_and_exit_2(tmp_path, capsys):
    main = script().main
    assert main(["coco_stuff", str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "prepare_benchmark: error: coco_stuff: raw folder" in err and "nowhere" in err
    assert main(["kitti", str(tmp_path), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no converter for 'kitti'; choose one of cityscapes, coco_object" in err
    (tmp_path / "raw").mkdir()
    assert main(["cityscapes", str(tmp_path / "raw"), str(tmp_path / "out")]) == 2
    assert "gtFine/val does not exist" in capsys.readouterr().err
    _coco_raw(tmp_path)
    assert main(["coco_object", str(tmp_path), str(tmp_path / "out"), "--splits", "test2017"]) == 2
    assert "unknown split(s) ['test2017']" in capsys.readouterr().err
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "summary.json").write_text('{"mine": 1}')  # a user's file is never replaced
    assert main(["coco_object", str(tmp_path), str(tmp_path / "out")]) == 2
    assert "not written by prepare_benchmark" in capsys.readouterr().err
    assert (tmp_path / "out" / "summary.json").read_text() == '{"mine": 1}'
    (tmp_path / "out" / "summary.json").unlink()
    assert main(["coco_object", str(tmp_path), str(tmp_path / "out")]) == 1  # ran; two samples were skipped
    printed = capsys.readouterr()
    assert "val2017: samples 4, written 2" in printed.out and "skipped 2 sample(s)" in printed.out
    assert printed.err.count("coco_object: skipped") == 2
