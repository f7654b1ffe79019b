"""The synthetic world: reproducible bytes, a VOC-readable val split, mask-free caption shards, honest captions."""

import importlib.util
import json
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from ovseg.data.benchmarks.registry import build_benchmark
from ovseg.data.segmentation.shards import iter_seg_shards
from ovseg.data.shardio import SkipCounter
from ovseg.data.synthetic.scene import DEFAULT_CLASSES, SyntheticConfig, render_scene
from ovseg.data.synthetic.shapes import CLASS_STYLES
from ovseg.data.synthetic.world import generate_world

# Reference lists written out from reference/ovsegmentor.md §5.1 (not imported from the code under test).
CANONICAL_73 = set("""people car bus truck motorcycle train bicycle boat aeroplane cup bottle bowl knife spoon glass fork
chair table bench clock laptop light vase plant remote microwave toaster oven mouse keyboard sofa monitor tv flower
refrigerator house bag umbrella book backpack phone shirt tie suitcase box sink bed toilet cat dog horse bird cow sheep
elephant bear zebra giraffe ball racket skateboard skis snowboard surfboard kite pizza cake apple banana sandwich orange
carrot donut""".split())
SURFACE_100 = set("""people man men woman women girl boy lady kid child children baby student bride groom couple prince
princess car bus truck motorcycle train bicycle boat aeroplane airplane motorbike bike cup bottle bowl knife spoon glass
fork chair table bench clock laptop light vase plant remote microwave toaster oven mouse keyboard sofa monitor desk tv TV
couch flower refrigerator house building hotel handbag umbrella book backpack phone shirt tie suitcase T-shirt bag box
sink bed toilet cat dog horse bird cow sheep elephant bear zebra giraffe ball racket skateboard skis snowboard surfboard
kite pizza cake apple banana sandwich orange carrot donut""".split())
SYNONYM_OF = {"bike": "bicycle", "couch": "sofa", "building": "house", "hotel": "house", "tv": "tv",
              "handbag": "bag", "airplane": "aeroplane"}
PLURALS = {"buses": "bus", "couches": "couch"}

CFG = SyntheticConfig()


def _word_class(token: str):
    """Canonical class a caption token names (singular or plural), or None."""
    word = PLURALS.get(token, token[:-1] if token.endswith("s") and token[:-1] in SURFACE_100 | {"tv"} else token)
    if word not in {w.lower() for w in SURFACE_100}:
        return None
    return SYNONYM_OF.get(word, word)


def _files(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("w") / "world"
    manifest = generate_world(root, seed=7, num_train=30, num_val=12, num_seg=6, shard_size=8)
    return root, manifest


def test_styles_are_distinct_and_classes_canonical():
    assert set(CLASS_STYLES) <= CANONICAL_73 and len(DEFAULT_CLASSES) >= 10
    shapes = [s for s, _ in CLASS_STYLES.values()]
    assert len(set(shapes)) == len(shapes)
    assert len({CLASS_STYLES[c][1] for c in DEFAULT_CLASSES}) == len(DEFAULT_CLASSES)
    with pytest.raises(ValueError, match="no drawing style"):
        SyntheticConfig(classes=("cat", "giraffe"))
    with pytest.raises(ValueError, match="min_objects"):
        SyntheticConfig(min_objects=3, max_objects=2)


def test_same_seed_same_bytes_other_seed_differs(world, tmp_path):
    root, _ = world
    again = tmp_path / "again"
    generate_world(again, seed=7, num_train=30, num_val=12, num_seg=6, shard_size=8, num_workers=2)
    first, second = _files(root), _files(again)
    assert first.keys() == second.keys() and first == second  # and independent of the worker count
    other = tmp_path / "other"
    generate_world(other, seed=8, num_train=30, num_val=12, num_seg=6, shard_size=8)
    assert _files(other)["train/shard-000000.tar"] != first["train/shard-000000.tar"]
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]


def test_layout_and_manifest(world):
    root, manifest = world
    assert sorted(p.name for p in (root / "train").iterdir()) == [f"shard-00000{i}.tar" for i in range(4)]
    assert json.loads((root / "manifest.json").read_text()) == manifest
    assert manifest["seed"] == 7 and manifest["classes"] == ["background", *DEFAULT_CLASSES]
    assert (root / "val" / "class_names.txt").read_text().split("\n")[:2] == ["background", "cat"]
    for split, n in (("train", 30), ("val", 12), ("seg", 6)):
        stats = manifest["splits"][split]
        assert stats["images"] == n
        assert abs(sum(stats["pixel_frequency"].values()) - 1) < 1e-4
        assert 0.08 < stats["foreground_fraction"] < 0.4
    with pytest.raises(FileExistsError, match="not empty"):
        generate_world(root, seed=1, num_train=1, num_val=0)


def test_caption_shards_hold_no_mask_or_object_info(world):
    root, _ = world
    for shard in (root / "train").iterdir():
        with tarfile.open(shard) as tar:
            exts = {m.name.split(".", 1)[1] for m in tar.getmembers()}
        assert exts == {"jpg", "txt", "json"}
    samples = list(wds.WebDataset(str(root / "train" / "shard-{000000..000003}.tar"), shardshuffle=False))
    assert len(samples) == 30
    for s in samples:
        meta = json.loads(s["json"])
        assert set(meta) == {"key", "caption", "status", "width", "height"}
        assert meta["key"] == s["__key__"] and meta["caption"] == s["txt"].decode() and meta["status"] == "success"


def test_val_split_loads_through_the_voc_reader(world):
    root, _ = world
    bench = build_benchmark("synthetic", root / "val")
    assert build_benchmark("synthetic", root).class_names == bench.class_names
    voc = build_benchmark("voc", root / "val")  # the very same files through the VOC reader
    assert len(bench) == len(voc) == 12 and bench.has_background and bench.bg_thresh == 0.95
    for i in range(len(bench)):
        image, label, sid = bench[i]
        scene = render_scene(CFG, 7, "val", i)
        np.testing.assert_array_equal(label, scene.label)  # masks are stored exactly
        np.testing.assert_array_equal(label, voc[i][1])
        assert np.abs(image.astype(int) - scene.image).mean() < 8  # only JPEG loss
        present = {int(v) for v in np.unique(label)} - {0}
        assert present == {c + 1 for c in scene.object_classes}


def test_seg_shards_are_valid(world):
    root, _ = world
    counter = SkipCounter()
    out = list(iter_seg_shards(str(root / "seg" / "shard-000000.tar"), counter))
    assert counter.total == 0 and len(out) == 6
    for i, (_, label, classes, _) in enumerate(out):
        assert classes == ["background", *DEFAULT_CLASSES]
        np.testing.assert_array_equal(label, render_scene(CFG, 7, "seg", i).label)


def test_scenes_every_class_visible_objects_not_tiny_colour_uninformative():
    seen, areas, colours = set(), [], {c: [] for c in range(len(DEFAULT_CLASSES))}
    for i in range(150):
        scene = render_scene(CFG, 3, "train", i)
        assert 1 <= len(scene.object_classes) <= 4
        for c in set(scene.object_classes):
            pix = scene.label == c + 1
            assert pix.any()  # every placed object keeps visible pixels
            areas.append(pix.sum() / scene.object_classes.count(c))
            colours[c].append(scene.image[pix].mean(0))
        seen |= set(scene.object_classes)
    assert seen == set(range(len(DEFAULT_CLASSES)))
    assert np.median(areas) >= 2 * 64  # usually at least two 8x8 patches
    means = np.array([np.mean(v, 0) for v in colours.values()])
    assert np.abs(means - means.mean(0)).max() < 40  # no class has its own colour


def test_captions_name_only_visible_classes():
    unmentioned = multi = synonyms = 0
    for i in range(300):
        scene = render_scene(CFG, 5, "train", i)
        tokens = re.findall(r"[a-z]+", scene.caption.lower())
        named = {_word_class(t) for t in tokens} - {None}
        present = {DEFAULT_CLASSES[c] for c in scene.object_classes}
        assert named == {DEFAULT_CLASSES[c] for c in scene.mentioned}, scene.caption
        assert named <= present, scene.caption
        if not scene.unmentioned:
            assert named == present, scene.caption
        multi += len(scene.object_classes) >= 2
        unmentioned += scene.unmentioned
        synonyms += any(t in {"bike", "bikes", "couch", "couches", "building", "buildings", "hotel", "hotels"}
                        for t in tokens)
    assert 0.05 < unmentioned / multi < 0.3 and synonyms > 10


def test_script_runs_and_reports_errors(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("make_synthetic", Path(__file__).parents[2] / "platform" / "make_synthetic.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--out", str(tmp_path / "w"), "--num-train", "3", "--num-val", "2", "--classes", "cat,dog,bus"]) == 0
    assert json.loads((tmp_path / "w" / "manifest.json").read_text())["classes"] == ["background", "cat", "dog", "bus"]
    assert script.main(["--out", str(tmp_path / "x"), "--classes", "cat,giraffe"]) == 2
    assert "giraffe" in capsys.readouterr().err


def test_project_entity_matcher_reads_the_mentioned_classes():
    entities = pytest.importorskip("ovseg.data.captions.entities")
    cfg = SyntheticConfig(classes=tuple(CLASS_STYLES))  # every drawable class, synonyms and plurals included
    matcher = entities.EntityMatcher()
    for i in range(200):
        scene = render_scene(cfg, 9, "train", i)
        assert set(matcher.entities(scene.caption)) == {cfg.classes[c] for c in scene.mentioned}, scene.caption


def test_smooth_background_has_no_noise_or_lines():
    from ovseg.data.synthetic.scene import SyntheticConfig
    smooth = SyntheticConfig(background="smooth")

    def roughness(scene):  # mean absolute difference of horizontally neighbouring background pixels
        bg = scene.label == 0
        return np.abs(np.diff(scene.image.astype(int), axis=1))[bg[:, 1:] & bg[:, :-1]].mean()

    rough = [roughness(render_scene(CFG, 5, "train", i)) for i in range(20)]
    calm = [roughness(render_scene(smooth, 5, "train", i)) for i in range(20)]
    assert np.mean(calm) < 0.5 * np.mean(rough)
    with pytest.raises(ValueError, match="background"):
        SyntheticConfig(background="plain")


def _small(root, **kw):
    args = {"seed": 1, "num_train": 3, "num_val": 2, "num_seg": 0, "shard_size": 2, **kw}
    return generate_world(root, config=SyntheticConfig(image_size=16, classes=("cat", "dog")), **args)


def test_overwrite_replaces_only_what_an_earlier_world_wrote(tmp_path):
    root = tmp_path / "w"
    _small(root)
    assert json.loads((root / "ovseg-world.json").read_text())["files"] == sorted(_files(root))  # itself too
    (root / "notes.txt").write_text("mine")
    (root / "text-cache").mkdir()
    (root / "text-cache" / "tower.pt").write_bytes(b"cache")
    _small(root, seed=2, num_train=1, num_val=1, overwrite=True)
    fresh = tmp_path / "fresh"
    _small(fresh, seed=2, num_train=1, num_val=1)
    got = _files(root)
    assert got.pop("notes.txt") == b"mine" and got.pop("text-cache/tower.pt") == b"cache"
    assert got == _files(fresh)  # the old world's files are gone (its second shard, its second val image)
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]
    _small(root, overwrite=True)  # back to the first world: its extra files return, the user's stay
    assert _files(root).keys() - _files(fresh).keys() == {"notes.txt", "text-cache/tower.pt",
                                                          "train/shard-000001.tar",
                                                          "val/VOCdevkit/VOC2012/JPEGImages/000001.jpg",
                                                          "val/VOCdevkit/VOC2012/SegmentationClass/000001.png"}


def _refused(root, match, **kw):
    before = _files(root)
    with pytest.raises(FileExistsError, match=match):
        _small(root, seed=5, overwrite=True, **kw)
    assert _files(root) == before  # nothing deleted, nothing added
    assert not [p for p in root.parent.iterdir() if "partial" in p.name]


def test_overwrite_refuses_a_folder_that_is_not_an_earlier_world(tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    (user / "thesis.tex").write_text("years of work")
    _refused(user, "holds no valid ovseg-world.json")
    (user / "ovseg-world.json").write_text("{not json")
    _refused(user, "holds no valid")
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    for files in (["../victim.txt", "ovseg-world.json"], [str(victim), "ovseg-world.json"], ["thesis.tex"]):
        (user / "ovseg-world.json").write_text(json.dumps({"format": "ovseg-world-files/1", "files": files}))
        _refused(user, "holds no valid")
    assert victim.read_text() == "keep"
    with pytest.raises(FileExistsError, match="not empty"):
        _small(user)  # without overwrite
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(FileExistsError, match="not a folder"):
        _small(tmp_path / "a-file", overwrite=True)

    world = tmp_path / "world"
    _small(world, num_val=0)
    (world / "val").mkdir()
    (world / "val" / "class_names.txt").write_text("the user's")  # where the new world would write
    _refused(world, "is in the way")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "shard-000000.tar").write_bytes(b"not ours")
    shutil.rmtree(world / "train")
    (world / "train").symlink_to(elsewhere)  # a listed file reached through a link out of the world
    _refused(world, "holds no valid")
    assert (elsewhere / "shard-000000.tar").read_bytes() == b"not ours"


def test_script_never_empties_the_working_folder(tmp_path, monkeypatch, capsys):
    script_path = Path(__file__).parents[2] / "platform" / "make_synthetic.py"
    spec = importlib.util.spec_from_file_location("make_synthetic", script_path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    args = ["--out", ".", "--num-train", "2", "--num-val", "1", "--image-size", "16", "--classes", "cat,dog"]
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    (cwd / "mine.txt").write_text("mine")
    assert script.main([*args, "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("make_synthetic: error: ") and err.count("\n") == 1 and "ovseg-world.json" in err
    assert sorted(p.name for p in cwd.iterdir()) == ["mine.txt"] and (cwd / "mine.txt").read_text() == "mine"
    (cwd / "mine.txt").unlink()
    assert script.main(args) == 0  # an empty working folder is fine, and is kept as it is
    (cwd / "mine.txt").write_text("mine")
    assert script.main([*args, "--seed", "3", "--overwrite"]) == 0 and Path.cwd() == cwd
    assert (cwd / "mine.txt").read_text() == "mine" and json.loads((cwd / "manifest.json").read_text())["seed"] == 3
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]


def _ensure_in_subprocess(out, barrier, results):
    from ovseg.config import load_config
    from ovseg.data.synthetic.world import ensure_synthetic_world

    cfg = load_config("debug", [f"data.synthetic_dir={out}", "data.synthetic_train=6", "data.synthetic_val=3",
                                "data.synthetic_seg=0"])
    barrier.wait()  # every process reaches the first use at the same moment
    try:
        results.put(str(ensure_synthetic_world(cfg)))
    except Exception as e:  # noqa: BLE001 - the test reports what went wrong in the child
        results.put(f"{type(e).__name__}: {e}")


def test_processes_starting_together_share_one_generated_world(tmp_path):
    """Parallel first uses (trials, local runs) must all get the world, generated once (before the lock, all but
    one failed with 'manifest.json is in the way')."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # not a Pool: its workers are daemons, and the generator forks its own
    barrier, results = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=_ensure_in_subprocess, args=(tmp_path / "w", barrier, results)) for _ in range(3)]
    for p in procs:
        p.start()
    roots = sorted(results.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert roots == [str(tmp_path / "w")] * 3
    written = json.loads((tmp_path / "w" / "ovseg-world.json").read_text())["files"]
    on_disk = sorted(p.relative_to(tmp_path / "w").as_posix() for p in (tmp_path / "w").rglob("*") if p.is_file())
    assert on_disk == sorted(written)  # one world's files, no second copy
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]  # no half-written world left behind
