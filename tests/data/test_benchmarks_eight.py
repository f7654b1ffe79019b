"""The eight-benchmark table: the new readers (COCO-Stuff-171, Cityscapes) on tiny trees in their real layout,
the suite spelled out under one data root, and every class list checked against its cited source.

Expected labels are worked by hand from the sources' rules (cited in ovseg/data/benchmarks/*.py); the class-name
facts below are read from the files named beside them (TCL, SCLIP, mmsegmentation, cityscapesScripts).
"""

import numpy as np
import pytest
from PIL import Image

from ovseg.data.benchmarks.protocol_names import READER_CLASSES, protocol_class_names
from ovseg.data.benchmarks.registry import SUITES, build_benchmark, suite_names, suite_specs
from ovseg.eval.evaluate import parse_eval_sets

H, W = 8, 8


def _image(path, seed=0, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)).save(path, fmt)


def _label(path, values):
    """An 8-bit grey label PNG whose pixels cycle through ``values``; returns the array written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.resize(np.array(values, np.uint8), H * W).reshape(H, W)
    Image.fromarray(arr).save(path)
    return arr


def _cycled(values):
    return np.resize(np.array(values), H * W).reshape(H, W)


def test_coco_stuff_reads_171_train_ids(tmp_path):
    root = tmp_path / "coco_stuff164k"
    _image(root / "images" / "val2017" / "000000000139.jpg")
    _label(root / "annotations" / "val2017" / "000000000139_labelTrainIds.png", (0, 80, 145, 170, 255))
    _label(root / "annotations" / "val2017" / "000000000139.png", (3,))  # the raw map beside it is not read
    bench = build_benchmark("coco_stuff", tmp_path)
    assert len(bench) == 1 and not bench.has_background and bench.bg_thresh is None
    _, label, sid = bench[0]
    assert sid == "000000000139"
    np.testing.assert_array_equal(label, _cycled((0, 80, 145, 170, 255)))  # trainIds as stored, 255 ignored
    # mmseg mmseg/datasets/coco_stuff.py COCOStuffDataset.CLASSES: 80 things, then the 91 stuff classes
    names = bench.class_names
    assert len(names) == 171 and names[0] == "person" and names[79] == "toothbrush"
    assert [names[i] for i in (80, 84, 112, 137, 145, 157, 170)] == [
        "banner", "building-other", "grass", "road", "sky-other", "tree", "wood"]
    _label(root / "annotations" / "val2017" / "000000000139_labelTrainIds.png", (171,))
    with pytest.raises(ValueError, match=r"000000000139_labelTrainIds.png has values \[171\]"):
        bench[0]


def test_cityscapes_reads_png_images_in_city_folders(tmp_path):
    base = tmp_path / "cityscapes"
    ids = {"frankfurt": "frankfurt_000000_000294", "lindau": "lindau_000001_000019"}
    for i, (city, sid) in enumerate(ids.items()):
        _image(base / "leftImg8bit" / "val" / city / f"{sid}_leftImg8bit.png", i)
        _label(base / "gtFine" / "val" / city / f"{sid}_gtFine_labelTrainIds.png", (0, 11, 18, 255))
        _label(base / "gtFine" / "val" / city / f"{sid}_gtFine_labelIds.png", (7, 24, 33, 0))
    (base / "leftImg8bit" / "val" / "frankfurt" / "notes.jpg").write_bytes(b"not an image of the split")
    bench = build_benchmark("cityscapes", base)
    assert [s for s, _, _ in bench.items] == ["frankfurt_000000_000294", "lindau_000001_000019"]
    assert not bench.has_background and bench.bg_thresh is None
    image, label, _ = bench[1]
    assert image.shape == (H, W, 3)
    np.testing.assert_array_equal(label, _cycled((0, 11, 18, 255)))
    # mmseg mmseg/datasets/cityscapes.py = cityscapesScripts helpers/labels.py trainIds 0..18
    assert len(bench.class_names) == 19
    assert [bench.class_names[i] for i in (0, 6, 7, 11, 13, 18)] == [
        "road", "traffic light", "traffic sign", "person", "car", "bicycle"]
    (base / "gtFine" / "val" / "lindau" / "lindau_000001_000019_gtFine_labelTrainIds.png").unlink()
    with pytest.raises(FileNotFoundError, match="lindau_000001_000019_gtFine_labelTrainIds.png"):
        build_benchmark("cityscapes", tmp_path)
    _image(base / "leftImg8bit" / "val" / "zurich" / "frankfurt_000000_000294_leftImg8bit.png")
    with pytest.raises(ValueError, match="share the id 'frankfurt_000000_000294'"):
        build_benchmark("cityscapes", tmp_path)
    with pytest.raises(ValueError, match=r"no \*_leftImg8bit.png images"):
        (tmp_path / "empty" / "cityscapes" / "leftImg8bit" / "val").mkdir(parents=True)
        (tmp_path / "empty" / "cityscapes" / "gtFine" / "val").mkdir(parents=True)
        build_benchmark("cityscapes", tmp_path / "empty")


def _eight_tree(root):
    """One data root in the mmseg folder layout holding a one-image fixture of each of the eight benchmarks."""
    for year, labels, sets, values in (("VOC2012", "SegmentationClass", "Segmentation", (0, 1, 20, 255)),
                                       ("VOC2010", "SegmentationClassContext", "SegmentationContext", (0, 1, 59))):
        base = root / "VOCdevkit" / year
        _image(base / "JPEGImages" / "2008_000002.jpg")
        _label(base / labels / "2008_000002.png", values)
        (base / "ImageSets" / sets).mkdir(parents=True)
        (base / "ImageSets" / sets / "val.txt").write_text("2008_000002\n")
    coco = root / "coco_stuff164k"
    _image(coco / "images" / "val2017" / "000000000285.jpg")
    _label(coco / "annotations" / "val2017" / "000000000285_instanceTrainIds.png", (0, 1, 80))
    _label(coco / "annotations" / "val2017" / "000000000285_labelTrainIds.png", (0, 170, 255))
    _image(root / "cityscapes" / "leftImg8bit" / "val" / "munster" / "munster_000000_000019_leftImg8bit.png")
    _label(root / "cityscapes" / "gtFine" / "val" / "munster" / "munster_000000_000019_gtFine_labelTrainIds.png",
           (0, 18, 255))
    ade = root / "ade" / "ADEChallengeData2016"
    _image(ade / "images" / "validation" / "ADE_val_00000001.jpg")
    _label(ade / "annotations" / "validation" / "ADE_val_00000001.png", (0, 1, 150))


def test_the_eight_suite_builds_from_one_root_with_each_background_rule(tmp_path):
    _eight_tree(tmp_path / "data")
    specs = suite_specs("eight", tmp_path / "data")
    assert [s.split("=")[0] for s in specs] == list(SUITES["eight"]) == list(suite_names("eight"))
    assert specs[0] == f"voc={tmp_path / 'data' / 'VOCdevkit' / 'VOC2012'}"
    assert specs[-1] == f"ade20k={tmp_path / 'data' / 'ade' / 'ADEChallengeData2016'}"
    benches = parse_eval_sets(specs)  # eval.datasets filled from one root
    assert [b.name for b in benches] == ["voc", "context60", "coco_object", "voc20", "context59", "coco_stuff",
                                         "cityscapes", "ade20k"]
    assert [len(b.class_names) for b in benches] == [21, 60, 81, 20, 59, 171, 19, 150]
    # background is a class of VOC21, Context60 and COCO-Object only; the other five score without it
    assert [b.has_background for b in benches] == [True] * 3 + [False] * 5
    assert [b.bg_thresh for b in benches] == [0.95, 0.35, 0.9] + [None] * 5
    raw_to_label = {  # raw file value -> reader label, by each benchmark's rule (255 = ignore)
        "voc": {0: 0, 1: 1, 20: 20, 255: 255},                 # VOC21: palette index = class, 255 boundary
        "context60": {0: 0, 1: 1, 59: 59},
        "coco_object": {0: 0, 1: 1, 80: 80},                   # 0 = background (stuff + unlabelled)
        "voc20": {0: 255, 1: 0, 20: 19, 255: 255},             # background pixels ignored (reduce_zero_label)
        "context59": {0: 255, 1: 0, 59: 58},
        "coco_stuff": {0: 0, 170: 170, 255: 255},              # trainIds as stored, 255 unlabelled
        "cityscapes": {0: 0, 18: 18, 255: 255},                # trainIds as stored, 255 void
        "ade20k": {0: 255, 1: 0, 150: 149},                    # 0 "other" ignored (reduce_zero_label)
    }
    raws = {"voc": (0, 1, 20, 255), "voc20": (0, 1, 20, 255), "context60": (0, 1, 59), "context59": (0, 1, 59),
            "coco_object": (0, 1, 80), "coco_stuff": (0, 170, 255), "cityscapes": (0, 18, 255),
            "ade20k": (0, 1, 150)}
    for bench in benches:
        _, label, _ = bench[0]
        expected = np.vectorize(raw_to_label[bench.name].get)(_cycled(raws[bench.name]))
        np.testing.assert_array_equal(label, expected, err_msg=bench.name)
        assert bench.class_names == READER_CLASSES[bench.name]  # the protocol tables align with the readers
    with pytest.raises(ValueError, match="unknown benchmark suite 'nine'; choose one of eight"):
        suite_specs("nine", tmp_path)


def test_tcl_names_are_mmseg_classes_verbatim():
    tcl = {b: [n[0] for n in protocol_class_names("tcl", b)] for b in READER_CLASSES}
    # kakaobrain/tcl segmentation/datasets/pascal_voc.py, PascalVOCDataset20.CLASSES
    assert tcl["voc20"] == ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
                            "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
                            "train", "tvmonitor"]
    assert tcl["voc"] == ["background"] + tcl["voc20"]  # mmseg PascalVOCDataset
    # mmseg PascalContextDataset: 'background', 'aeroplane', 'bag', 'bed', ... 'pottedplant' 40, 'tvmonitor' 55
    assert tcl["context60"][:4] == ["background", "aeroplane", "bag", "bed"]
    assert (tcl["context60"][40], tcl["context60"][55], tcl["context60"][59]) == ("pottedplant", "tvmonitor", "wood")
    assert tcl["context59"] == tcl["context60"][1:]
    # TCL segmentation/datasets/coco_object.py COCOObjectDataset.CLASSES
    assert tcl["coco_object"][:3] == ["background", "person", "bicycle"] and tcl["coco_object"][80] == "toothbrush"
    assert tcl["coco_object"][61] == "dining table" and len(tcl["coco_object"]) == 81
    assert tcl["ade20k"][7] == "bed " and tcl["ade20k"][149] == "flag"  # mmseg ADE20KDataset, its trailing space
    assert tcl["cityscapes"] == READER_CLASSES["cityscapes"] and tcl["coco_stuff"] == READER_CLASSES["coco_stuff"]


def test_sclip_names_follow_its_cls_files():
    sclip = {b: protocol_class_names("sclip", b) for b in READER_CLASSES}
    # wangf3014/SCLIP configs/cls_<dataset>.txt: one line per class, line counts
    assert {b: len(v) for b, v in sclip.items()} == {"voc": 21, "voc20": 20, "context60": 60, "context59": 59,
                                                     "coco_object": 81, "coco_stuff": 171, "cityscapes": 19,
                                                     "ade20k": 150}
    assert sclip["voc"][0][:3] == ("sky", "wall", "tree") and len(sclip["voc"][0]) == 26  # cls_voc21.txt line 1
    assert sclip["voc"][4] == ("ship",) and sclip["voc20"][3] == ("ship",)
    assert sclip["voc20"][14][-1] == "person in jacket" and sclip["voc20"][19][0] == "television monitor"
    assert sclip["voc20"][10] == ("table",) and sclip["voc20"][15] == ("pottedplant",)
    assert sclip["context60"][0] == ("background",) and sclip["context60"][1] == ("aeroplane",)
    assert sclip["context59"][54] == ("tvmonitor",) and sclip["context59"][58] == ("wood",)
    assert sclip["coco_object"][0] == sclip["voc"][0] and sclip["coco_object"][1][-1] == "body"
    assert sclip["coco_object"][10] == ("traffic light",)                   # cls_coco_object.txt keeps spaces
    assert sclip["coco_stuff"][9] == ("trafficlight",) and sclip["coco_stuff"][84] == ("building-other",)
    assert sclip["cityscapes"][6] == ("trafficlight",) and sclip["cityscapes"][18] == ("bicycle",)
    assert sclip["ade20k"][7] == ("bed",) and sclip["ade20k"][44] == ("chestofdrawers",)
    assert protocol_class_names("groupvit", "voc")[11] == ("table",)  # the readers' own (GroupViT) names
    with pytest.raises(ValueError, match="unknown protocol 'maskclip'"):
        protocol_class_names("maskclip", "voc")
    with pytest.raises(ValueError, match="no tcl class names for benchmark 'synthetic'"):
        protocol_class_names("tcl", "synthetic")
